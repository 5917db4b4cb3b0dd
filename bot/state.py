"""The bot's own durable state, in one SQLite file in the bot state directory.

Everything an inline button or a later command needs is here, so no answer depends on memory of
the running process: a button pressed after a restart still works, and its callback data stays a
short id (Telegram allows 64 bytes).

- `album`: which collection photo (uuid) each album message shows, so /remove can be a reply;
- `audit`: every admin change (add, remove, undo), what /undo reverts and /stats summarises;
- `pending`: a question waiting for an admin's button (e.g. "add as a new species?");
- `answers`: each species answer with buttons: the user's photo (file_id), the prediction, the
  user's verdict and correction (the review queue), and how far "more" has paged.

Every "do this once" step is a conditional UPDATE (a claim): a button pressed twice does the work
once and the second press is told so.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_FILE = "curation.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS album (
    chat_id INTEGER NOT NULL, message_id INTEGER NOT NULL, uuid TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (chat_id, message_id)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, user_id INTEGER, username TEXT,
    chat_id INTEGER, action TEXT NOT NULL, uuid TEXT, species TEXT, path TEXT, trash_path TEXT,
    detail TEXT, undone INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS audit_user ON audit(user_id, at);
CREATE TABLE IF NOT EXISTS pending (
    token TEXT PRIMARY KEY, kind TEXT NOT NULL, data TEXT NOT NULL, at REAL NOT NULL,
    done INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, chat_id INTEGER NOT NULL,
    message_id INTEGER, user_id INTEGER, username TEXT, file_id TEXT NOT NULL, predicted TEXT,
    candidates TEXT NOT NULL, verdict TEXT, correction TEXT, status TEXT, shown INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS answers_message ON answers(chat_id, message_id);
CREATE INDEX IF NOT EXISTS answers_status ON answers(status);
"""


@dataclass(frozen=True)
class Answer:
    id: int
    chat_id: int
    message_id: int | None
    user_id: int | None
    username: str | None
    file_id: str
    predicted: str | None
    candidates: list[str]
    verdict: str | None
    correction: str | None
    status: str | None
    shown: int


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: float
    user_id: int | None
    action: str
    uuid: str | None
    species: str | None
    path: str | None
    trash_path: str | None
    undone: bool


_ANSWER_COLS = (
    "id, chat_id, message_id, user_id, username, file_id, predicted, candidates, verdict, "
    "correction, status, shown"
)
_AUDIT_COLS = "id, at, user_id, action, uuid, species, path, trash_path, undone"


class BotState:
    """Thread-safe access to `<state_dir>/curation.sqlite` (short statements, autocommit)."""

    def __init__(self, state_dir: Path) -> None:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(state_dir) / STATE_FILE
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._conn.execute(sql, args)

    # --- album messages -----------------------------------------------------------------------
    def remember_album(self, chat_id: int, sent: list[tuple[int, str]]) -> None:
        now = time.time()
        with self._lock:
            self._conn.executemany(
                "INSERT OR REPLACE INTO album(chat_id, message_id, uuid, at) VALUES (?,?,?,?)",
                [(chat_id, mid, uid, now) for mid, uid in sent],
            )

    def album_photo(self, chat_id: int, message_id: int) -> str | None:
        row = self._run(
            "SELECT uuid FROM album WHERE chat_id=? AND message_id=?", (chat_id, message_id)
        ).fetchone()
        return row[0] if row else None

    # --- audit log ----------------------------------------------------------------------------
    def audit(
        self,
        action: str,
        *,
        user_id: int | None,
        username: str | None,
        chat_id: int | None,
        uuid: str | None = None,
        species: str | None = None,
        path: str | None = None,
        trash_path: str | None = None,
        detail: str | None = None,
    ) -> int:
        cur = self._run(
            "INSERT INTO audit(at, user_id, username, chat_id, action, uuid, species, path, "
            "trash_path, detail) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                time.time(),
                user_id,
                username,
                chat_id,
                action,
                uuid,
                species,
                path,
                trash_path,
                detail,
            ),
        )
        return int(cur.lastrowid or 0)

    def last_undoable(self, user_id: int, within_s: float) -> AuditRow | None:
        row = self._run(
            f"SELECT {_AUDIT_COLS} FROM audit WHERE user_id=? AND undone=0 AND at>=? "
            "AND action IN ('add', 'remove') ORDER BY id DESC LIMIT 1",
            (user_id, time.time() - within_s),
        ).fetchone()
        return AuditRow(*row[:-1], bool(row[-1])) if row else None

    def claim_undo(self, audit_id: int) -> bool:
        return (
            self._run("UPDATE audit SET undone=1 WHERE id=? AND undone=0", (audit_id,)).rowcount
            == 1
        )

    def release_undo(self, audit_id: int) -> None:
        self._run("UPDATE audit SET undone=0 WHERE id=?", (audit_id,))

    def audit_summary(self) -> dict[str, Any]:
        counts = dict(self._run("SELECT action, COUNT(*) FROM audit GROUP BY action").fetchall())
        last = self._run("SELECT MAX(at) FROM audit").fetchone()[0]
        return {"counts": counts, "last": last}

    # --- questions waiting for a button -------------------------------------------------------
    def put_pending(self, kind: str, data: dict[str, Any]) -> str:
        token = secrets.token_hex(6)
        self._run(
            "INSERT INTO pending(token, kind, data, at) VALUES (?,?,?,?)",
            (token, kind, json.dumps(data), time.time()),
        )
        return token

    def get_pending(self, token: str, kind: str) -> dict[str, Any] | None:
        row = self._run(
            "SELECT data, done FROM pending WHERE token=? AND kind=?", (token, kind)
        ).fetchone()
        if row is None:
            return None
        return {**json.loads(row[0]), "_done": bool(row[1])}

    def claim_pending(self, token: str) -> bool:
        return (
            self._run("UPDATE pending SET done=1 WHERE token=? AND done=0", (token,)).rowcount == 1
        )

    def release_pending(self, token: str) -> None:
        self._run("UPDATE pending SET done=0 WHERE token=?", (token,))

    # --- answers with buttons -----------------------------------------------------------------
    def new_answer(
        self,
        *,
        chat_id: int,
        user_id: int | None,
        username: str | None,
        file_id: str,
        predicted: str | None,
        candidates: list[str],
        shown: int,
    ) -> int:
        cur = self._run(
            "INSERT INTO answers(at, chat_id, user_id, username, file_id, predicted, candidates, "
            "shown) VALUES (?,?,?,?,?,?,?,?)",
            (
                time.time(),
                chat_id,
                user_id,
                username,
                file_id,
                predicted,
                json.dumps(candidates),
                shown,
            ),
        )
        return int(cur.lastrowid or 0)

    def set_answer_message(self, answer_id: int, message_id: int) -> None:
        self._run("UPDATE answers SET message_id=? WHERE id=?", (message_id, answer_id))

    def answer(self, answer_id: int) -> Answer | None:
        row = self._run(f"SELECT {_ANSWER_COLS} FROM answers WHERE id=?", (answer_id,)).fetchone()
        return _answer(row)

    def answer_for_message(self, chat_id: int, message_id: int) -> Answer | None:
        row = self._run(
            f"SELECT {_ANSWER_COLS} FROM answers WHERE chat_id=? AND message_id=?",
            (chat_id, message_id),
        ).fetchone()
        return _answer(row)

    def set_verdict(self, answer_id: int, verdict: str) -> bool:
        """Record right/wrong once; False if a verdict was already given."""
        return (
            self._run(
                "UPDATE answers SET verdict=? WHERE id=? AND verdict IS NULL", (verdict, answer_id)
            ).rowcount
            == 1
        )

    def set_correction(self, answer_id: int, species: str) -> bool:
        """Record the species the user says it is (once); it joins the review queue."""
        return (
            self._run(
                "UPDATE answers SET verdict='wrong', correction=?, status='pending' "
                "WHERE id=? AND correction IS NULL",
                (species, answer_id),
            ).rowcount
            == 1
        )

    def review_queue(self, limit: int = 5) -> tuple[list[Answer], int]:
        rows = self._run(
            f"SELECT {_ANSWER_COLS} FROM answers WHERE status='pending' ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        total = self._run("SELECT COUNT(*) FROM answers WHERE status='pending'").fetchone()[0]
        return [a for a in map(_answer, rows) if a is not None], int(total)

    def claim_review(self, answer_id: int, status: str) -> bool:
        return (
            self._run(
                "UPDATE answers SET status=? WHERE id=? AND status='pending'", (status, answer_id)
            ).rowcount
            == 1
        )

    def release_review(self, answer_id: int) -> None:
        self.mark_review(answer_id, "pending")

    def mark_review(self, answer_id: int, status: str) -> None:
        self._run("UPDATE answers SET status=? WHERE id=?", (status, answer_id))

    def claim_page(self, answer_id: int, shown: int, page: int) -> bool:
        """Move "more" from `shown` to `shown + page` once (a second press of the same button
        finds `shown` changed)."""
        return (
            self._run(
                "UPDATE answers SET shown=? WHERE id=? AND shown=?",
                (shown + page, answer_id, shown),
            ).rowcount
            == 1
        )


def _answer(row: tuple[Any, ...] | None) -> Answer | None:
    if row is None:
        return None
    values = list(row)
    values[7] = json.loads(values[7] or "[]")
    return Answer(*values)
