"""Qdrant as the vector store: a Qdrant server (or cluster) by URL, or qdrant-client's local mode.

- `KONTROL_STORE=qdrant` with `KONTROL_STORE_URL=http://host:6333` (and `KONTROL_STORE_API_KEY`
  where the server wants one) uses a server: HNSW search (approximate, so `exact=False`), keyword
  payload indexes on the taxonomy fields, any number of processes.
- Without a URL the store is qdrant-client's *local mode* under `<index_dir>/qdrant`: brute force
  in Python (exact, fine for tests and small collections; the library warns above 20,000 points),
  one process at a time (a second process is refused with `IndexBusyError`). Several stores
  opened on the same path inside one process share one client.

Records: Qdrant point ids are UUIDs, so a photo id maps to `uuid5(NAMESPACE, id)` and the id
itself is kept in the payload under `__id`. Vectors use cosine distance; Qdrant returns cosine
similarities. Filters are `Filter(must=[FieldCondition(match=MatchValue | MatchAny)])`; a search
that comes back with fewer than min(k, count(where)) hits is repeated with `exact=True` (a full
scan in the server), so it is never short. `StoreInfo` lives as one point's payload in the
reserved collection `<collection>__kontrol_meta`.

Client API used (qdrant-client 1.20, run here only in local mode: no Qdrant server could run on
this machine): `collection_exists`, `create_collection`, `delete_collection`,
`create_payload_index`, `upsert`, `retrieve`, `delete(PointIdsList)`, `count`, `scroll`,
`query_batch_points(QueryRequest)`.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from core.errors import IndexBusyError, KontrolError
from core.vectorstore._common import (
    META_SUFFIX,
    InfoStoreMixin,
    check_records,
    chunks,
    info_from_json,
    info_to_json,
    matches_nothing,
    mismatch,
    new_generation,
    normalise_where,
    not_indexed,
    public_url,
    scrub,
)
from core.vectorstore.base import (
    INDEXED_FIELDS,
    Batch,
    Capabilities,
    Hit,
    StoreInfo,
    StoreUnavailableError,
    VectorStore,
    Where,
    as_queries,
)

if TYPE_CHECKING:
    from core.settings import Settings

#: Namespace of the uuid5 point ids (fixed forever: changing it orphans every stored point).
NAMESPACE = uuid.UUID("6f1c2a52-61a4-4d7e-9a55-6b0f1d3c9e21")
ID_KEY = "__id"
INFO_POINT = str(uuid.uuid5(NAMESPACE, "kontrol:store-info"))
WRITE_BATCH = 256

_LOCAL_LOCK = threading.Lock()
_LOCAL_CLIENTS: dict[str, list[Any]] = {}  # resolved path -> [client, users]


def point_id(record_id: str) -> str:
    """The Qdrant point id of a photo id (deterministic)."""
    return str(uuid.uuid5(NAMESPACE, record_id))


def _open_local(path: Path) -> QdrantClient:
    key = str(path.resolve())
    with _LOCAL_LOCK:
        entry = _LOCAL_CLIENTS.get(key)
        if entry is None:
            try:
                client = QdrantClient(path=key)
            except RuntimeError as exc:
                if "already accessed" in str(exc):
                    raise IndexBusyError(
                        f"The Qdrant store in {path} is open in another process; local mode "
                        "allows one process at a time (use a Qdrant server, KONTROL_STORE_URL, "
                        "for several)."
                    ) from None
                raise
            entry = _LOCAL_CLIENTS[key] = [client, 0]
        entry[1] += 1
        return entry[0]


def _close_local(path: Path) -> None:
    key = str(path.resolve())
    with _LOCAL_LOCK:
        entry = _LOCAL_CLIENTS.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _LOCAL_CLIENTS[key]
            entry[0].close()


class QdrantStore(InfoStoreMixin, VectorStore):
    """See the module docstring."""

    backend = "qdrant"
    capabilities = Capabilities(exact=False, filters=True, persistent=True, multi_process=True)

    def __init__(
        self,
        *,
        url: str | None = None,
        path: Path | str | None = None,
        collection: str = "kontrol",
        api_key: str | None = None,
        read_only: bool = False,
        timeout: int = 10,
    ) -> None:
        if (url is None) == (path is None):
            raise ValueError("give exactly one of url (server) or path (local mode)")
        self.collection = collection
        self.meta_collection = collection + META_SUFFIX
        self.read_only = read_only
        self.url = url
        self.path = Path(path) if path is not None else None
        self._api_key = api_key
        self._seen_generation: str | None = None
        self._client: QdrantClient | None = None
        if self.path is not None:
            # local mode is a brute-force scan in one process
            self.capabilities = Capabilities(
                exact=True, filters=True, persistent=True, multi_process=False
            )
            if read_only and not self.path.exists():
                return  # nothing indexed yet; info() is None and check() says so
            self._client = _open_local(self.path)
        else:
            assert url is not None
            self._client = QdrantClient(
                url=url, api_key=api_key, timeout=timeout, check_compatibility=False
            )
            with self._guard():
                self._client.collection_exists(self.meta_collection)  # reachable, key accepted
        info = self.info()
        self._seen_generation = info.generation if info else None

    @classmethod
    def from_settings(cls, settings: Settings, *, read_only: bool = False) -> QdrantStore:
        key = settings.store_api_key.get_secret_value() if settings.store_api_key else None
        if settings.store_url:
            return cls(
                url=settings.store_url,
                collection=settings.store_collection,
                api_key=key,
                read_only=read_only,
            )
        return cls(
            path=Path(settings.index_dir) / "qdrant",
            collection=settings.store_collection,
            read_only=read_only,
        )

    def describe(self) -> str:
        if self.url is not None:
            return f"Qdrant collection {self.collection!r} at {public_url(self.url)}"
        return f"Qdrant collection {self.collection!r} in {self.path} (local mode)"

    # --- plumbing ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Connection and authentication failures become one `StoreUnavailableError` sentence."""
        try:
            yield
        except KontrolError:
            raise
        except UnexpectedResponse as exc:
            code = exc.status_code
            if code in (401, 403):
                raise StoreUnavailableError(
                    f"The Qdrant server refused the API key for {self.describe()} "
                    f"(HTTP {code}); check KONTROL_STORE_API_KEY."
                ) from None
            if code is not None and code >= 500:
                raise StoreUnavailableError(
                    f"The Qdrant server failed to answer for {self.describe()} (HTTP {code}); "
                    "try again later."
                ) from None
            raise
        except (ResponseHandlingException, OSError, TimeoutError) as exc:
            reason = scrub(str(getattr(exc, "source", None) or exc), self._api_key)
            raise StoreUnavailableError(
                f"{self.describe()} cannot be reached ({reason}); "
                "check KONTROL_STORE_URL and that the server is running."
            ) from None

    @property
    def client(self) -> QdrantClient:
        if self._client is None:
            raise not_indexed(self.describe())
        return self._client

    def _write_info(self, info: StoreInfo) -> None:
        with self._guard():
            if not self.client.collection_exists(self.meta_collection):
                self.client.create_collection(
                    self.meta_collection,
                    vectors_config=models.VectorParams(size=1, distance=models.Distance.DOT),
                )
            self.client.upsert(
                self.meta_collection,
                points=[
                    models.PointStruct(
                        id=INFO_POINT, vector=[0.0], payload={"info": info_to_json(info)}
                    )
                ],
                wait=True,
            )
        self._seen_generation = info.generation

    def _commit(self) -> None:
        """Bump the generation after a committed write, so readers elsewhere notice it."""
        self._bump_generation()

    @staticmethod
    def _filter(where: Mapping[str, Any] | None) -> models.Filter | None:
        if not where:
            return None
        must: list[Any] = []
        for key, wanted in where.items():
            if isinstance(wanted, list):
                match: Any = models.MatchAny(any=wanted)
            else:
                match = models.MatchValue(value=wanted)
            must.append(models.FieldCondition(key=key, match=match))
        return models.Filter(must=must)

    @staticmethod
    def _payload(raw: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
        payload = dict(raw or {})
        return str(payload.pop(ID_KEY, "")), payload

    # --- what the store was built with ---------------------------------------------------------
    def info(self) -> StoreInfo | None:
        if self._client is None:
            return None
        with self._guard():
            if not self.client.collection_exists(self.meta_collection):
                return None
            got = self.client.retrieve(self.meta_collection, ids=[INFO_POINT], with_payload=True)
        if not got or not got[0].payload or "info" not in got[0].payload:
            return None
        return info_from_json(got[0].payload["info"])

    def initialise(self, info: StoreInfo, *, reset: bool = False) -> None:
        self._writable()
        current = self.info()
        if current is not None and not reset:
            if (current.fingerprint, current.dim) != (info.fingerprint, info.dim):
                raise mismatch(self.describe(), current, info)
            return
        with self._guard():
            if self.client.collection_exists(self.collection):
                self.client.delete_collection(self.collection)
            self.client.create_collection(
                self.collection,
                vectors_config=models.VectorParams(
                    size=int(info.dim), distance=models.Distance.COSINE
                ),
            )
            if self.url is not None:  # local mode has no payload indexes (it scans)
                for name in (*INDEXED_FIELDS, ID_KEY):
                    self.client.create_payload_index(
                        self.collection, name, models.PayloadSchemaType.KEYWORD, wait=True
                    )
        self._write_info(replace(info, generation=new_generation()))

    # --- records -------------------------------------------------------------------------------
    def upsert(
        self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[Mapping[str, Any]]
    ) -> None:
        self._writable()
        vecs = check_records(ids, vectors, payloads, self._dim())
        if not len(ids):
            return
        with self._guard():
            for start, stop in chunks(len(ids), WRITE_BATCH):
                points = [
                    models.PointStruct(
                        id=point_id(ids[i]),
                        vector=vecs[i].tolist(),
                        payload={**dict(payloads[i]), ID_KEY: ids[i]},
                    )
                    for i in range(start, stop)
                ]
                self.client.upsert(self.collection, points=points, wait=True)
        self._commit()

    def delete(self, ids: Sequence[str]) -> int:
        self._writable()
        self._dim()
        wanted = list(dict.fromkeys(ids))
        existing: list[str] = []
        with self._guard():
            for start, stop in chunks(len(wanted), 1024):
                got = self.client.retrieve(
                    self.collection,
                    ids=[point_id(i) for i in wanted[start:stop]],
                    with_payload=False,
                    with_vectors=False,
                )
                existing.extend(str(p.id) for p in got)
            if not existing:
                return 0
            for start, stop in chunks(len(existing), 1024):
                self.client.delete(
                    self.collection,
                    points_selector=models.PointIdsList(points=existing[start:stop]),
                    wait=True,
                )
        self._commit()
        return len(existing)

    def count(self, where: Where | None = None) -> int:
        w = normalise_where(where)
        if self._client is None or self.info() is None or matches_nothing(w):
            return 0
        with self._guard():
            return int(
                self.client.count(self.collection, count_filter=self._filter(w), exact=True).count
            )

    def search(self, queries: np.ndarray, k: int, where: Where | None = None) -> list[list[Hit]]:
        q = as_queries(queries, self._dim())
        w = normalise_where(where)
        if k <= 0 or matches_nothing(w) or not len(q):
            return [[] for _ in range(len(q))]
        flt = self._filter(w)
        rows = self._query(q, k, flt, exact=False)
        short = [i for i, row in enumerate(rows) if len(row) < k]
        if short:
            need = min(k, self.count(w))
            redo = [i for i in short if len(rows[i]) < need]
            if redo:  # the ANN came back short: a full scan in the server answers exactly
                for i, row in zip(redo, self._query(q[redo], k, flt, exact=True), strict=True):
                    rows[i] = row
        return rows

    def _query(
        self, q: np.ndarray, k: int, flt: models.Filter | None, *, exact: bool
    ) -> list[list[Hit]]:
        params = models.SearchParams(exact=True) if exact else None
        requests = [
            models.QueryRequest(
                query=vec.tolist(), limit=k, filter=flt, params=params, with_payload=True
            )
            for vec in q
        ]
        with self._guard():
            responses = self.client.query_batch_points(self.collection, requests=requests)
        out: list[list[Hit]] = []
        for resp in responses:
            row = []
            for p in resp.points:
                rid, payload = self._payload(p.payload)
                row.append(Hit(rid, float(p.score), payload))
            out.append(row)
        return out

    def fetch(self, ids: Sequence[str]) -> Batch:
        dim = self._dim()
        found: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
        with self._guard():
            for start, stop in chunks(len(ids), 1024):
                got = self.client.retrieve(
                    self.collection,
                    ids=[point_id(i) for i in ids[start:stop]],
                    with_payload=True,
                    with_vectors=True,
                )
                for p in got:
                    rid, payload = self._payload(p.payload)
                    found[rid] = (np.asarray(p.vector, dtype=np.float32), payload)
        keep = [i for i in ids if i in found]
        vectors = np.stack([found[i][0] for i in keep]) if keep else np.zeros((0, dim), np.float32)
        return Batch(ids=keep, vectors=vectors, payloads=[found[i][1] for i in keep])

    def iterate(
        self, batch_size: int = 4096, *, vectors: bool = True, where: Where | None = None
    ) -> Iterator[Batch]:
        w = normalise_where(where)
        if self._client is None or self.info() is None or matches_nothing(w):
            return
        flt = self._filter(w)
        offset: Any = None
        while True:
            with self._guard():
                points, offset = self.client.scroll(
                    self.collection,
                    scroll_filter=flt,
                    limit=batch_size,
                    offset=offset,
                    with_payload=True,
                    with_vectors=vectors,
                )
            if points:
                ids, payloads = [], []
                for p in points:
                    rid, payload = self._payload(p.payload)
                    ids.append(rid)
                    payloads.append(payload)
                vecs = np.asarray([p.vector for p in points], dtype=np.float32) if vectors else None
                yield Batch(ids=ids, vectors=vecs, payloads=payloads)
            if offset is None:
                return

    # --- life-cycle ----------------------------------------------------------------------------
    def refresh(self) -> bool:
        info = self.info()
        generation = info.generation if info else None
        changed = generation != self._seen_generation
        self._seen_generation = generation
        return changed

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if self.path is not None:
            _close_local(self.path)
        else:
            client.close()
