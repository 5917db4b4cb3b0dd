"""Rewrite one marked block of a report (BENCHMARKS.md), keeping every other section as it is.

A script that measures owns the text between its two markers; rerunning it replaces that block
only, so figures written by other scripts never get lost.
"""

from __future__ import annotations

import re
from pathlib import Path


def replace_block(path: Path, start: str, end: str, text: str, *, after: str | None = None) -> None:
    """Put `text` between the `start` and `end` markers of `path`: in place of the old block,
    else right after the line `after` (when given and present), else at the end."""
    block = f"{start}\n{text.strip()}\n{end}"
    doc = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    pattern = re.escape(start) + r".*?" + re.escape(end)
    if re.search(pattern, doc, flags=re.S):
        doc = re.sub(pattern, lambda _: block, doc, count=1, flags=re.S)
    elif after is not None and after in doc:
        doc = doc.replace(after, f"{after}\n\n{block}", 1)
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(doc, encoding="utf-8")
