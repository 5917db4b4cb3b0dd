"""The FAISS store's SQLite database: which id lives in which vector row, payloads, tombstones.

SQLite is the commit point of every write: vectors are appended to the vectors file first and only
become part of the store when the transaction naming their rows commits, so a kill at any moment
leaves the old or the new state. WAL mode lets readers in other processes read while one writer
writes; a read-only directory is opened `immutable` (nobody can write it anyway).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.vectorstore.base import INDEXED_FIELDS, Where

DB_FILE = "store.sqlite"

_COLUMNS = {f: f"f_{f}" for f in INDEXED_FIELDS}

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS items ("
    " id TEXT PRIMARY KEY, row INTEGER NOT NULL, crc INTEGER NOT NULL, payload TEXT NOT NULL, "
    + ", ".join(f"{c} TEXT" for c in _COLUMNS.values())
    + ")",
    "CREATE INDEX IF NOT EXISTS items_row ON items(row)",
    *[f"CREATE INDEX IF NOT EXISTS items_{c} ON items({c})" for c in _COLUMNS.values()],
    "CREATE TABLE IF NOT EXISTS dead (row INTEGER PRIMARY KEY)",
]


def connect(directory: Path, *, read_only: bool) -> sqlite3.Connection:
    """Open the database; read-only handles never write (an unwritable directory: immutable)."""
    path = Path(directory) / DB_FILE
    if read_only:
        import os

        mode = "ro" if os.access(directory, os.W_OK) else "ro&immutable=1"
        conn = sqlite3.connect(
            f"file:{path}?mode={mode}", uri=True, check_same_thread=False, isolation_level=None
        )
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        for statement in _SCHEMA:
            conn.execute(statement)
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def read_meta(conn: sqlite3.Connection) -> dict[str, Any]:
    """All meta values (JSON-decoded)."""
    try:
        rows = conn.execute("SELECT key, value FROM meta").fetchall()
    except sqlite3.OperationalError:  # a database without tables yet
        return {}
    return {k: json.loads(v) for k, v in rows}


def write_meta(conn: sqlite3.Connection, values: Mapping[str, Any]) -> None:
    conn.executemany(
        "INSERT INTO meta(key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [(k, json.dumps(v, ensure_ascii=False)) for k, v in values.items()],
    )


def row_values(
    ids: Sequence[str], rows: Iterable[int], crcs: Iterable[int], payloads: Sequence[Mapping]
) -> list[tuple]:
    """Parameter tuples for `upsert_items`."""
    out = []
    for id_, row, crc, payload in zip(ids, rows, crcs, payloads, strict=True):
        indexed = [_indexed(payload.get(f)) for f in INDEXED_FIELDS]
        out.append(
            (id_, int(row), int(crc), json.dumps(dict(payload), ensure_ascii=False), *indexed)
        )
    return out


def _indexed(value: Any) -> str | None:
    return None if value is None else str(value)


def upsert_items(conn: sqlite3.Connection, values: list[tuple]) -> None:
    """Insert or replace items; rows they replace become tombstones. Caller holds a transaction."""
    ids = [v[0] for v in values]
    old = existing_rows(conn, ids)
    conn.executemany("INSERT OR IGNORE INTO dead(row) VALUES (?)", [(r,) for r in old.values()])
    cols = ", ".join(["id", "row", "crc", "payload", *_COLUMNS.values()])
    marks = ", ".join("?" * (4 + len(_COLUMNS)))
    conn.executemany(f"INSERT OR REPLACE INTO items({cols}) VALUES ({marks})", values)


def delete_items(conn: sqlite3.Connection, ids: Sequence[str]) -> int:
    """Delete items, tombstoning their rows; returns how many existed."""
    old = existing_rows(conn, ids)
    conn.executemany("INSERT OR IGNORE INTO dead(row) VALUES (?)", [(r,) for r in old.values()])
    conn.executemany("DELETE FROM items WHERE id = ?", [(i,) for i in old])
    return len(old)


def existing_rows(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for chunk in _chunks(list(ids), 500):
        marks = ",".join("?" * len(chunk))
        out.update(conn.execute(f"SELECT id, row FROM items WHERE id IN ({marks})", chunk))
    return out


def dead_rows(conn: sqlite3.Connection) -> np.ndarray:
    rows = conn.execute("SELECT row FROM dead ORDER BY row").fetchall()
    return np.array([r[0] for r in rows], dtype=np.int64)


def where_sql(where: Where | None) -> tuple[str, list[Any]]:
    """`where` as a SQL condition on items (indexed columns where possible)."""
    if not where:
        return "1", []
    parts, args = [], []
    for key, wanted in where.items():
        column = _COLUMNS.get(key) or f"json_extract(payload, '$.{_json_key(key)}')"
        if isinstance(wanted, list | tuple | set | frozenset):
            values = [_cmp(key, v) for v in wanted]
            if not values:
                return "0", []
            parts.append(f"{column} IN ({','.join('?' * len(values))})")
            args.extend(values)
        else:
            parts.append(f"{column} = ?")
            args.append(_cmp(key, wanted))
    return " AND ".join(parts), args


def _cmp(key: str, value: Any) -> Any:
    """Indexed columns hold text; other payload fields compare as JSON values."""
    return str(value) if key in _COLUMNS else value


def _json_key(key: str) -> str:
    if not key.replace("_", "").isalnum():
        raise ValueError(f"unsupported filter field {key!r}")
    return key


def rows_where(conn: sqlite3.Connection, where: Where | None) -> np.ndarray:
    cond, args = where_sql(where)
    rows = conn.execute(f"SELECT row FROM items WHERE {cond} ORDER BY row", args).fetchall()
    return np.array([r[0] for r in rows], dtype=np.int64)


def count_where(conn: sqlite3.Connection, where: Where | None) -> int:
    cond, args = where_sql(where)
    return int(conn.execute(f"SELECT COUNT(*) FROM items WHERE {cond}", args).fetchone()[0])


def items_by_rows(conn: sqlite3.Connection, rows: Sequence[int]) -> dict[int, tuple[str, dict]]:
    out: dict[int, tuple[str, dict]] = {}
    for chunk in _chunks([int(r) for r in rows], 500):
        marks = ",".join("?" * len(chunk))
        for id_, row, payload in conn.execute(
            f"SELECT id, row, payload FROM items WHERE row IN ({marks})", chunk
        ):
            out[row] = (id_, json.loads(payload))
    return out


def items_by_ids(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, tuple[int, dict]]:
    out: dict[str, tuple[int, dict]] = {}
    for chunk in _chunks(list(ids), 500):
        marks = ",".join("?" * len(chunk))
        for id_, row, payload in conn.execute(
            f"SELECT id, row, payload FROM items WHERE id IN ({marks})", chunk
        ):
            out[id_] = (row, json.loads(payload))
    return out


def values_of(conn: sqlite3.Connection, field_name: str) -> dict[str, int]:
    column = _COLUMNS.get(field_name) or f"json_extract(payload, '$.{_json_key(field_name)}')"
    rows = conn.execute(
        f"SELECT {column}, COUNT(*) FROM items WHERE {column} IS NOT NULL GROUP BY {column}"
    ).fetchall()
    return {str(v): int(n) for v, n in rows}


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
