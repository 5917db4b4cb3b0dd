"""Pieces the database backends (Qdrant, Milvus, Chroma) share.

Each database keeps the `StoreInfo` as one JSON document in a small reserved collection beside
the records (`<collection>__kontrol_meta`), so the store describes itself and a reader in another
process notices a commit by its `generation`. The exact fallback here is what keeps a filtered
search from ever coming back short: when a native ANN search returns fewer than min(k, matches)
hits, the backend fetches the matching vectors and ranks them by brute force.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from core.errors import IndexMismatchError, IndexMissingError
from core.vectorstore.base import Hit, ReadOnlyStoreError, StoreInfo, VectorStore, Where

#: Suffix of the reserved collection that holds a store's `StoreInfo`.
META_SUFFIX = "__kontrol_meta"

#: A filter matching at most this many records is answered by an exact scan of them: measured at
#: 100k, Chroma's and a still-indexing Milvus's filtered HNSW answers had recall@10 0.34-0.51
#: (right count, wrong photos), which a short-answer check cannot see.
FILTER_EXACT_MAX = 5_000

#: Filter values every backend pushes down natively (a list/tuple/set of them means "any of").
FILTER_TYPES = (str, int, bool)


def new_generation() -> str:
    """A fresh generation token (compared for inequality only)."""
    return uuid.uuid4().hex


def info_to_json(info: StoreInfo) -> str:
    return json.dumps(asdict(info), sort_keys=True, default=str)


def info_from_json(text: str) -> StoreInfo:
    data = json.loads(text)
    return StoreInfo(
        fingerprint=str(data["fingerprint"]),
        dim=int(data["dim"]),
        model=str(data.get("model", "")),
        schema_version=int(data.get("schema_version", 1)),
        generation=str(data.get("generation", "")),
        extra=dict(data.get("extra") or {}),
    )


def mismatch(describe: str, current: StoreInfo, wanted: StoreInfo) -> IndexMismatchError:
    return IndexMismatchError(
        f"The index in {describe} was built with {current.model!r} ({current.fingerprint}, "
        f"{current.dim}-d); refusing to mix in {wanted.fingerprint} ({wanted.dim}-d). "
        "Rebuild it with `kontrol index --full`."
    )


def read_only_error(describe: str) -> ReadOnlyStoreError:
    return ReadOnlyStoreError(
        f"The index in {describe} is open read-only; only `kontrol index` writes it."
    )


def normalise_where(where: Where | None) -> dict[str, Any] | None:
    """`where` with every list/tuple/set as a list of distinct values; checks value types.

    Returns None for "no filter". Raises `ValueError` for values a backend cannot push down.
    """
    if not where:
        return None
    out: dict[str, Any] = {}
    for key, wanted in where.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"filter field names must be non-empty strings, got {key!r}")
        if isinstance(wanted, list | tuple | set | frozenset):
            values = list(dict.fromkeys(wanted))
            for v in values:
                _check_value(key, v)
            out[key] = values
        else:
            _check_value(key, wanted)
            out[key] = wanted
    return out


def _check_value(key: str, value: Any) -> None:
    if not isinstance(value, FILTER_TYPES):
        raise ValueError(
            f"cannot filter {key!r} on {value!r}: filter values are strings, integers or booleans"
        )


def matches_nothing(where: Mapping[str, Any] | None) -> bool:
    """True when a normalised `where` holds an empty "any of" list (so nothing can match)."""
    return bool(where) and any(isinstance(v, list) and not v for v in where.values())


def check_records(
    ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[Mapping[str, Any]], dim: int
) -> np.ndarray:
    """Validate an upsert's arguments; returns the vectors as (n, dim) float32."""
    vecs = np.ascontiguousarray(vectors, dtype=np.float32)
    if vecs.ndim == 1:
        vecs = vecs.reshape(1, -1)
    if vecs.ndim != 2 or vecs.shape[1] != dim:
        raise ValueError(f"expected vectors of dimension {dim}, got shape {vecs.shape}")
    if not (len(ids) == len(vecs) == len(payloads)):
        raise ValueError(
            f"ids, vectors and payloads differ in length ({len(ids)}, {len(vecs)}, {len(payloads)})"
        )
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate ids in one upsert")
    for i in ids:
        if not isinstance(i, str) or not i:
            raise ValueError(f"record ids are non-empty strings, got {i!r}")
    return vecs


def exact_rank(
    queries: np.ndarray,
    ids: Sequence[str],
    vectors: np.ndarray,
    payloads: Sequence[dict[str, Any]],
    k: int,
) -> list[list[Hit]]:
    """Brute-force top-k by inner product (= cosine for unit vectors), best first."""
    if not len(ids):
        return [[] for _ in range(len(queries))]
    scores = queries @ vectors.T
    out: list[list[Hit]] = []
    for row in scores:
        order = np.argsort(-row, kind="stable")[:k]
        out.append([Hit(ids[j], float(row[j]), dict(payloads[j])) for j in order])
    return out


def public_url(url: str) -> str:
    """The URL without user info, query or fragment (nothing secret in messages); a bare
    host:port is read as http."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def not_indexed(describe: str) -> IndexMissingError:
    """The one sentence for a store nobody has indexed into yet."""
    return IndexMissingError(
        f"No index in {describe}: the collection is not indexed yet. Run `kontrol index`."
    )


class InfoStoreMixin:
    """What the database backends share around the `StoreInfo` they keep in the store itself.

    A backend provides `read_only`, `info()`, `describe()` and `_write_info(info)`.
    """

    read_only: bool

    def _writable(self) -> None:
        if self.read_only:
            raise read_only_error(self.describe())  # type: ignore[attr-defined]

    def _dim(self) -> int:
        info = self.info()  # type: ignore[attr-defined]
        if info is None:
            raise not_indexed(self.describe())  # type: ignore[attr-defined]
        return info.dim

    def _bump_generation(self) -> None:
        """A new generation after a committed write, so readers in other processes notice it."""
        info = self.info()  # type: ignore[attr-defined]
        if info is not None:
            self._write_info(replace(info, generation=new_generation()))  # type: ignore[attr-defined]

    def set_extra(self, values: Mapping[str, Any]) -> None:
        self._writable()
        info = self.info()  # type: ignore[attr-defined]
        if info is None:
            where = self.describe()  # type: ignore[attr-defined]
            raise IndexMissingError(f"No index in {where}; initialise it first.")
        extra = {**info.extra, **dict(values)}
        self._write_info(replace(info, extra=extra, generation=new_generation()))  # type: ignore[attr-defined]


def exact_search(
    store: VectorStore, queries: np.ndarray, k: int, where: Mapping[str, Any] | None
) -> list[list[Hit]]:
    """Rank every record matching `where` exactly (the fallback behind a native filtered ANN)."""
    ids: list[str] = []
    vecs: list[np.ndarray] = []
    payloads: list[dict[str, Any]] = []
    for batch in store.iterate(vectors=True, where=where):
        ids.extend(batch.ids)
        payloads.extend(batch.payloads)
        assert batch.vectors is not None
        vecs.append(batch.vectors)
    matrix = np.concatenate(vecs) if vecs else np.zeros((0, queries.shape[1]), np.float32)
    return exact_rank(queries, ids, matrix, payloads, k)


def scrub(text: str, secret: str | None) -> str:
    """`text` with a secret (API key, token, password) blanked out, whatever carried it in."""
    if secret:
        text = text.replace(secret, "***")
        _, sep, password = secret.partition(":")  # a "user:password" token
        if sep and len(password) >= 8:
            text = text.replace(password, "***")
    return text


def chunks(n: int, size: int):
    """(start, stop) pairs covering range(n) in steps of `size`."""
    for start in range(0, n, size):
        yield start, min(n, start + size)
