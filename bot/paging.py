"""Cutting long Telegram-HTML texts into messages Telegram accepts.

Telegram refuses a message over 4096 characters (a caption over 1024), counted in UTF-16 code
units of the text *after* entity parsing, and refuses HTML with unbalanced tags. Cutting the raw
markup at a fixed length does both wrong. `split_html` cuts on line boundaries (inside a line only
when one line alone is too long, then preferably at a space), closes the tags still open at the end
of a page and opens them again at the start of the next, so every page is well-formed on its own.
"""

from __future__ import annotations

import html
import re

TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024

_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)[^<>]*>")
#: A tag, a character reference, or one character: the pieces a page may be cut between.
_TOKEN = re.compile(r"<[^<>]*>|&(?:#\d+|#[xX][0-9A-Fa-f]+|\w+);|.", re.DOTALL)


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def plain_length(text: str) -> int:
    """Length Telegram counts for `text` in HTML parse mode: markup removed, UTF-16 units."""
    return _utf16_len(html.unescape(_TAG.sub("", text)))


def _update_open_tags(stack: list[tuple[str, str]], text: str) -> None:
    """Track the tags left open after `text` as (name, opening tag as written)."""
    for match in _TAG.finditer(text):
        name = match.group(2).lower()
        if not match.group(1):
            stack.append((name, match.group(0)))
            continue
        for i in range(len(stack) - 1, -1, -1):
            if stack[i][0] == name:
                del stack[i:]
                break


def _split_line(line: str, limit: int) -> list[str]:
    """A single line too long for one page, cut between tokens (preferably after a space)."""
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    last_space = -1  # index in `current` just after the last space
    for token in _TOKEN.findall(line):
        n = 0 if token.startswith("<") else _utf16_len(html.unescape(token))
        if current and size + n > limit:
            cut = last_space if last_space > 0 else len(current)
            pieces.append("".join(current[:cut]))
            current = current[cut:]
            size = plain_length("".join(current))
            last_space = -1
        current.append(token)
        size += n
        if token == " ":
            last_space = len(current)
    if current:
        pieces.append("".join(current))
    return pieces


def split_html(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    """`text` as one or more well-formed HTML pages of at most `limit` plain characters each.

    Blank pages are dropped (Telegram refuses empty messages); a text that fits is returned as is.
    """
    if plain_length(text) <= limit:
        return [text]
    lines: list[str] = []
    for line in text.split("\n"):
        lines.extend(_split_line(line, limit) if plain_length(line) > limit else [line])
    pages: list[str] = []
    stack: list[tuple[str, str]] = []
    reopen = ""  # tags open where the current page starts
    current: list[str] = []
    size = 0

    def flush() -> None:
        body = reopen + "\n".join(current) + "".join(f"</{name}>" for name, _ in reversed(stack))
        if html.unescape(_TAG.sub("", body)).strip():
            pages.append(body)

    for line in lines:
        n = plain_length(line)
        joined = n + (1 if current else 0)
        if current and size + joined > limit:
            flush()
            reopen = "".join(tag for _, tag in stack)
            current, size, joined = [], 0, n
        current.append(line)
        size += joined
        _update_open_tags(stack, line)
    if current:
        flush()
    return pages


def fit_html(text: str, limit: int = TEXT_LIMIT) -> str:
    """The first page of `text`, marked with '…' when the rest had to be left out."""
    if plain_length(text) <= limit:
        return text
    return split_html(text, limit - 1)[0] + "…"
