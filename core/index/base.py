"""The vector-index interface: add normalised vectors, search by inner product, serialise.

Row ids are positions (0..n-1) in the order vectors were added, which is also the row order of
`embeddings.npy` and of the metadata's `embedding_index`. Backends differ only in speed/memory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from core.errors import ConfigError, IndexCorruptError

INDEX_TYPES = ("flat", "flat_fp16", "hnsw")


class VectorIndex(ABC):
    """Inner-product search over L2-normalised float32 vectors (so scores are cosines)."""

    #: Backend name as in settings (`flat`, `flat_fp16`, `hnsw`).
    kind: str
    #: True when search scans every vector (results are exact up to storage precision).
    exact: bool

    def __init__(self, dim: int) -> None:
        self.dim = dim

    @property
    @abstractmethod
    def ntotal(self) -> int:
        """Number of vectors held."""

    @abstractmethod
    def add(self, vectors: np.ndarray) -> None:
        """Append (n, dim) float32 vectors; they get ids ntotal..ntotal+n-1."""

    @abstractmethod
    def search(
        self, queries: np.ndarray, k: int, subset: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (scores (q, k), ids (q, k)); missing slots have id -1.

        `subset` restricts the search to those ids and still returns min(k, len(subset)) hits,
        unlike a post-filter, which would come back short for a rare species.
        """

    @abstractmethod
    def to_bytes(self) -> bytes:
        """Serialise (what `faiss_index.bin` holds)."""


def create_index(kind: str, dim: int) -> VectorIndex:
    """A new empty index of the named backend."""
    from core.index.faiss_backends import FaissFlatIndex, FaissHNSWIndex

    if kind == "flat":
        return FaissFlatIndex(dim, fp16=False)
    if kind in ("flat_fp16", "auto", "ivf"):
        return FaissFlatIndex(dim, fp16=True)
    if kind == "hnsw":
        return FaissHNSWIndex(dim)
    raise ConfigError(f"Unknown index type {kind!r}; choose one of {', '.join(INDEX_TYPES)}.")


def index_from_bytes(data: bytes, kind: str, dim: int) -> VectorIndex:
    """Rebuild an index written by `to_bytes`; damaged bytes raise `IndexCorruptError`."""
    from core.index.faiss_backends import wrap_faiss_bytes

    try:
        index = wrap_faiss_bytes(data, kind)
    except (RuntimeError, ValueError) as exc:
        raise IndexCorruptError(
            "The index file faiss_index.bin is damaged; rebuild it with `kontrol index`."
        ) from exc
    if index.dim != dim:
        raise IndexCorruptError(
            f"faiss_index.bin holds {index.dim}-d vectors but the metadata says {dim}-d; "
            "rebuild it with `kontrol index`."
        )
    return index
