"""Chroma as the vector store: an embedded `chromadb.PersistentClient` under `<index_dir>/chroma`.

Records: Chroma takes the photo ids as they are. Vectors live in an HNSW index with cosine space
(approximate, so `exact=False`); Chroma returns cosine *distances*, turned back into similarities
(1 - d). The payload is kept whole as JSON in the metadata key `__payload`, and its scalar fields
(str, int, float, bool) are also plain metadata keys, so `where` is pushed down as Chroma's
`{"$and": [{"field": {"$eq" | "$in": ...}}, ...]}`. A search that returns fewer than
min(k, count(where)) hits is answered again by an exact scan of the matching vectors.
`StoreInfo` is one record's metadata in the reserved collection `<collection>__kontrol_meta`.

Processes: Chroma's documentation says the embedded client is thread-safe but not process-safe,
so `multi_process=False` (stores opened on one path inside one process share Chroma's system).
No Chroma server mode here (`chroma run` + `HttpClient` would need its own backend settings).

Client API used (chromadb 1.5.9): `PersistentClient(path, Settings(anonymized_telemetry=False))`,
`get_collection`, `create_collection(configuration={"hnsw": ...}, embedding_function=None)`,
`delete_collection`, `Collection.upsert / get / query / delete / count`, `get_max_batch_size`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import chromadb
import numpy as np
from chromadb.config import Settings as ChromaSettings
from chromadb.errors import NotFoundError

from core.vectorstore._common import (
    FILTER_EXACT_MAX,
    META_SUFFIX,
    InfoStoreMixin,
    check_records,
    chunks,
    exact_search,
    info_from_json,
    info_to_json,
    matches_nothing,
    mismatch,
    new_generation,
    normalise_where,
    not_indexed,
)
from core.vectorstore.base import (
    Batch,
    Capabilities,
    Hit,
    StoreInfo,
    VectorStore,
    Where,
    as_queries,
)

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

    from core.settings import Settings

PAYLOAD_KEY = "__payload"
INFO_ID = "info"
#: HNSW build/search settings (Chroma's defaults are ef_construction=100, ef_search=100).
HNSW = {"space": "cosine", "ef_construction": 200, "ef_search": 128, "max_neighbors": 16}


class ChromaStore(InfoStoreMixin, VectorStore):
    """See the module docstring."""

    backend = "chroma"
    capabilities = Capabilities(exact=False, filters=True, persistent=True, multi_process=False)

    def __init__(
        self, path: Path | str, *, collection: str = "kontrol", read_only: bool = False
    ) -> None:
        if len(collection) < 3:
            raise ValueError(f"Chroma collection names have at least 3 characters: {collection!r}")
        self.path = Path(path)
        self.collection_name = collection
        self.meta_name = collection + META_SUFFIX
        self.read_only = read_only
        self._client: Any = None
        self._data: Collection | None = None
        self._meta: Collection | None = None
        if read_only and not self.path.exists():
            self._seen_generation: str | None = None
            return  # nothing indexed yet; info() is None and check() says so
        self._client = chromadb.PersistentClient(
            path=str(self.path), settings=ChromaSettings(anonymized_telemetry=False)
        )
        info = self.info()
        self._seen_generation = info.generation if info else None

    @classmethod
    def from_settings(cls, settings: Settings, *, read_only: bool = False) -> ChromaStore:
        return cls(
            Path(settings.index_dir) / "chroma",
            collection=settings.store_collection,
            read_only=read_only,
        )

    def describe(self) -> str:
        return f"Chroma collection {self.collection_name!r} in {self.path}"

    # --- plumbing ------------------------------------------------------------------------------
    def _get(self, name: str) -> Collection | None:
        if self._client is None:
            return None
        try:
            return self._client.get_collection(name, embedding_function=None)
        except (NotFoundError, ValueError):
            return None

    def _meta_collection(self) -> Collection | None:
        if self._meta is None:
            self._meta = self._get(self.meta_name)
        return self._meta

    def _data_collection(self) -> Collection:
        if self._data is None:
            self._data = self._get(self.collection_name)
        if self._data is None:
            raise not_indexed(self.describe())
        return self._data

    def _write_info(self, info: StoreInfo) -> None:
        meta = self._meta_collection()
        if meta is None:
            meta = self._meta = self._client.create_collection(
                self.meta_name, embedding_function=None
            )
        meta.upsert(ids=[INFO_ID], embeddings=[[0.0]], metadatas=[{"info": info_to_json(info)}])
        self._seen_generation = info.generation

    def _commit(self) -> None:
        self._bump_generation()

    @staticmethod
    def _where(where: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if not where:
            return None
        terms = [
            {key: {"$in": wanted} if isinstance(wanted, list) else {"$eq": wanted}}
            for key, wanted in where.items()
        ]
        return terms[0] if len(terms) == 1 else {"$and": terms}

    @staticmethod
    def _metadata(payload: Mapping[str, Any]) -> dict[str, Any]:
        meta = {
            str(k): v
            for k, v in payload.items()
            if isinstance(v, str | int | float | bool) and k != PAYLOAD_KEY
        }
        meta[PAYLOAD_KEY] = json.dumps(dict(payload), default=str)
        return meta

    @staticmethod
    def _payload(meta: Mapping[str, Any] | None) -> dict[str, Any]:
        if not meta or PAYLOAD_KEY not in meta:
            return {k: v for k, v in (meta or {}).items() if k != PAYLOAD_KEY}
        return json.loads(meta[PAYLOAD_KEY])

    # --- what the store was built with ---------------------------------------------------------
    def info(self) -> StoreInfo | None:
        meta = self._meta_collection()
        if meta is None:
            return None
        try:
            got = meta.get(ids=[INFO_ID], include=["metadatas"])
        except NotFoundError:  # dropped by another store object: look again
            self._meta = None
            meta = self._meta_collection()
            if meta is None:
                return None
            got = meta.get(ids=[INFO_ID], include=["metadatas"])
        if not got["ids"]:
            return None
        return info_from_json(got["metadatas"][0]["info"])

    def initialise(self, info: StoreInfo, *, reset: bool = False) -> None:
        self._writable()
        current = self.info()
        if current is not None and not reset:
            if (current.fingerprint, current.dim) != (info.fingerprint, info.dim):
                raise mismatch(self.describe(), current, info)
            return
        if self._get(self.collection_name) is not None:
            self._client.delete_collection(self.collection_name)
        self._data = self._client.create_collection(
            self.collection_name,
            configuration={"hnsw": dict(HNSW)},
            embedding_function=None,
        )
        self._write_info(replace(info, generation=new_generation()))

    # --- records -------------------------------------------------------------------------------
    def _batch_size(self) -> int:
        return max(1, min(1000, int(self._client.get_max_batch_size())))

    def upsert(
        self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[Mapping[str, Any]]
    ) -> None:
        self._writable()
        vecs = check_records(ids, vectors, payloads, self._dim())
        if not len(ids):
            return
        data = self._data_collection()
        for start, stop in chunks(len(ids), self._batch_size()):
            data.upsert(
                ids=list(ids[start:stop]),
                embeddings=vecs[start:stop],
                metadatas=[self._metadata(p) for p in payloads[start:stop]],
            )
        self._commit()

    def delete(self, ids: Sequence[str]) -> int:
        self._writable()
        self._dim()
        data = self._data_collection()
        wanted = list(dict.fromkeys(ids))
        existing: list[str] = []
        for start, stop in chunks(len(wanted), self._batch_size()):
            existing.extend(data.get(ids=wanted[start:stop], include=[])["ids"])
        if not existing:
            return 0
        for start, stop in chunks(len(existing), self._batch_size()):
            data.delete(ids=existing[start:stop])
        self._commit()
        return len(existing)

    def count(self, where: Where | None = None) -> int:
        w = normalise_where(where)
        if self.info() is None or matches_nothing(w):
            return 0
        data = self._data_collection()
        if not w:
            return int(data.count())
        return len(data.get(where=self._where(w), include=[])["ids"])

    def search(self, queries: np.ndarray, k: int, where: Where | None = None) -> list[list[Hit]]:
        q = as_queries(queries, self._dim())
        w = normalise_where(where)
        empty: list[list[Hit]] = [[] for _ in range(len(q))]
        if k <= 0 or matches_nothing(w) or not len(q):
            return empty
        data = self._data_collection()
        total = int(data.count())
        if total == 0:
            return empty
        if w and self.count(w) <= FILTER_EXACT_MAX:
            return self._exact(q, k, w)  # a small filter: exact, the HNSW's filtered recall is not
        res = data.query(
            query_embeddings=q,
            n_results=min(k, total),
            where=self._where(w),
            include=["metadatas", "distances"],
        )
        rows: list[list[Hit]] = []
        for ids, metas, dists in zip(res["ids"], res["metadatas"], res["distances"], strict=True):
            rows.append(
                [
                    Hit(rid, 1.0 - float(d), self._payload(m))
                    for rid, m, d in zip(ids, metas, dists, strict=True)
                ]
            )
        short = [i for i, row in enumerate(rows) if len(row) < k]
        if short:
            need = min(k, total if not w else self.count(w))
            redo = [i for i in short if len(rows[i]) < need]
            if redo:  # the HNSW came back short: rank the matching records exactly
                for i, row in zip(redo, self._exact(q[redo], k, w), strict=True):
                    rows[i] = row
        return rows

    def _exact(self, q: np.ndarray, k: int, where: Mapping[str, Any] | None) -> list[list[Hit]]:
        return exact_search(self, q, k, where)

    def fetch(self, ids: Sequence[str]) -> Batch:
        dim = self._dim()
        data = self._data_collection()
        found: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
        wanted = list(dict.fromkeys(ids))
        for start, stop in chunks(len(wanted), self._batch_size()):
            got = data.get(ids=wanted[start:stop], include=["embeddings", "metadatas"])
            for rid, vec, meta in zip(got["ids"], got["embeddings"], got["metadatas"], strict=True):
                found[rid] = (np.asarray(vec, dtype=np.float32), self._payload(meta))
        keep = [i for i in ids if i in found]
        vectors = np.stack([found[i][0] for i in keep]) if keep else np.zeros((0, dim), np.float32)
        return Batch(ids=keep, vectors=vectors, payloads=[found[i][1] for i in keep])

    def iterate(
        self, batch_size: int = 4096, *, vectors: bool = True, where: Where | None = None
    ) -> Iterator[Batch]:
        w = normalise_where(where)
        if self.info() is None or matches_nothing(w):
            return
        data = self._data_collection()
        include = ["embeddings", "metadatas"] if vectors else ["metadatas"]
        offset = 0
        while True:
            got = data.get(where=self._where(w), limit=batch_size, offset=offset, include=include)
            n = len(got["ids"])
            if n:
                vecs = np.asarray(got["embeddings"], dtype=np.float32) if vectors else None
                yield Batch(
                    ids=list(got["ids"]),
                    vectors=vecs,
                    payloads=[self._payload(m) for m in got["metadatas"]],
                )
            if n < batch_size:
                return
            offset += n

    # --- life-cycle ----------------------------------------------------------------------------
    def refresh(self) -> bool:
        self._data = self._meta = None  # another store may have re-created the collections
        info = self.info()
        generation = info.generation if info else None
        changed = generation != self._seen_generation
        self._seen_generation = generation
        return changed

    def close(self) -> None:
        self._data = self._meta = None
        self._client = None
