"""Telegram `file_id`s of collection photos the bot has already uploaded.

Sending a known `file_id` uploads nothing, so each collection photo crosses the network once per
bot, even across restarts: the map is persisted as JSON in the bot state directory, replaced
atomically, so a crash mid-write never loses or corrupts what was already known.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path

from bot.thumbs import PhotoKey

log = logging.getLogger(__name__)


class FileIdStore:
    """Thread-safe `PhotoKey -> file_id` map backed by `<state_dir>/file_ids.json`."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "file_ids.json"
        self._lock = threading.Lock()
        self._ids: dict[str, str] = self._read()

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("Ignoring unreadable file_id cache %s: %s", self.path, exc)
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): str(v) for k, v in data.items() if isinstance(v, str)}

    def get(self, key: PhotoKey) -> str | None:
        with self._lock:
            return self._ids.get(str(key))

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)

    def update(self, learned: dict[PhotoKey, str]) -> None:
        """Remember new ids and persist them (blocking: call via `asyncio.to_thread`)."""
        if not learned:
            return
        with self._lock:
            self._ids.update({str(k): v for k, v in learned.items()})
            self._save_locked()

    def forget(self, keys: list[PhotoKey]) -> None:
        """Drop ids Telegram no longer accepts, so the next album uploads those photos again."""
        with self._lock:
            removed = [self._ids.pop(str(k), None) for k in keys]
            if any(removed):
                self._save_locked()

    def _save_locked(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".file_ids-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self._ids, handle, ensure_ascii=False, indent=0, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
