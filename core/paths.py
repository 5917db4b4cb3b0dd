"""Joining a stored relative path to its root without letting it point outside the root.

Result paths come from index metadata (a file on disk, or a vector store's payload), and a bot
sends the file they name to a user, so a damaged or hostile entry such as `../../etc/passwd` or
`/root/.env` must be refused, not joined.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from core.errors import KontrolError


class UnsafePathError(KontrolError):
    """A relative path is absolute or climbs out of its root."""


def safe_join(root: Path | str, rel: str | os.PathLike[str]) -> Path:
    """`root / rel`, with `..` resolved, refusing any `rel` that could leave `root`.

    The check is on the text, not the file system: links inside the collection stay usable (the
    scan follows them), while an absolute path, a drive or UNC prefix, a NUL byte, or `..` that
    climbs above the root raise `UnsafePathError`. The result need not exist.
    """
    text = os.fspath(rel)
    if not isinstance(text, str):
        raise UnsafePathError("The stored path is not text.")
    if not text or text in (".", "./"):
        raise UnsafePathError("The stored path is empty.")
    if "\0" in text:
        raise UnsafePathError("The stored path contains a NUL byte.")
    windows = PureWindowsPath(text)
    if PurePosixPath(text).is_absolute() or windows.drive or windows.root:
        raise UnsafePathError(f"The stored path '{text}' is absolute; it must be relative.")
    # Backslashes count as separators for the check only (a Windows-made `..\\` climbs too).
    climbed = os.path.normpath(text.replace("\\", "/"))
    if climbed == ".." or climbed.startswith("../") or climbed == ".":
        raise UnsafePathError(f"The stored path '{text}' points outside its folder.")
    return Path(root) / os.path.normpath(text)
