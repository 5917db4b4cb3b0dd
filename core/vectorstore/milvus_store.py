"""Milvus as the vector store: a Milvus server (standalone or distributed) by URL.

`KONTROL_STORE=milvus`, `KONTROL_STORE_URL=http://host:19530`, and `KONTROL_STORE_API_KEY` where
the server checks one (a `user:password` token or an API key; never logged).

Records: a collection with `id` VARCHAR(512) primary key (the photo id itself), `vector`
FLOAT_VECTOR(dim) under an HNSW index with inner-product metric (vectors are L2-normalised, so
the returned distance *is* the cosine similarity; approximate, so `exact=False`) and `payload`
JSON. `where` becomes a boolean expression on the JSON field, e.g.
`payload["species"] == "Felis catus" and payload["family"] in ["Felidae", "Canidae"]`, with
every string literal JSON-escaped (quotes, backslashes). A search that returns fewer than
min(k, count(where)) hits is answered again exactly: the matching vectors are fetched and ranked
by brute force, so a filtered search is never short.

`StoreInfo` is a JSON collection property (`kontrol.store_info`, set with AlterCollection), so it
lives in the server's metadata with the collection and is read back without any consistency
wait; its `generation` changes with every write. Reads use Session consistency (a store sees its
own writes at once, in milliseconds); when `refresh()` sees a new generation written by another
process, and when a store is opened, one Strong query waits until the server has applied every
write up to that moment, so the store then sees each committed write. (Strong consistency on
every call cost 0.2-0.8 s per search on the test server: it waits for the next time tick.)

Client API used, the subset tested against the real Milvus 2.3.5 standalone server (PyPI
`milvus`) with pymilvus 3.0.2 (`MilvusClient` only, no ORM): `MilvusClient(uri, token,
timeout)`, `create_schema`/`add_field`, `prepare_index_params`/`add_index`, `create_collection(
schema, index_params, consistency_level)`, `has_collection`, `drop_collection`, `get_load_state`,
`load_collection`, `describe_collection` / `alter_collection_properties`, `upsert`,
`delete(filter)`, `query(filter, output_fields incl. "count(*)")`, `query_iterator`,
`search(filter, search_params)`, `close`. The 2.3-era pymilvus (2.3.x) cannot
share an environment with this project (see docs/deploy.md), and this subset does not need it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from core.errors import ConfigError, KontrolError
from core.vectorstore._common import (
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
    public_url,
    scrub,
)
from core.vectorstore.base import (
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

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 512
INFO_KEY = "kontrol.store_info"
WRITE_BATCH = 500
#: Milvus caps limit (and offset + limit) of one search or query at 16384.
MAX_LIMIT = 16384
HNSW_BUILD = {"M": 16, "efConstruction": 200}
EF_MIN = 64
#: ef for filtered searches: a filter prunes the graph walk, so it needs a wider beam.
EF_FILTERED = 256
#: A filter matching at most this many records is ranked exactly (fetching them costs a round
#: trip per 1,000 or so, so only small filters; measured recall with the HNSW built: 0.96).
MILVUS_FILTER_EXACT_MAX = 256
#: How long `maintain()` waits for the server to finish building the index.
INDEX_WAIT_S = 900.0
STRONG = "Strong"
SESSION = "Session"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
#: Fragments of pymilvus/gRPC messages that mean "cannot reach the server".
_UNREACHABLE = ("fail connecting", "unavailable", "deadline", "connection refused", "timed out")
_AUTH = ("unauthenticated", "auth check failure", "credential", "permission denied")


def literal(value: Any) -> str:
    """A Milvus expression literal: JSON-escaped string, true/false, or an integer."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    raise ValueError(f"cannot use {value!r} in a Milvus filter")


def expression(where: Mapping[str, Any] | None) -> str:
    """The boolean expression of a normalised `where` on the JSON `payload` field."""
    if not where:
        return ""
    terms = []
    for key, wanted in where.items():
        field = f"payload[{literal(str(key))}]"
        if isinstance(wanted, list):
            terms.append(f"{field} in [{', '.join(literal(v) for v in wanted)}]")
        else:
            terms.append(f"{field} == {literal(wanted)}")
    return " and ".join(terms)


def _ids_expr(ids: Sequence[str]) -> str:
    return f"id in [{', '.join(literal(i) for i in ids)}]"


def _failure_kind(exc: BaseException) -> str | None:
    """'auth', 'unreachable' or None (another error), from the exception and its causes."""
    seen: set[int] = set()
    texts = []
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, grpc.RpcError) and callable(getattr(node, "code", None)):
            code = node.code()
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                return "auth"
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return "unreachable"
        if isinstance(node, OSError | TimeoutError):
            return "unreachable"
        texts.append(str(getattr(node, "message", "") or node).lower())
        node = node.__cause__ or node.__context__
    text = " ".join(texts)
    if any(part in text for part in _AUTH):
        return "auth"
    if any(part in text for part in _UNREACHABLE):
        return "unreachable"
    return None


def _reason(exc: BaseException) -> str:
    """A one-line reason: the gRPC status of the first RPC error in the chain, else the text."""
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, grpc.RpcError) and callable(getattr(node, "code", None)):
            details = node.details() if callable(getattr(node, "details", None)) else ""
            return f"{node.code().name}: {details}"[:200]
        node = node.__cause__ or node.__context__
    return " ".join(str(getattr(exc, "message", "") or exc).split())[:200]


class MilvusStore(InfoStoreMixin, VectorStore):
    """See the module docstring."""

    backend = "milvus"
    capabilities = Capabilities(exact=False, filters=True, persistent=True, multi_process=True)

    def __init__(
        self,
        url: str,
        *,
        collection: str = "kontrol",
        token: str | None = None,
        read_only: bool = False,
        timeout: float = 10.0,
    ) -> None:
        if not _NAME.match(collection):
            raise ConfigError(
                f"Invalid Milvus collection name {collection!r} (KONTROL_STORE_COLLECTION): "
                "letters, digits and underscores, starting with a letter or underscore."
            )
        self.url = url
        self.collection = collection
        self.read_only = read_only
        self.timeout = timeout
        self._token = token
        self._client: MilvusClient | None = None
        with self._guard():
            self._client = MilvusClient(uri=url, token=token or "", timeout=timeout)
            if self._ensure_loaded(self.collection):
                self._barrier()
        info = self.info()
        self._seen_generation = info.generation if info else None

    @classmethod
    def from_settings(cls, settings: Settings, *, read_only: bool = False) -> MilvusStore:
        if not settings.store_url:
            raise ConfigError(
                "The milvus store needs a server URL: set KONTROL_STORE_URL "
                "(e.g. http://127.0.0.1:19530)."
            )
        key = settings.store_api_key.get_secret_value() if settings.store_api_key else None
        return cls(
            settings.store_url,
            collection=settings.store_collection,
            token=key,
            read_only=read_only,
        )

    def describe(self) -> str:
        return f"Milvus collection {self.collection!r} at {public_url(self.url)}"

    # --- plumbing ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Connection and authentication failures become one `StoreUnavailableError` sentence."""
        try:
            yield
        except KontrolError:
            raise
        except (MilvusException, grpc.RpcError, OSError, TimeoutError) as exc:
            kind = _failure_kind(exc)
            if kind == "auth":
                raise StoreUnavailableError(
                    f"The Milvus server refused the credentials for {self.describe()}; "
                    "check KONTROL_STORE_API_KEY."
                ) from None
            if kind == "unreachable":
                reason = scrub(_reason(exc), self._token)
                raise StoreUnavailableError(
                    f"{self.describe()} cannot be reached ({reason}); check KONTROL_STORE_URL "
                    "and that the server is running."
                ) from None
            raise

    @property
    def client(self) -> MilvusClient:
        if self._client is None:
            raise StoreUnavailableError(f"{self.describe()} is closed.")
        return self._client

    def _ensure_loaded(self, name: str) -> bool:
        """Collections must be loaded to be searched (a restarted server may not have them).
        False when the collection does not exist."""
        if not self.client.has_collection(name, timeout=self.timeout):
            return False
        state = self.client.get_load_state(name, timeout=self.timeout).get("state")
        if "Loaded" not in str(state):
            self.client.load_collection(name, timeout=self.timeout)
        return True

    def _barrier(self) -> None:
        """One Strong query: afterwards every write committed before it is visible here."""
        with self._guard():
            self.client.query(
                self.collection,
                filter="",
                output_fields=["count(*)"],
                consistency_level=STRONG,
                timeout=self.timeout,
            )

    def _create(self, name: str, dim: int, index_type: str, params: dict[str, Any]) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_LENGTH)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("payload", DataType.JSON)
        index = self.client.prepare_index_params()
        index.add_index(field_name="vector", index_type=index_type, metric_type="IP", params=params)
        self.client.create_collection(
            name,
            schema=schema,
            index_params=index,
            consistency_level=SESSION,
            timeout=self.timeout,
        )
        self._ensure_loaded(name)

    def _write_info(self, info: StoreInfo) -> None:
        with self._guard():
            self.client.alter_collection_properties(
                self.collection, properties={INFO_KEY: info_to_json(info)}, timeout=self.timeout
            )
        self._seen_generation = info.generation

    def _commit(self) -> None:
        """After a write: wait until the server applied it (so every reader sees it), then bump
        the generation so readers elsewhere notice."""
        self._barrier()
        self._bump_generation()

    def _query(self, name: str, expr: str, fields: list[str], limit: int | None = None) -> list:
        kwargs: dict[str, Any] = {"limit": limit} if limit else {}
        with self._guard():
            return list(
                self.client.query(
                    name,
                    filter=expr,
                    output_fields=fields,
                    consistency_level=SESSION,
                    timeout=self.timeout,
                    **kwargs,
                )
            )

    # --- what the store was built with ---------------------------------------------------------
    def info(self) -> StoreInfo | None:
        with self._guard():
            if not self.client.has_collection(self.collection, timeout=self.timeout):
                return None
            described = self.client.describe_collection(self.collection, timeout=self.timeout)
        properties = described.get("properties") or {}
        if isinstance(properties, list):  # older clients return key/value pairs
            properties = {p["key"]: p["value"] for p in properties}
        text = properties.get(INFO_KEY)
        return info_from_json(text) if text else None

    def initialise(self, info: StoreInfo, *, reset: bool = False) -> None:
        self._writable()
        current = self.info()
        if current is not None and not reset:
            if (current.fingerprint, current.dim) != (info.fingerprint, info.dim):
                raise mismatch(self.describe(), current, info)
            return
        with self._guard():
            if self.client.has_collection(self.collection, timeout=self.timeout):
                self.client.drop_collection(self.collection, timeout=self.timeout)
            self._create(self.collection, int(info.dim), "HNSW", dict(HNSW_BUILD))
        self._write_info(replace(info, generation=new_generation()))

    # --- records -------------------------------------------------------------------------------
    def upsert(
        self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[Mapping[str, Any]]
    ) -> None:
        self._writable()
        vecs = check_records(ids, vectors, payloads, self._dim())
        for i in ids:
            if len(i.encode()) > MAX_ID_LENGTH:
                raise ValueError(f"record id longer than {MAX_ID_LENGTH} bytes: {i[:40]!r}...")
        if not len(ids):
            return
        with self._guard():
            for start, stop in chunks(len(ids), WRITE_BATCH):
                rows = [
                    {"id": ids[i], "vector": vecs[i].tolist(), "payload": dict(payloads[i])}
                    for i in range(start, stop)
                ]
                self.client.upsert(self.collection, rows, timeout=self.timeout)
        self._commit()

    def _existing(self, ids: Sequence[str]) -> list[str]:
        found: list[str] = []
        for start, stop in chunks(len(ids), WRITE_BATCH):
            part = ids[start:stop]
            rows = self._query(self.collection, _ids_expr(part), ["id"], limit=len(part))
            found.extend(r["id"] for r in rows)
        return found

    def delete(self, ids: Sequence[str]) -> int:
        self._writable()
        self._dim()
        existing = self._existing(list(dict.fromkeys(ids)))
        if not existing:
            return 0
        with self._guard():
            for start, stop in chunks(len(existing), WRITE_BATCH):
                self.client.delete(  # ids= would build an unescaped expression
                    self.collection, filter=_ids_expr(existing[start:stop]), timeout=self.timeout
                )
        self._commit()
        return len(existing)

    def count(self, where: Where | None = None) -> int:
        w = normalise_where(where)
        if self.info() is None or matches_nothing(w):
            return 0
        rows = self._query(self.collection, expression(w), ["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def maintain(self, *, force: bool = False) -> dict[str, Any]:
        """Flush, then wait until the server has indexed every row: until then Milvus searches
        the new segments without the HNSW (measured: filtered recall@10 about 0.5 at 100k)."""
        if self.read_only:
            return {}
        began = time.monotonic()
        with self._guard():
            self.client.flush(self.collection, timeout=self.timeout)
        state: dict[str, Any] = {}
        while True:
            with self._guard():
                state = dict(
                    self.client.describe_index(self.collection, "vector", timeout=self.timeout)
                )
            total, indexed = state.get("total_rows"), state.get("indexed_rows")
            pending = state.get("pending_index_rows") or 0
            if total is None or indexed is None or (indexed >= total and not pending):
                break
            if time.monotonic() - began > INDEX_WAIT_S:
                log.warning(
                    "Milvus is still indexing %s of %s rows; searches run meanwhile.",
                    total - indexed,
                    total,
                )
                break
            time.sleep(1.0)
        return {
            "indexed_rows": state.get("indexed_rows"),
            "total_rows": state.get("total_rows"),
            "seconds": round(time.monotonic() - began, 2),
        }

    def search(self, queries: np.ndarray, k: int, where: Where | None = None) -> list[list[Hit]]:
        q = as_queries(queries, self._dim())
        w = normalise_where(where)
        if k <= 0 or matches_nothing(w) or not len(q):
            return [[] for _ in range(len(q))]
        if w and self.count(w) <= MILVUS_FILTER_EXACT_MAX:
            return self._exact(q, k, w)  # a small filter: exact
        limit = min(k, MAX_LIMIT)
        with self._guard():
            res = self.client.search(
                self.collection,
                data=q.tolist(),
                limit=limit,
                filter=expression(w),
                output_fields=["payload"],
                search_params={
                    "metric_type": "IP",
                    "params": {"ef": max(EF_FILTERED if w else EF_MIN, limit)},
                },
                consistency_level=SESSION,
                timeout=self.timeout,
            )
        rows = [
            [Hit(str(h["id"]), float(h["distance"]), dict(h["entity"]["payload"])) for h in hits]
            for hits in res
        ]
        short = [i for i, row in enumerate(rows) if len(row) < k]
        if short:
            need = min(k, self.count(w))
            redo = [i for i in short if len(rows[i]) < need]
            if redo:  # the HNSW came back short (or k > 16384): rank the matches exactly
                for i, row in zip(redo, self._exact(q[redo], k, w), strict=True):
                    rows[i] = row
        return rows

    def _exact(self, q: np.ndarray, k: int, where: Mapping[str, Any] | None) -> list[list[Hit]]:
        return exact_search(self, q, k, where)

    def fetch(self, ids: Sequence[str]) -> Batch:
        dim = self._dim()
        found: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
        wanted = list(dict.fromkeys(ids))
        for start, stop in chunks(len(wanted), WRITE_BATCH):
            part = wanted[start:stop]
            rows = self._query(
                self.collection, _ids_expr(part), ["id", "vector", "payload"], limit=len(part)
            )
            for r in rows:
                found[r["id"]] = (np.asarray(r["vector"], dtype=np.float32), dict(r["payload"]))
        keep = [i for i in ids if i in found]
        vectors = np.stack([found[i][0] for i in keep]) if keep else np.zeros((0, dim), np.float32)
        return Batch(ids=keep, vectors=vectors, payloads=[found[i][1] for i in keep])

    def iterate(
        self, batch_size: int = 4096, *, vectors: bool = True, where: Where | None = None
    ) -> Iterator[Batch]:
        w = normalise_where(where)
        if self.info() is None or matches_nothing(w):
            return
        fields = ["id", "payload", "vector"] if vectors else ["id", "payload"]
        with self._guard():
            it = self.client.query_iterator(
                self.collection,
                batch_size=max(1, min(batch_size, MAX_LIMIT)),
                filter=expression(w),
                output_fields=fields,
                consistency_level=SESSION,
                timeout=self.timeout,
            )
        try:
            while True:
                with self._guard():
                    rows = it.next()
                if not rows:
                    return
                yield Batch(
                    ids=[r["id"] for r in rows],
                    vectors=(
                        np.asarray([r["vector"] for r in rows], dtype=np.float32)
                        if vectors
                        else None
                    ),
                    payloads=[dict(r["payload"]) for r in rows],
                )
        finally:
            it.close()

    # --- life-cycle ----------------------------------------------------------------------------
    def refresh(self) -> bool:
        info = self.info()
        generation = info.generation if info else None
        changed = generation != self._seen_generation
        self._seen_generation = generation
        if changed and info is not None:
            self._barrier()
        return changed

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
