"""The collection catalogue: what the indexer has seen of each file, in SQLite.

The indexer diffs a scan of the collection against this table instead of loading one whole JSON
document, so a re-index of a million photos reads only what changed. It belongs to the indexer,
not to the vector store: with a database store (Milvus, Qdrant) the vectors live on a server while
the catalogue stays beside the collection's index directory.

One row per file path: its record id in the store, species, size/mtime (the change test), a
content hash (renames keep their vector), when it was added, where it came from, and - for files
that could not be read - why (so an unreadable file is skipped, not retried and re-written on
every run).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

CATALOG_FILE = "catalog.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    id TEXT,
    species TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha1 TEXT,
    added_at REAL NOT NULL,
    source TEXT,
    license TEXT,
    author TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS files_id ON files(id);
CREATE TABLE IF NOT EXISTS catalog_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Entry:
    """What the catalogue knows of one file. `id` is None for a file that could not be read."""

    path: str
    id: str | None
    species: str
    size: int
    mtime_ns: int
    sha1: str | None = None
    added_at: float = 0.0
    source: str | None = None
    license: str | None = None
    author: str | None = None
    error: str | None = None


class Catalog:
    """SQLite table of the collection's files (one writer: the indexer, under the store lock)."""

    def __init__(self, directory: Path, *, read_only: bool = False) -> None:
        path = Path(directory) / CATALOG_FILE
        if read_only:
            self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        else:
            Path(directory).mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        self._conn.close()

    def entries(self) -> dict[str, Entry]:
        """Every file the catalogue knows, by path."""
        cols = ", ".join(Entry.__dataclass_fields__)
        rows = self._conn.execute(f"SELECT {cols} FROM files").fetchall()
        return {r[0]: Entry(*r) for r in rows}

    def put(self, entries: Iterable[Entry]) -> None:
        """Insert or replace entries in one transaction."""
        cols = list(Entry.__dataclass_fields__)
        marks = ",".join("?" * len(cols))
        values = [tuple(getattr(e, c) for c in cols) for e in entries]
        with self._transaction():
            self._conn.executemany(
                f"INSERT OR REPLACE INTO files({','.join(cols)}) VALUES ({marks})", values
            )

    def remove(self, paths: Sequence[str]) -> None:
        with self._transaction():
            self._conn.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in paths])

    def clear(self) -> None:
        with self._transaction():
            self._conn.execute("DELETE FROM files")

    def ids(self) -> set[str]:
        return {r[0] for r in self._conn.execute("SELECT id FROM files WHERE id IS NOT NULL")}

    def count(self) -> int:
        return int(
            self._conn.execute("SELECT COUNT(*) FROM files WHERE id IS NOT NULL").fetchone()[0]
        )

    def _transaction(self):
        conn = self._conn

        class _Tx:
            def __enter__(self) -> None:
                conn.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, *_: object) -> None:
                conn.execute("ROLLBACK" if exc_type else "COMMIT")

        return _Tx()


def now() -> float:
    return time.time()
