"""The one storage seam: a `VectorStore` holds (id, vector, payload) records and searches them.

The engine, the indexer, evaluation, the CLI and the bot know storage only through this interface,
so a database (Qdrant, Milvus, Chroma) is one more module beside the embedded FAISS store.

Contract every backend keeps (checked by `tests/store_contract.py`, which each backend runs):
- ids are stable strings (the photo's uuid), never row positions; `upsert` replaces a record;
- vectors are L2-normalised float32, scores are cosine similarities, best first;
- `search(..., where=...)` filters on payload fields inside the store and returns exactly
  min(k, matches) hits, never a post-filtered short list;
- the store keeps its own `StoreInfo` (model fingerprint, dimension, schema), and `check` refuses a
  store built by another model, so embeddings of two models are never mixed;
- a store opened `read_only` never writes (a read-only index directory still serves).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from core.errors import IndexMismatchError, IndexMissingError, KontrolError

#: A payload filter: every field must match; a value matches by equality, a list/tuple/set means
#: "any of these". Example: {"species": "Felis catus"} or {"family": ["Felidae", "Canidae"]}.
Where = Mapping[str, Any]

#: Payload fields every backend can filter on (the FAISS store indexes these for speed; any other
#: payload field can be filtered on too, more slowly).
INDEXED_FIELDS = ("species", "genus", "family", "order", "class", "source", "license")


class ReadOnlyStoreError(KontrolError):
    """A write was attempted on a store opened for reading (or in a read-only place)."""


class StoreUnavailableError(KontrolError):
    """The store cannot be reached (server down, wrong URL or key); the message says which."""


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result: the record's id, its cosine similarity to the query, its payload."""

    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend guarantees; the contract suite checks each declared behaviour."""

    #: Unfiltered search returns the exact top-k (no approximation) at any size.
    exact: bool
    #: `where=` is pushed down to the store and returns exactly min(k, matches).
    filters: bool
    #: Records survive a restart of the process (and of the server).
    persistent: bool
    #: Several processes may open the store at once (readers while one writer writes).
    multi_process: bool


@dataclass(frozen=True, slots=True)
class StoreInfo:
    """What the store was built with; a store of another fingerprint is never mixed into."""

    fingerprint: str
    dim: int
    model: str = ""
    schema_version: int = 1
    #: Changes on every committed write: a reader compares it to notice new data.
    generation: str = ""
    #: Free key/values the owner keeps with the store (collection root, build report, ...).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Batch:
    """A slice of the store when iterating over all of it (export, migration, training)."""

    ids: list[str]
    vectors: np.ndarray | None
    payloads: list[dict[str, Any]]


class VectorStore(ABC):
    """Records of (id, L2-normalised vector, payload) with cosine search and payload filters."""

    #: Registry name (`faiss`, `qdrant`, `milvus`, `chroma`).
    backend: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    # --- what the store was built with ---------------------------------------------------------
    @abstractmethod
    def info(self) -> StoreInfo | None:
        """The stored `StoreInfo`, or None while the store has never been initialised."""

    @abstractmethod
    def initialise(self, info: StoreInfo, *, reset: bool = False) -> None:
        """Create the store for `info`. An existing store of another fingerprint or dimension
        raises `IndexMismatchError` unless `reset` (then all its records are dropped)."""

    @abstractmethod
    def set_extra(self, values: Mapping[str, Any]) -> None:
        """Merge `values` into `info().extra` (one committed write)."""

    def check(self, fingerprint: str, dim: int) -> StoreInfo:
        """The store's info if it was built for this model; else a clear `KontrolError`."""
        info = self.info()
        if info is None:
            raise IndexMissingError(
                f"No index in {self.describe()}: the collection is not indexed yet. "
                "Run `kontrol index`."
            )
        if info.fingerprint != fingerprint:
            raise IndexMismatchError(
                f"The index in {self.describe()} was built with model {info.model!r} "
                f"({info.fingerprint}), but the configured model is {fingerprint}; "
                "rebuild it with `kontrol index --full`."
            )
        if info.dim != dim:
            raise IndexMismatchError(
                f"The index in {self.describe()} holds {info.dim}-d vectors but the model gives "
                f"{dim}-d; rebuild it with `kontrol index --full`."
            )
        return info

    # --- records -------------------------------------------------------------------------------
    @abstractmethod
    def upsert(
        self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[Mapping[str, Any]]
    ) -> None:
        """Insert or replace records (one committed write: all or nothing where the backend can)."""

    @abstractmethod
    def delete(self, ids: Sequence[str]) -> int:
        """Remove records by id; returns how many existed. Unknown ids are ignored."""

    @abstractmethod
    def count(self, where: Where | None = None) -> int:
        """Number of records (matching `where`)."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int, where: Where | None = None) -> list[list[Hit]]:
        """For each query row, up to k hits by cosine similarity, best first; with `where`,
        exactly min(k, matches) hits."""

    @abstractmethod
    def fetch(self, ids: Sequence[str]) -> Batch:
        """Vectors and payloads of these ids, in the given order; unknown ids are left out."""

    @abstractmethod
    def iterate(
        self, batch_size: int = 4096, *, vectors: bool = True, where: Where | None = None
    ) -> Iterator[Batch]:
        """Every record (matching `where`), in batches, in a stable order."""

    def values(self, field_name: str) -> dict[str, int]:
        """Distinct values of a payload field with their record counts (e.g. species sizes)."""
        counts: dict[str, int] = {}
        for batch in self.iterate(vectors=False):
            for payload in batch.payloads:
                value = payload.get(field_name)
                if value is not None:
                    counts[str(value)] = counts.get(str(value), 0) + 1
        return counts

    # --- life-cycle ----------------------------------------------------------------------------
    def writer(self) -> contextlib.AbstractContextManager[None]:
        """Hold the store's writer lock for a sequence of writes (one writer across processes).

        Raises `IndexBusyError` when another writer holds it. Servers serialise writes themselves;
        their default is a no-op.
        """
        return contextlib.nullcontext()

    def refresh(self) -> bool:
        """Pick up writes committed by another process; True when something changed."""
        return False

    def maintain(self, *, force: bool = False) -> dict[str, Any]:
        """Housekeeping worth doing after writes (compaction, index re-training); returns what
        was done. Cheap when there is nothing to do."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files, connections and locks."""

    @abstractmethod
    def describe(self) -> str:
        """Where the store lives, for messages (never includes a secret such as an API key)."""

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def matches(payload: Mapping[str, Any], where: Where | None) -> bool:
    """Reference semantics of `where` (used by backends that filter in Python, and by tests)."""
    if not where:
        return True
    for key, wanted in where.items():
        value = payload.get(key)
        if isinstance(wanted, list | tuple | set | frozenset):
            if value not in wanted:
                return False
        elif value != wanted:
            return False
    return True


def as_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    """(q, dim) contiguous float32, whatever came in (one vector or many)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q.reshape(1, -1)
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"expected query vectors of dimension {dim}, got shape {q.shape}")
    return q
