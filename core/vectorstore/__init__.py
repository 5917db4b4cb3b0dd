"""Vector stores behind one interface; `open_store` picks the backend named by the settings.

Adding a backend is one module with a `VectorStore` subclass plus one line in `BACKENDS`; the
module is imported only when chosen, so an optional database client is never needed otherwise.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from core.errors import ConfigError
from core.vectorstore.base import (
    INDEXED_FIELDS,
    Batch,
    Capabilities,
    Hit,
    ReadOnlyStoreError,
    StoreInfo,
    StoreUnavailableError,
    VectorStore,
    Where,
    matches,
)

if TYPE_CHECKING:
    from core.settings import Settings

#: backend name -> "module:Class"; the class has `from_settings(settings, *, read_only)`.
BACKENDS: dict[str, str] = {
    "faiss": "core.vectorstore.faiss_store:FaissStore",
    "qdrant": "core.vectorstore.qdrant_store:QdrantStore",
    "milvus": "core.vectorstore.milvus_store:MilvusStore",
    "chroma": "core.vectorstore.chroma_store:ChromaStore",
}

#: pip extra that installs each backend's client.
EXTRAS = {"qdrant": "qdrant", "milvus": "milvus", "chroma": "chroma"}


def backend_class(name: str) -> type[VectorStore]:
    """The `VectorStore` class of a backend; a missing optional client is a clear `ConfigError`."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ConfigError(
            f"Unknown store {name!r}; choose one of {', '.join(BACKENDS)} (KONTROL_STORE)."
        ) from None
    module_name, cls_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = EXTRAS.get(name, name)
        raise ConfigError(
            f"The {name} store needs its client library ({exc.name or exc}); install it with "
            f"`pip install 'kontrol[{extra}]'`."
        ) from None
    return getattr(module, cls_name)


def open_store(settings: Settings, *, read_only: bool = False) -> VectorStore:
    """The store the settings name (KONTROL_STORE, default the embedded FAISS store)."""
    cls = backend_class(settings.store)
    return cls.from_settings(settings, read_only=read_only)  # type: ignore[attr-defined]


__all__ = [
    "BACKENDS",
    "INDEXED_FIELDS",
    "Batch",
    "Capabilities",
    "Hit",
    "ReadOnlyStoreError",
    "StoreInfo",
    "StoreUnavailableError",
    "VectorStore",
    "Where",
    "backend_class",
    "matches",
    "open_store",
]
