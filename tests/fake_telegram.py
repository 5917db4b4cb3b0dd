"""A fake Telegram Bot API server for end-to-end tests of the bot.

Telegram's servers are unreachable from the test machines, and replacing python-telegram-bot's
request layer would skip the HTTP stack the bot really runs on. This module serves the subset of
the Bot API the bot uses over real HTTP on 127.0.0.1, from its own thread and event loop: a bot
that blocks its event loop then shows up as latency in the test instead of stalling the server too.

Usage::

    with FakeTelegram() as tg:                      # or the ``fake_telegram`` pytest fixture
        app = tg.application_builder().build()       # token + base_url + base_file_url set
        ...
        tg.send_user_message(42, text="/start")      # queues an Update for getUpdates
        call = await tg.wait_for("sendMessage", lambda c: c.chat_id == 42)

Replies are validated roughly the way Telegram does it (text length, HTML parse mode, reply
targets, file ids, chat existence), so a bot bug surfaces as the same ``BadRequest`` it would get
in production. Error texts marked "approximate" below are not verbatim Telegram texts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import html
import io
import itertools
import json
import math
import re
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import unquote

import pytest
from aiohttp import web

if TYPE_CHECKING:
    from telegram import Bot
    from telegram.ext import Application, ApplicationBuilder

TOKEN = "123456:TEST-token-abc"
BOT_ID = 123456
BOT_USERNAME = "kontrol_test_bot"

MAX_TEXT = 4096
MAX_CAPTION = 1024
MAX_DOWNLOAD = 20 * 1024 * 1024
MAX_PHOTO_UPLOAD = 10 * 1024 * 1024
MAX_UPLOAD = 50 * 1024 * 1024

# Form values PTB sends as plain strings; everything else it JSON-encodes (ints, dicts, lists).
_STRING_KEYS = frozenset(
    {
        "text",
        "caption",
        "parse_mode",
        "action",
        "file_id",
        "callback_query_id",
        "url",
        "description",
        "short_description",
        "name",
        "language_code",
        "inline_message_id",
        "emoji",
        "title",
        "photo",
        "document",
        "video",
        "animation",
        "audio",
        "voice",
        "sticker",
        "thumbnail",
        "secret_token",
        "business_connection_id",
    }
)
_CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
# Methods that post messages: they count against the (optional) flood limits.
_SEND_METHODS = frozenset(
    {"sendMessage", "sendPhoto", "sendDocument", "sendMediaGroup", "sendVideo", "sendAnimation"}
)
_COMMAND_RE = re.compile(r"(?<!\S)/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?")
_TAG_RE = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)((?:\s[^<>]*)?)>")
_HREF_RE = re.compile(r"""href\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""")
_HTML_ENTITY_TYPES = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "code": "code",
    "pre": "pre",
    "a": "text_link",
    "blockquote": "blockquote",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
    "tg-emoji": "custom_emoji",
}
_MDV2_NEVER_MARKUP = frozenset(".!#+-={}>")


class ApiError(Exception):
    """A Bot API error reply: raised by method handlers, turned into ``{"ok": false, ...}``."""

    def __init__(self, status: int, description: str, parameters: dict[str, Any] | None = None):
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters

    def body(self) -> dict[str, Any]:
        """The JSON body Telegram sends for this error."""
        out: dict[str, Any] = {
            "ok": False,
            "error_code": self.status,
            "description": self.description,
        }
        if self.parameters:
            out["parameters"] = self.parameters
        return out


class _Dropped(Exception):
    """An injected dropped connection: the server closes the socket without answering."""


#: ``Call.status`` of a request whose connection was dropped (no HTTP answer at all).
DROPPED = 0


def _bad(description: str) -> ApiError:
    return ApiError(400, f"Bad Request: {description}")


@dataclass(frozen=True)
class UploadedFile:
    """One multipart file part of a request."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class Call:
    """One recorded HTTP request to the fake server (Bot API method or file download).

    ``time``/``done_time`` are ``time.monotonic()`` at arrival/reply, comparable with
    ``asyncio`` loop time. ``uploads`` names the parameters/attach names whose bytes were uploaded
    in this request; ``reused_file_ids`` the existing file_ids sent instead of bytes.
    """

    method: str
    params: dict[str, Any]
    files: dict[str, UploadedFile]
    time: float
    done_time: float = 0.0
    status: int = 200
    result: Any = None
    error: dict[str, Any] | None = None
    uploads: list[str] = field(default_factory=list)
    reused_file_ids: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    consumed: bool = False

    @property
    def ok(self) -> bool:
        """Whether the server answered ``ok: true``."""
        return self.error is None

    @property
    def chat_id(self) -> int | str | None:
        """The ``chat_id`` parameter, if any."""
        return self.params.get("chat_id")

    @property
    def text(self) -> str | None:
        """The ``text`` (or ``caption``) parameter as sent, markup included."""
        return self.params.get("text", self.params.get("caption"))


@dataclass
class _StoredFile:
    file_id: str
    file_unique_id: str
    kind: str  # photo | document | video | animation | sticker
    data: bytes | None
    file_size: int
    file_path: str
    mime_type: str | None = None
    file_name: str | None = None
    photo_sizes: list[dict[str, Any]] | None = None  # the whole PhotoSize array this belongs to


@dataclass
class _InjectedError:
    status: int
    description: str
    parameters: dict[str, Any] | None
    times: int
    chat_id: int | str | None


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _command_entities(text: str | None) -> list[dict[str, Any]]:
    """bot_command entities the way Telegram marks them, offsets in UTF-16 code units."""
    if not text:
        return []
    return [
        {
            "type": "bot_command",
            "offset": _utf16_len(text[: m.start()]),
            "length": _utf16_len(m.group()),
        }
        for m in _COMMAND_RE.finditer(text)
    ]


def _parse_html(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Strip Telegram-HTML markup into plain text + entities; raise like Telegram on bad markup."""
    out: list[str] = []
    entities: list[dict[str, Any]] = []
    stack: list[tuple[str, int, str | None]] = []
    pos = 0
    length = 0

    def add_text(start: int, end: int) -> None:
        nonlocal length
        raw = text[start:end]
        bad = raw.find("<")  # a bare ">" is tolerated by Telegram, a bare "<" is not
        if bad >= 0:
            offset = len(text[: start + bad].encode())
            raise _bad(f"can't parse entities: Unsupported start tag at byte offset {offset}")
        plain = html.unescape(raw)
        out.append(plain)
        length += _utf16_len(plain)

    for m in _TAG_RE.finditer(text):
        add_text(pos, m.start())
        pos = m.end()
        closing, tag, attrs = m.group(1) == "/", m.group(2).lower(), m.group(3)
        offset = len(text[: m.start()].encode())
        if tag not in _HTML_ENTITY_TYPES:
            raise _bad(
                f'can\'t parse entities: Unsupported start tag "{tag}" at byte offset {offset}'
            )
        if not closing:
            url = None
            if tag == "a":
                href = _HREF_RE.search(attrs)
                url = next((g for g in href.groups() if g is not None), "") if href else ""
            if tag == "span" and "tg-spoiler" not in attrs:
                raise _bad(
                    'can\'t parse entities: Tag "span" must have class "tg-spoiler" '
                    f"at byte offset {offset}"
                )
            stack.append((tag, length, url))
            continue
        if not stack or stack[-1][0] != tag:
            expected = f'"</{stack[-1][0]}>"' if stack else "no end tag"
            raise _bad(
                f"can't parse entities: Unmatched end tag at byte offset {offset}, "
                f'expected {expected}, found "</{tag}>"'
            )
        start_tag, start, url = stack.pop()
        if length > start:
            entity: dict[str, Any] = {
                "type": _HTML_ENTITY_TYPES[start_tag],
                "offset": start,
                "length": length - start,
            }
            if url is not None:
                entity["url"] = url
            entities.append(entity)
    add_text(pos, len(text))
    if stack:
        raise _bad(
            "can't parse entities: Can't find end tag corresponding to start tag "
            f'"{stack[-1][0]}"'
        )
    entities.sort(key=lambda e: (e["offset"], -e["length"]))
    return "".join(out), entities


def _parse_markdown_v2(text: str) -> str:
    """Check MarkdownV2's must-escape rule and return the text with markup removed (approximate)."""
    out: list[str] = []
    escaped = False
    for i, ch in enumerate(text):
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in _MDV2_NEVER_MARKUP and not (ch == ">" and (i == 0 or text[i - 1] == "\n")):
            raise _bad(
                f"can't parse entities: Character '{ch}' is reserved and must be escaped "
                "with the preceding '\\'"
            )
        elif ch in "*_~`|[]()":
            continue
        else:
            out.append(ch)
    return "".join(out)


def _render_text(text: str, parse_mode: str | None) -> tuple[str, list[dict[str, Any]]]:
    """Text + entities as Telegram stores them after applying ``parse_mode``."""
    mode = (parse_mode or "").lower()
    if mode == "html":
        plain, entities = _parse_html(text)
    elif mode == "markdownv2":
        plain, entities = _parse_markdown_v2(text), []
    elif mode == "markdown":
        plain, entities = re.sub(r"[*_`\[\]]", "", text), []
    elif mode:
        raise _bad(f"unsupported parse_mode {parse_mode!r}")
    else:
        plain, entities = text, []
    return plain, entities + [
        e for e in _command_entities(plain) if not any(x["offset"] == e["offset"] for x in entities)
    ]


def _image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header, or None when the bytes are not an image."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:
        return None


def _decode_form_value(key: str, value: str) -> Any:
    if key in _STRING_KEYS or not value:
        return value
    if value[0] in "[{-0123456789tfn":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


class FakeTelegram:
    """Fake Bot API server on 127.0.0.1, running in its own thread and event loop.

    All public methods are thread-safe; the ``async`` ones must be awaited from the test's loop.
    """

    def __init__(
        self,
        token: str = TOKEN,
        *,
        bot_username: str = BOT_USERNAME,
        bot_first_name: str = "Kontrol Test Bot",
        latency: float | Mapping[str, float] = 0.0,
        chat_rate_limit: tuple[int, float] | None = None,
        global_rate_limit: tuple[int, float] | None = None,
        validate_images: bool = True,
        strict_chats: bool = True,
    ) -> None:
        """Configure the server; nothing listens until :meth:`start`.

        ``latency``: seconds added to every reply, or per method name (key ``None``/"*" = default,
        "download" = file downloads). ``chat_rate_limit``/``global_rate_limit``: ``(n, seconds)``
        sliding windows for messages sent (album items count each); exceeding one answers 429
        with ``retry_after`` as Telegram does. ``validate_images``: reject uploaded photos that
        are not decodable images (``IMAGE_PROCESS_FAILED``). ``strict_chats``: sending to a chat
        that never wrote to the bot (and wasn't added with :meth:`add_chat`) is "chat not found".
        """
        self.token = token
        self.bot_id = int(token.split(":", 1)[0])
        self.bot_user: dict[str, Any] = {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": bot_first_name,
            "username": bot_username,
        }
        self._me = {
            **self.bot_user,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }
        self.validate_images = validate_images
        self.strict_chats = strict_chats
        self._lock = threading.RLock()
        self._latency: dict[str | None, float] = {}
        if isinstance(latency, Mapping):
            for key, value in latency.items():
                self.set_latency(key, value)
        else:
            self.set_latency(None, latency)
        self._chat_limit = chat_rate_limit
        self._global_limit = global_rate_limit

        self._ids = itertools.count(1)
        self._next_update_id = 10_000
        self._updates: list[dict[str, Any]] = []
        self._messages: dict[tuple[int | str, int], dict[str, Any]] = {}
        self._next_message_id: dict[int | str, int] = {}
        self._chats: dict[int | str, dict[str, Any]] = {}
        self._blocked: set[int | str] = set()
        self._files: dict[str, _StoredFile] = {}
        self._files_by_path: dict[str, _StoredFile] = {}
        self._errors: dict[str, deque[_InjectedError]] = {}
        self._chat_sends: dict[int | str, deque[float]] = {}
        self._global_sends: deque[float] = deque()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self.requests: list[Call] = []
        self.unknown_methods: list[str] = []
        self.commands: list[dict[str, Any]] = []
        self.callback_answers: list[dict[str, Any]] = []

        self._handlers: dict[str, Callable[[Call], Any]] = {
            name[len("_m_") :].lower(): getattr(self, name)
            for name in dir(self)
            if name.startswith("_m_")
        }
        self._canonical = {
            name[len("_m_") :].lower(): name[len("_m_") :]
            for name in dir(self)
            if name.startswith("_m_")
        }

        self.port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._updates_event: asyncio.Event | None = None
        #: getUpdates calls parked waiting for an update (long polling) right now.
        self.parked_polls = 0
        self._closing = False
        self._poll_waiter: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        """Pass to ``ApplicationBuilder.base_url``."""
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        """Pass to ``ApplicationBuilder.base_file_url``."""
        return f"http://127.0.0.1:{self.port}/file/bot"

    def start(self) -> FakeTelegram:
        """Bind a free port and serve from a daemon thread; returns once it accepts connections."""
        if self._thread is not None:
            raise RuntimeError("FakeTelegram already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve(sock))
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-telegram", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise RuntimeError("FakeTelegram failed to start") from failure[0]
        return self

    async def _serve(self, sock: socket.socket) -> None:
        self._updates_event = asyncio.Event()
        app = web.Application(client_max_size=MAX_UPLOAD + 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await self._runner.setup()
        await web.SockSite(self._runner, sock, backlog=2048).start()

    def stop(self) -> None:
        """Stop serving: pending long polls return empty, the thread exits."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            self._closing = True
            if self._updates_event is not None:
                self._updates_event.set()
            if self._runner is not None:
                await self._runner.cleanup()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> FakeTelegram:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> FakeTelegram:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    # ------------------------------------------------------------------ PTB helpers

    def application_builder(self) -> ApplicationBuilder:
        """A PTB ``ApplicationBuilder`` with token, base_url and base_file_url set."""
        from telegram.ext import Application

        return (
            Application.builder()
            .token(self.token)
            .base_url(self.base_url)
            .base_file_url(self.base_file_url)
        )

    def bot(self, **kwargs: Any) -> Bot:
        """A PTB ``Bot`` pointed at this server (use as ``async with tg.bot() as bot``)."""
        from telegram import Bot

        return Bot(self.token, base_url=self.base_url, base_file_url=self.base_file_url, **kwargs)

    # ------------------------------------------------------------------ test-side API

    def set_latency(self, method: str | None, seconds: float) -> None:
        """Delay replies to ``method`` (``None``/"*" = every method without its own setting)."""
        key = None if method in (None, "*") else method.lower()
        with self._lock:
            self._latency[key] = float(seconds)

    def inject_error(
        self,
        method: str,
        *,
        status: int = 429,
        retry_after: int = 1,
        times: int = 1,
        description: str | None = None,
        chat_id: int | str | None = None,
    ) -> None:
        """Make the next ``times`` calls of ``method`` (optionally only for ``chat_id``) fail.

        429 carries ``parameters.retry_after`` (PTB raises ``RetryAfter``); 400 -> ``BadRequest``,
        403 -> ``Forbidden``, 5xx -> ``NetworkError``. ``method="download"`` fails file downloads.
        Several injections for one method queue up: ``times=2`` then another status fails three
        calls in that order. See :meth:`drop_connection` for connections closed without answer.
        """
        if description is None:
            description = {
                429: f"Too Many Requests: retry after {retry_after}",
                400: "Bad Request: injected error",
                403: "Forbidden: bot was blocked by the user",
                500: "Internal Server Error",
                502: "Bad Gateway",
            }.get(status, f"Error {status}")
        parameters = {"retry_after": retry_after} if status == 429 else None
        with self._lock:
            self._errors.setdefault(method.lower(), deque()).append(
                _InjectedError(status, description, parameters, times, chat_id)
            )

    def drop_connection(
        self, method: str, *, times: int = 1, chat_id: int | str | None = None
    ) -> None:
        """Make the next ``times`` calls of ``method`` lose their connection without any answer.

        The request is read (and recorded with ``status == DROPPED``), then the socket is closed:
        httpx raises ``RemoteProtocolError``, PTB a ``NetworkError``. ``method="download"`` drops
        file downloads.
        """
        with self._lock:
            self._errors.setdefault(method.lower(), deque()).append(
                _InjectedError(DROPPED, "connection dropped", None, times, chat_id)
            )

    def add_chat(
        self,
        chat_id: int,
        *,
        chat_type: str = "private",
        first_name: str = "Test",
        username: str | None = None,
        title: str | None = None,
    ) -> dict[str, Any]:
        """Make a chat known to the server (a user who wrote to the bot, or a group it is in)."""
        with self._lock:
            return self._ensure_chat(chat_id, chat_type, first_name, username, title)

    def block_chat(self, chat_id: int, blocked: bool = True) -> None:
        """Simulate the user blocking the bot: sends to the chat answer 403 Forbidden."""
        with self._lock:
            (self._blocked.add if blocked else self._blocked.discard)(chat_id)

    def add_file(
        self,
        data: bytes,
        *,
        file_size: int | None = None,
        kind: str = "document",
        mime_type: str | None = None,
        file_name: str | None = None,
    ) -> str:
        """Store bytes as if uploaded to Telegram; returns the new file_id.

        ``file_size`` overrides the size Telegram reports (e.g. claim 25 MB for a small blob);
        getFile then refuses files over 20 MB as Telegram does.
        """
        with self._lock:
            return self._store_file(data, kind, file_size, mime_type, file_name).file_id

    def file_bytes(self, file_id: str) -> bytes | None:
        """The bytes stored under ``file_id`` (uploaded by the bot or added by the test)."""
        with self._lock:
            stored = self._files.get(file_id)
            return None if stored is None else stored.data

    def send_user_message(
        self,
        chat_id: int,
        *,
        user_id: int | None = None,
        text: str | None = None,
        caption: str | None = None,
        photo: bytes | str | None = None,
        document: tuple[bytes, str, str] | str | None = None,
        video: bytes | None = None,
        animation: bytes | None = None,
        sticker: bytes | None = None,
        reply_to_message_id: int | None = None,
        media_group_id: str | None = None,
        language_code: str | None = "en",
        chat_type: str = "private",
        first_name: str = "Test",
        last_name: str | None = None,
        username: str | None = None,
        chat_title: str | None = None,
        entities: list[dict[str, Any]] | None = None,
        file_size: int | None = None,
    ) -> dict[str, Any]:
        """Queue an Update with a message from a user; returns the message dict.

        ``photo``: image bytes (stored, PhotoSize array of several sizes) or an existing photo
        file_id. ``document``: ``(bytes, filename, mime_type)`` or an existing file_id.
        ``file_size`` overrides the reported size of the attached file (e.g. 25 MB).
        ``entities`` defaults to bot_command entities for /commands in text or caption.
        ``user_id`` defaults to ``chat_id`` (a private chat's id is the user's id). Raises
        ``KeyError`` if ``reply_to_message_id`` names no stored message.
        """
        user_id = chat_id if user_id is None else user_id
        user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
        if last_name:
            user["last_name"] = last_name
        if username:
            user["username"] = username
        if language_code:
            user["language_code"] = language_code
        content: dict[str, Any] = {}
        with self._lock:
            chat = self._ensure_chat(
                chat_id, chat_type, first_name, username, chat_title, last_name
            )
            if text is not None:
                content["text"] = text
                ents = _command_entities(text) if entities is None else entities
                if ents:
                    content["entities"] = ents
            if caption is not None:
                content["caption"] = caption
                ents = _command_entities(caption) if entities is None else entities
                if ents:
                    content["caption_entities"] = ents
            if photo is not None:
                if isinstance(photo, str):
                    content["photo"] = self._existing(photo, "photo").photo_sizes
                else:
                    content["photo"] = self._store_photo(photo, file_size)
            if document is not None:
                if isinstance(document, str):
                    content["document"] = self._document_dict(self._existing(document, None))
                else:
                    data, name, mime = document
                    stored = self._store_file(data, "document", file_size, mime, name)
                    content["document"] = self._document_dict(stored)
            if video is not None:
                stored = self._store_file(video, "video", file_size, "video/mp4", "video.mp4")
                content["video"] = {
                    **self._file_ref(stored),
                    "width": 640,
                    "height": 360,
                    "duration": 3,
                    "mime_type": "video/mp4",
                }
            if animation is not None:
                stored = self._store_file(animation, "animation", file_size, "video/mp4", "a.mp4")
                content["animation"] = {
                    **self._file_ref(stored),
                    "width": 320,
                    "height": 240,
                    "duration": 2,
                    "file_name": "a.mp4",
                    "mime_type": "video/mp4",
                }
                content["document"] = self._document_dict(stored)
            if sticker is not None:
                stored = self._store_file(sticker, "sticker", file_size, "image/webp", None)
                content["sticker"] = {
                    **self._file_ref(stored),
                    "type": "regular",
                    "width": 512,
                    "height": 512,
                    "is_animated": False,
                    "is_video": False,
                    "emoji": "🐱",
                }
            if media_group_id is not None:
                content["media_group_id"] = media_group_id
            if reply_to_message_id is not None:
                original = self._messages.get((chat_id, reply_to_message_id))
                if original is None:
                    raise KeyError(f"no message {reply_to_message_id} in chat {chat_id}")
                content["reply_to_message"] = self._as_reply(original)
            message = self._store_message(chat, user, content)
            self._queue_update({"message": message})
        return message

    def send_callback_query(
        self,
        chat_id: int,
        message_id: int,
        data: str,
        *,
        user_id: int | None = None,
        first_name: str = "Test",
        language_code: str = "en",
    ) -> dict[str, Any]:
        """Queue an Update with a callback query (inline button press on ``message_id``)."""
        user_id = chat_id if user_id is None else user_id
        with self._lock:
            message = self._messages[(chat_id, message_id)]
            query = {
                "id": str(next(self._ids)),
                "from": {
                    "id": user_id,
                    "is_bot": False,
                    "first_name": first_name,
                    "language_code": language_code,
                },
                "message": message,
                "chat_instance": str(chat_id),
                "data": data,
            }
            self._queue_update({"callback_query": query})
        return query

    @property
    def pending_updates(self) -> int:
        """Updates queued and not yet confirmed by a getUpdates offset."""
        with self._lock:
            return len(self._updates)

    def message(self, chat_id: int, message_id: int) -> dict[str, Any] | None:
        """The current state of a message (edits applied), or None if unknown/deleted."""
        with self._lock:
            return self._messages.get((chat_id, message_id))

    def bot_messages(self, chat_id: int) -> list[dict[str, Any]]:
        """Messages the bot sent to ``chat_id``, oldest first, in their current (edited) state."""
        with self._lock:
            return [
                m
                for (cid, _), m in sorted(self._messages.items(), key=lambda kv: kv[0][1])
                if cid == chat_id and m["from"]["id"] == self.bot_id
            ]

    def calls(self, method: str | None = None, chat_id: int | str | None = None) -> list[Call]:
        """Recorded calls, optionally filtered by method (case-insensitive) and chat_id."""
        with self._lock:
            calls = list(self.requests)
        if method is not None:
            calls = [c for c in calls if c.method.lower() == method.lower()]
        if chat_id is not None:
            calls = [c for c in calls if c.chat_id == chat_id]
        return calls

    def mark(self) -> int:
        """Current length of :attr:`requests`; pass as ``since=`` to only look at later calls."""
        with self._lock:
            return len(self.requests)

    async def wait_for(
        self,
        method: str,
        predicate: Callable[[Call], bool] | None = None,
        *,
        timeout: float = 10.0,
        ok: bool | None = True,
        since: int = 0,
    ) -> Call:
        """Wait for the first matching call that no earlier ``wait_for`` returned, and return it.

        Each call is handed out once, so successive ``wait_for("sendMessage")`` return successive
        replies. ``ok=True`` (default) skips calls answered with an error; ``None`` takes both.
        Raises ``TimeoutError`` listing what was recorded instead.
        """
        found: list[Call] = []
        pos = since

        def check() -> bool:
            nonlocal pos
            for i in range(pos, len(self.requests)):
                call = self.requests[i]
                pos = i + 1
                if not call.consumed and self._matches(call, method, predicate, ok):
                    call.consumed = True
                    found.append(call)
                    return True
            return False

        await self._wait(check, timeout, f"{method} call")
        return found[0]

    async def wait_for_count(
        self,
        method: str,
        count: int,
        predicate: Callable[[Call], bool] | None = None,
        *,
        timeout: float = 10.0,
        ok: bool | None = True,
        since: int = 0,
    ) -> list[Call]:
        """Wait until ``count`` matching calls were recorded (consumed or not); return them."""
        found: list[Call] = []
        pos = since

        def check() -> bool:
            nonlocal pos
            end = len(self.requests)
            for i in range(pos, end):
                call = self.requests[i]
                if self._matches(call, method, predicate, ok):
                    found.append(call)
            pos = end
            return len(found) >= count

        await self._wait(check, timeout, f"{count} x {method} (got {{found}})", found)
        return found[:count]

    # ------------------------------------------------------------------ waiting internals

    @staticmethod
    def _matches(
        call: Call, method: str, predicate: Callable[[Call], bool] | None, ok: bool | None
    ) -> bool:
        if call.method.lower() != method.lower():
            return False
        if ok is not None and call.ok != ok:
            return False
        return predicate is None or bool(predicate(call))

    async def _wait(
        self, check: Callable[[], bool], timeout: float, what: str, found: list[Any] | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        entry = (loop, event)
        with self._lock:
            self._waiters.append(entry)
        try:
            deadline = loop.time() + timeout
            while True:
                event.clear()
                with self._lock:
                    if check():
                        return
                remaining = deadline - loop.time()
                if remaining <= 0:
                    with self._lock:
                        seen = [
                            f"{c.method}({c.chat_id}){'' if c.ok else '!'}"
                            for c in self.requests[-20:]
                        ]
                    what = what.replace("{found}", str(len(found or ())))
                    raise TimeoutError(
                        f"timed out after {timeout}s waiting for {what}; last requests: {seen}"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), remaining)
        finally:
            with self._lock:
                self._waiters.remove(entry)

    def _record(self, call: Call) -> None:
        with self._lock:
            self.requests.append(call)
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # the waiter's loop is closed
                loop.call_soon_threadsafe(event.set)

    # ------------------------------------------------------------------ state internals (locked)

    def _ensure_chat(
        self,
        chat_id: int | str,
        chat_type: str = "private",
        first_name: str = "Test",
        username: str | None = None,
        title: str | None = None,
        last_name: str | None = None,
    ) -> dict[str, Any]:
        chat = self._chats.get(chat_id)
        if chat is None:
            chat = {"id": chat_id, "type": chat_type}
            if chat_type == "private":
                chat["first_name"] = first_name
                if last_name:
                    chat["last_name"] = last_name
                if username:
                    chat["username"] = username
            else:
                chat["title"] = title or f"Test group {chat_id}"
            self._chats[chat_id] = chat
        return chat

    def _chat_for_send(self, chat_id: Any) -> dict[str, Any]:
        if chat_id is None or chat_id == "":
            raise _bad("chat_id is empty")
        if chat_id in self._blocked:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        chat = self._chats.get(chat_id)
        if chat is None:
            if self.strict_chats:
                raise _bad("chat not found")
            chat = self._ensure_chat(chat_id)
        return chat

    def _queue_update(self, payload: dict[str, Any]) -> None:
        self._next_update_id += 1
        self._updates.append({"update_id": self._next_update_id, **payload})
        loop, event = self._loop, self._updates_event
        if loop is not None and event is not None:
            if threading.current_thread() is self._thread:
                event.set()
            else:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(event.set)

    def _store_message(
        self, chat: dict[str, Any], sender: dict[str, Any], content: dict[str, Any]
    ) -> dict[str, Any]:
        chat_id = chat["id"]
        message_id = self._next_message_id.get(chat_id, 0) + 1
        self._next_message_id[chat_id] = message_id
        message = {
            "message_id": message_id,
            "from": sender,
            "date": int(time.time()),
            "chat": chat,
            **content,
        }
        self._messages[(chat_id, message_id)] = message
        return message

    @staticmethod
    def _as_reply(original: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in original.items() if k != "reply_to_message"}

    def _new_file_ids(self, kind: str) -> tuple[str, str]:
        n = next(self._ids)
        prefix = {"photo": "AgAC", "document": "BQAC", "video": "BAAC", "sticker": "CAAC"}
        return f"{prefix.get(kind, 'CgAC')}fake{n:08d}", f"AQAD{n:08d}"

    def _store_file(
        self,
        data: bytes | None,
        kind: str,
        file_size: int | None = None,
        mime_type: str | None = None,
        file_name: str | None = None,
    ) -> _StoredFile:
        file_id, unique_id = self._new_file_ids(kind)
        ext = {"photo": "jpg", "sticker": "webp", "video": "mp4", "animation": "mp4"}.get(kind)
        if ext is None and file_name and "." in file_name:
            ext = file_name.rsplit(".", 1)[1]
        folder = {"photo": "photos", "document": "documents"}.get(kind, kind + "s")
        path = f"{folder}/file_{unique_id[4:]}.{ext or 'bin'}"
        stored = _StoredFile(
            file_id=file_id,
            file_unique_id=unique_id,
            kind=kind,
            data=data,
            file_size=len(data or b"") if file_size is None else file_size,
            file_path=path,
            mime_type=mime_type,
            file_name=file_name,
        )
        self._files[file_id] = stored
        self._files_by_path[path] = stored
        return stored

    def _store_photo(self, data: bytes, file_size: int | None = None) -> list[dict[str, Any]]:
        """Store a photo as Telegram does: several PhotoSizes (here all backed by the same bytes)."""
        width, height = _image_size(data) or (1280, 960)
        dims: list[tuple[int, int]] = []
        for limit in (90, 320, 800, 1280):
            scale = min(1.0, limit / max(width, height, 1))
            dim = (max(1, round(width * scale)), max(1, round(height * scale)))
            if dim not in dims:
                dims.append(dim)
            if scale == 1.0:
                break
        full = len(data) if file_size is None else file_size
        sizes: list[dict[str, Any]] = []
        for w, h in dims:
            share = (w * h) / (dims[-1][0] * dims[-1][1])
            stored = self._store_file(data, "photo", max(1, math.ceil(full * share)), "image/jpeg")
            sizes.append({**self._file_ref(stored), "width": w, "height": h})
        for size in sizes:
            self._files[size["file_id"]].photo_sizes = sizes
        return sizes

    @staticmethod
    def _file_ref(stored: _StoredFile) -> dict[str, Any]:
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": stored.file_size,
        }

    def _document_dict(self, stored: _StoredFile) -> dict[str, Any]:
        out = self._file_ref(stored)
        if stored.file_name:
            out["file_name"] = stored.file_name
        if stored.mime_type:
            out["mime_type"] = stored.mime_type
        return out

    def _existing(self, file_id: str, kind: str | None) -> _StoredFile:
        stored = self._files.get(file_id)
        if stored is None:
            raise _bad("wrong file identifier/HTTP URL specified")
        if kind == "photo" and stored.kind != "photo":
            raise _bad(f"can't use file of type {stored.kind.capitalize()} as Photo")
        if kind not in (None, "photo") and stored.kind == "photo":
            raise _bad(f"can't use file of type Photo as {kind.capitalize()}")
        return stored

    # ------------------------------------------------------------------ HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arrival = time.monotonic()
        path = unquote(request.raw_path.split("?", 1)[0])
        if path.startswith("/file/bot"):
            return await self._download(request, path[len("/file/bot") :], arrival)
        if not path.startswith("/bot"):
            return web.Response(status=404, text="Not Found")
        token, _, method_raw = path[len("/bot") :].rpartition("/")
        if token != self.token:
            return self._json(401, ApiError(401, "Unauthorized").body())
        try:
            params, files = await self._read_params(request)
        except Exception as exc:
            return self._json(400, _bad(f"can't parse request: {exc}").body())
        key = method_raw.lower()
        call = Call(self._canonical.get(key, method_raw), params, files, arrival)
        await self._delay(key)
        try:
            if self._closing:
                raise ApiError(502, "Bad Gateway")
            self._raise_injected(key, params)
            handler = self._handlers.get(key)
            if handler is None:
                with self._lock:
                    self.unknown_methods.append(method_raw)
                raise ApiError(404, f"Not Found: method {method_raw} not found")
            result = handler(call)
            if asyncio.iscoroutine(result):
                result = await result
            call.result = result
            body: dict[str, Any] = {"ok": True, "result": result}
        except ApiError as err:
            call.status, call.error = err.status, err.body()
            body = call.error
        except _Dropped:
            self._drop(request, call)
        except Exception as exc:  # a bug in the fake: answer instead of hanging the client
            err = ApiError(500, f"Internal Server Error: fake server failed: {exc!r}")
            call.status, call.error = err.status, err.body()
            body = call.error
        text = json.dumps(body, ensure_ascii=False)
        call.done_time = time.monotonic()
        self._record(call)
        return web.Response(status=call.status, text=text, content_type="application/json")

    def _drop(self, request: web.Request, call: Call) -> NoReturn:
        """Record `call` as dropped and close its connection without writing a response."""
        call.status, call.error = DROPPED, {"ok": False, "description": "connection dropped"}
        call.done_time = time.monotonic()
        self._record(call)
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # what aiohttp does itself when a client goes away

    @staticmethod
    def _json(status: int, body: dict[str, Any]) -> web.Response:
        return web.Response(status=status, text=json.dumps(body), content_type="application/json")

    async def _delay(self, key: str) -> None:
        latency = self._latency.get(key, self._latency.get(None, 0.0))
        if latency > 0:
            await asyncio.sleep(latency)

    def _raise_injected(self, key: str, params: dict[str, Any]) -> None:
        with self._lock:
            queue = self._errors.get(key)
            if not queue:
                return
            for injected in queue:
                if injected.chat_id is None or injected.chat_id == params.get("chat_id"):
                    injected.times -= 1
                    if injected.times <= 0:
                        queue.remove(injected)
                    if injected.status == DROPPED:
                        raise _Dropped()
                    raise ApiError(injected.status, injected.description, injected.parameters)

    @staticmethod
    async def _read_params(
        request: web.Request,
    ) -> tuple[dict[str, Any], dict[str, UploadedFile]]:
        params: dict[str, Any] = {}
        files: dict[str, UploadedFile] = {}
        for k, v in request.query.items():
            params[k] = _decode_form_value(k, v)
        if not request.body_exists:
            return params, files
        ctype = request.content_type
        if ctype == "application/json":
            params.update(await request.json())
        elif ctype == "multipart/form-data":
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                name = part.name or ""
                if part.filename is not None:
                    data = await part.read(decode=False)
                    files[name] = UploadedFile(
                        name, part.filename, part.headers.get("Content-Type"), bytes(data)
                    )
                else:
                    params[name] = _decode_form_value(name, await part.text())
        else:
            form = await request.post()
            for k, v in form.items():
                if isinstance(v, str):
                    params[k] = _decode_form_value(k, v)
        return params, files

    async def _download(self, request: web.Request, rest: str, arrival: float) -> web.Response:
        token, _, file_path = rest.partition("/")
        call = Call("download", {"file_path": file_path}, {}, arrival)
        await self._delay("download")
        status, body = 200, b""
        try:
            self._raise_injected("download", {})
            with self._lock:
                stored = self._files_by_path.get(file_path)
            if token != self.token or stored is None or stored.data is None:
                raise ApiError(404, "Not Found")
            body = stored.data
            call.result = {"file_id": stored.file_id, "size": len(body)}
        except ApiError as err:
            status, call.status, call.error = err.status, err.status, err.body()
            body = json.dumps(err.body()).encode()
        except _Dropped:
            self._drop(request, call)
        call.done_time = time.monotonic()
        self._record(call)
        return web.Response(status=status, body=body)

    # ------------------------------------------------------------------ flood control

    def _check_flood(self, chat_id: Any, n: int) -> None:
        now = time.monotonic()
        with self._lock:
            checks: list[tuple[deque[float], tuple[int, float]]] = []
            if self._chat_limit:
                checks.append((self._chat_sends.setdefault(chat_id, deque()), self._chat_limit))
            if self._global_limit:
                checks.append((self._global_sends, self._global_limit))
            for sends, (limit, window) in checks:
                while sends and sends[0] <= now - window:
                    sends.popleft()
                if len(sends) + n > limit:
                    wait = window - (now - sends[0]) if sends else window
                    retry = max(1, math.ceil(wait))
                    raise ApiError(
                        429, f"Too Many Requests: retry after {retry}", {"retry_after": retry}
                    )
            for sends, _ in checks:
                sends.extend([now] * n)

    # ------------------------------------------------------------------ Bot API methods

    def _m_getMe(self, call: Call) -> dict[str, Any]:
        return self._me

    def _m_logOut(self, call: Call) -> bool:
        return True

    def _m_close(self, call: Call) -> bool:
        return True

    def _m_deleteWebhook(self, call: Call) -> bool:
        if call.params.get("drop_pending_updates"):
            with self._lock:
                self._updates.clear()
        return True

    def _m_setWebhook(self, call: Call) -> bool:
        return True

    def _m_getWebhookInfo(self, call: Call) -> dict[str, Any]:
        return {"url": "", "has_custom_certificate": False, "pending_update_count": 0}

    async def _m_getUpdates(self, call: Call) -> list[dict[str, Any]]:
        params = call.params
        offset = int(params.get("offset") or 0)
        limit = max(1, min(100, int(params.get("limit") or 100)))
        timeout = float(params.get("timeout") or 0)
        allowed = params.get("allowed_updates") or None
        assert self._updates_event is not None
        loop = asyncio.get_running_loop()
        # A newer getUpdates terminates a pending one, as on Telegram (two pollers = a bug).
        if self._poll_waiter is not None and not self._poll_waiter.done():
            self._poll_waiter.set_result(None)
        waiter: asyncio.Future[None] = loop.create_future()
        self._poll_waiter = waiter
        deadline = loop.time() + timeout
        while True:
            self._updates_event.clear()
            with self._lock:
                if offset > 0:
                    self._updates = [u for u in self._updates if u["update_id"] >= offset]
                elif offset < 0:
                    self._updates = self._updates[offset:]
                ready = [
                    u for u in self._updates if allowed is None or any(k in u for k in allowed)
                ][:limit]
            remaining = deadline - loop.time()
            if ready or remaining <= 0 or self._closing:
                return ready
            if waiter.done():
                raise ApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; make sure that only "
                    "one bot instance is running",
                )
            event_task = asyncio.ensure_future(self._updates_event.wait())
            self.parked_polls += 1  # a test can wait for this instead of sleeping
            try:
                await asyncio.wait(
                    (event_task, waiter), timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                self.parked_polls -= 1
                event_task.cancel()

    def _m_setMyCommands(self, call: Call) -> bool:
        with self._lock:
            self.commands = list(call.params.get("commands") or [])
        return True

    def _m_getMyCommands(self, call: Call) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.commands)

    def _m_deleteMyCommands(self, call: Call) -> bool:
        with self._lock:
            self.commands = []
        return True

    def _m_setMyDescription(self, call: Call) -> bool:
        return True

    def _m_setMyShortDescription(self, call: Call) -> bool:
        return True

    def _m_setChatMenuButton(self, call: Call) -> bool:
        return True

    def _m_sendChatAction(self, call: Call) -> bool:
        action = call.params.get("action")
        if action not in _CHAT_ACTIONS:
            raise _bad("wrong parameter action in request")
        with self._lock:
            self._chat_for_send(call.chat_id)
        return True

    def _m_answerCallbackQuery(self, call: Call) -> bool:
        if not call.params.get("callback_query_id"):
            raise _bad("query is too old and response timeout expired or query ID is invalid")
        with self._lock:
            self.callback_answers.append(call.params)
        return True

    def _m_getFile(self, call: Call) -> dict[str, Any]:
        file_id = call.params.get("file_id")
        with self._lock:
            stored = self._files.get(str(file_id))
        if stored is None:
            raise _bad("wrong file identifier/HTTP URL specified")
        if stored.file_size > MAX_DOWNLOAD:
            raise _bad("file is too big")
        return {**self._file_ref(stored), "file_path": stored.file_path}

    # --- sending

    def _reply_content(self, params: dict[str, Any], chat_id: Any) -> dict[str, Any]:
        reply = params.get("reply_parameters")
        if isinstance(reply, str):
            reply = json.loads(reply)
        if reply is None and params.get("reply_to_message_id") is not None:
            reply = {
                "message_id": params["reply_to_message_id"],
                "allow_sending_without_reply": params.get("allow_sending_without_reply", False),
            }
        if not reply:
            return {}
        original = self._messages.get((reply.get("chat_id", chat_id), reply.get("message_id")))
        if original is None:
            if reply.get("allow_sending_without_reply"):
                return {}
            raise _bad("message to be replied not found")
        return {"reply_to_message": self._as_reply(original)}

    @staticmethod
    def _markup(params: dict[str, Any]) -> dict[str, Any]:
        markup = params.get("reply_markup")
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            for row in markup["inline_keyboard"]:
                for button in row:
                    data = button.get("callback_data")
                    if data is not None and not 1 <= len(str(data).encode()) <= 64:
                        raise _bad("BUTTON_DATA_INVALID")
                    if not str(button.get("text", "")).strip():
                        raise _bad("text buttons are unallowed in the inline keyboard")
            return {"reply_markup": markup}
        return {}

    @staticmethod
    def _caption(params: dict[str, Any], key: str = "caption") -> dict[str, Any]:
        caption = params.get(key)
        if caption in (None, ""):
            return {}
        plain, entities = _render_text(str(caption), params.get("parse_mode"))
        if _utf16_len(plain) > MAX_CAPTION:
            raise _bad("message caption is too long")
        out: dict[str, Any] = {"caption": plain}
        if params.get("caption_entities"):
            entities = params["caption_entities"]
        if entities:
            out["caption_entities"] = entities
        return out

    def _send(self, call: Call, content: dict[str, Any], n: int = 1) -> dict[str, Any]:
        with self._lock:
            chat = self._chat_for_send(call.chat_id)
            content = {**self._reply_content(call.params, chat["id"]), **content}
            content.update(self._markup(call.params))
            self._check_flood(chat["id"], n)
            return self._store_message(chat, self.bot_user, content)

    def _m_sendMessage(self, call: Call) -> dict[str, Any]:
        text = call.params.get("text")
        if text is None or str(text) == "":
            raise _bad("message text is empty")
        plain, entities = _render_text(str(text), call.params.get("parse_mode"))
        if not plain.strip():
            raise _bad("message text is empty")
        if _utf16_len(plain) > MAX_TEXT:
            raise _bad("message is too long")
        if call.params.get("entities"):
            entities = call.params["entities"]
        content: dict[str, Any] = {"text": plain}
        if entities:
            content["entities"] = entities
        if call.params.get("link_preview_options"):
            content["link_preview_options"] = call.params["link_preview_options"]
        return self._send(call, content)

    def _input_media(
        self, call: Call, value: Any, field_name: str, kind: str
    ) -> _StoredFile | list[dict[str, Any]]:
        """Resolve a media parameter (upload, attach://, file_id or URL) to stored file(s)."""
        upload: UploadedFile | None = None
        if value is None and field_name in call.files:
            upload = call.files[field_name]
            call.uploads.append(field_name)
        elif isinstance(value, str) and value.startswith("attach://"):
            name = value[len("attach://") :]
            upload = call.files.get(name)
            if upload is None:
                raise _bad(f"file for attach://{name} not found in the request")  # approximate
            call.uploads.append(name)
        elif isinstance(value, str) and value.startswith(("http://", "https://")):
            call.urls.append(value)
            with self._lock:
                if kind == "photo":
                    return self._store_photo(b"", None)
                return self._store_file(b"", kind, None, None, value.rsplit("/", 1)[-1])
        elif isinstance(value, str) and value:
            call.reused_file_ids.append(value)
            with self._lock:
                stored = self._existing(value, kind)
                return stored.photo_sizes if kind == "photo" and stored.photo_sizes else stored
        else:
            raise _bad(f"there is no {kind} in the request")
        data = upload.data
        if kind == "photo":
            if not data:
                raise _bad("file must be non-empty")
            if len(data) > MAX_PHOTO_UPLOAD:
                raise _bad("PHOTO_SAVE_FILE_INVALID")  # approximate: Telegram's photo limit
            if self.validate_images:
                size = _image_size(data)
                if size is None:
                    raise _bad("IMAGE_PROCESS_FAILED")
                if size[0] + size[1] > 10000 or max(size) > 20 * max(1, min(size)):
                    raise _bad("PHOTO_INVALID_DIMENSIONS")
            with self._lock:
                return self._store_photo(data)
        with self._lock:
            return self._store_file(data, kind, None, upload.content_type, upload.filename)

    def _m_sendPhoto(self, call: Call) -> dict[str, Any]:
        caption = self._caption(call.params)
        sizes = self._input_media(call, call.params.get("photo"), "photo", "photo")
        return self._send(call, {"photo": sizes, **caption})

    def _m_sendDocument(self, call: Call) -> dict[str, Any]:
        caption = self._caption(call.params)
        stored = self._input_media(call, call.params.get("document"), "document", "document")
        assert isinstance(stored, _StoredFile)
        return self._send(call, {"document": self._document_dict(stored), **caption})

    def _m_sendMediaGroup(self, call: Call) -> list[dict[str, Any]]:
        media = call.params.get("media")
        if isinstance(media, str):
            media = json.loads(media)
        if not isinstance(media, list) or not 2 <= len(media) <= 10:
            raise _bad("wrong number of media in the album: must be 2-10")  # approximate
        kinds = {item.get("type") for item in media}
        if "document" in kinds and len(kinds) > 1:
            raise _bad("documents can't be mixed with other media types in an album")
        contents: list[dict[str, Any]] = []
        for item in media:
            kind = item.get("type")
            if kind not in ("photo", "document", "video", "audio"):
                raise _bad(f"unsupported media type {kind!r} in album")
            caption = self._caption(item)
            resolved = self._input_media(call, item.get("media"), "", kind)
            if kind == "photo":
                contents.append({"photo": resolved, **caption})
            else:
                assert isinstance(resolved, _StoredFile)
                contents.append({kind: self._document_dict(resolved), **caption})
        with self._lock:
            chat = self._chat_for_send(call.chat_id)
            reply = self._reply_content(call.params, chat["id"])
            self._check_flood(chat["id"], len(contents))
            group_id = str(next(self._ids) + 10**12)
            return [
                self._store_message(
                    chat, self.bot_user, {**reply, "media_group_id": group_id, **content}
                )
                for content in contents
            ]

    # --- editing

    def _editable(self, call: Call) -> dict[str, Any]:
        if call.params.get("inline_message_id"):
            raise _bad("inline messages are not supported by the fake server")
        key = (call.chat_id, call.params.get("message_id"))
        message = self._messages.get(key)  # type: ignore[arg-type]
        if message is None:
            raise _bad("message to edit not found")
        if message["from"]["id"] != self.bot_id:
            raise _bad("message can't be edited")
        return message

    def _replace(self, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        if new == old:
            raise _bad(
                "message is not modified: specified new message content and reply markup are "
                "exactly the same as a current content and reply markup of the message"
            )
        new["edit_date"] = int(time.time())
        self._messages[(old["chat"]["id"], old["message_id"])] = new
        return new

    def _m_editMessageText(self, call: Call) -> dict[str, Any]:
        text = call.params.get("text")
        if not text:
            raise _bad("message text is empty")
        plain, entities = _render_text(str(text), call.params.get("parse_mode"))
        if _utf16_len(plain) > MAX_TEXT:
            raise _bad("MESSAGE_TOO_LONG")
        with self._lock:
            old = self._editable(call)
            if "text" not in old:
                raise _bad("there is no text in the message to edit")
            new = {
                k: v
                for k, v in old.items()
                if k not in ("text", "entities", "reply_markup", "edit_date")
            }
            new["text"] = plain
            if entities:
                new["entities"] = entities
            new.update(self._markup(call.params))
            return self._replace({k: v for k, v in old.items() if k != "edit_date"}, new)

    def _m_editMessageCaption(self, call: Call) -> dict[str, Any]:
        caption = self._caption(call.params)
        with self._lock:
            old = self._editable(call)
            if not any(k in old for k in ("photo", "document", "video", "animation")):
                raise _bad("there is no caption in the message to edit")
            new = {
                k: v
                for k, v in old.items()
                if k not in ("caption", "caption_entities", "reply_markup", "edit_date")
            }
            new.update(caption)
            new.update(self._markup(call.params))
            return self._replace({k: v for k, v in old.items() if k != "edit_date"}, new)

    def _m_editMessageReplyMarkup(self, call: Call) -> dict[str, Any]:
        with self._lock:
            old = self._editable(call)
            new = {k: v for k, v in old.items() if k not in ("reply_markup", "edit_date")}
            new.update(self._markup(call.params))
            return self._replace({k: v for k, v in old.items() if k != "edit_date"}, new)

    def _m_deleteMessage(self, call: Call) -> bool:
        with self._lock:
            key = (call.chat_id, call.params.get("message_id"))
            if self._messages.pop(key, None) is None:  # type: ignore[arg-type]
                raise _bad("message to delete not found")
        return True


@contextlib.asynccontextmanager
async def polling(app: Application, *, timeout: float = 10.0) -> AsyncIterator[Application]:
    """Run ``app`` like ``run_polling`` does (same hook order), but inside the test's loop.

    initialize -> post_init -> start_polling -> start ... updater.stop -> stop -> post_stop ->
    shutdown -> post_shutdown. Stopping cancels the pending long poll, so ``timeout`` costs
    nothing at teardown.
    """
    assert app.updater is not None, "build the Application with an Updater to poll"
    await app.initialize()
    try:
        if app.post_init:
            await app.post_init(app)
        await app.updater.start_polling(poll_interval=0, timeout=dtm.timedelta(seconds=timeout))
        await app.start()
        try:
            yield app
        finally:
            if app.updater.running:
                await app.updater.stop()
            if app.running:
                await app.stop()
            if app.post_stop:
                await app.post_stop(app)
    finally:
        await app.shutdown()
        if app.post_shutdown:
            await app.post_shutdown(app)


@pytest.fixture
def fake_telegram_factory() -> Iterator[Callable[..., FakeTelegram]]:
    """Start servers with custom options (latency, rate limits...); all stopped after the test."""
    servers: list[FakeTelegram] = []

    def make(**kwargs: Any) -> FakeTelegram:
        server = FakeTelegram(**kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def fake_telegram() -> Iterator[FakeTelegram]:
    """A started :class:`FakeTelegram`, stopped after the test (works in sync and async tests)."""
    with FakeTelegram() as server:
        yield server
