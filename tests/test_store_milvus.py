"""The Milvus store runs the store contract against a real Milvus standalone server.

One server (PyPI `milvus` 2.3.5, the C++ binary) is started for this module on a free port of
127.0.0.1 with its data in a temporary directory, and stopped at the end; each test gets its own
collection. Authentication is on, so the contract runs with the `root:Milvus` token.

The contract and the cheap error tests run by default (about 60-85 s here, most of it Milvus
loading each new collection: ~3 s apiece); the extra tests that create collections or restart
the server are marked slow (`pytest -m slow`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from pymilvus import MilvusClient

from core.vectorstore import StoreInfo, StoreUnavailableError, matches
from core.vectorstore.milvus_store import MilvusStore, expression
from tests.milvus_server import TOKEN, MilvusTestServer, free_port, serving
from tests.store_contract import *  # noqa: F403
from tests.store_contract import DIM, FP, exact_top, make_records, open_spec


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusTestServer]:
    yield from serving(tmp_path_factory.mktemp("milvus"))


@pytest.fixture
def store_spec(milvus_server: MilvusTestServer) -> Iterator[dict]:
    if not milvus_server.running:  # a test below stops it; bring it back for the next
        milvus_server.start()
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield {
        "store": "milvus",
        "store_url": milvus_server.url,
        "store_api_key": TOKEN,
        "store_collection": name,
    }
    if milvus_server.running:
        client = MilvusClient(uri=milvus_server.url, token=TOKEN)
        if client.has_collection(name):
            client.drop_collection(name)
        client.close()


def test_filter_expressions_escape_quotes_and_backslashes() -> None:
    assert expression({"species": 'a "b" \\ c'}) == 'payload["species"] == "a \\"b\\" \\\\ c"'
    assert expression({"genus": ["x", "y"], "n": 3, "ok": True}) == (
        'payload["genus"] in ["x", "y"] and payload["n"] == 3 and payload["ok"] == true'
    )


@pytest.mark.slow
def test_odd_ids_and_values_round_trip_through_the_server(store_spec) -> None:
    store = open_spec(store_spec)
    try:
        store.initialise(StoreInfo(fingerprint=FP, dim=DIM))
        ids, vecs, payloads = make_records(8)
        ids[0] = 'üñï "quoted" \'id\' \\ ] or id != "'
        payloads[0]["species"] = 'Odd "species" \\ name ] or true'
        store.upsert(ids, vecs, payloads)
        row = store.search(vecs[0], 3, where={"species": payloads[0]["species"]})[0]
        assert [h.id for h in row] == [ids[0]]
        assert store.fetch([ids[0]]).ids == [ids[0]]
        assert store.delete([ids[0], ids[1]]) == 2 and store.count() == 6
    finally:
        store.close()


@pytest.mark.slow
def test_a_short_ann_answer_falls_back_to_an_exact_scan(store_spec, monkeypatch) -> None:
    store = open_spec(store_spec)
    try:
        store.initialise(StoreInfo(fingerprint=FP, dim=DIM))
        ids, vecs, payloads = make_records(40)
        store.upsert(ids, vecs, payloads)
        real = MilvusClient.search

        def short_search(self, *args, **kwargs):  # an HNSW that loses all but one hit
            return [hits[:1] for hits in real(self, *args, **kwargs)]

        monkeypatch.setattr(MilvusClient, "search", short_search)
        where = {"family": "FamB"}
        row = store.search(vecs[3], 7, where=where)[0]
        assert [h.id for h in row] == exact_top(ids, vecs, payloads, vecs[3], 7, where)
        assert all(matches(h.payload, where) for h in row)
    finally:
        store.close()


def test_unreachable_url_is_one_clear_sentence() -> None:
    key = "root:not-the-password-42"
    began = time.monotonic()
    with pytest.raises(StoreUnavailableError) as err:
        open_spec(
            {
                "store": "milvus",
                "store_url": f"http://127.0.0.1:{free_port()}",
                "store_api_key": key,
            }
        )
    text = str(err.value)
    assert "cannot be reached" in text and "KONTROL_STORE_URL" in text
    assert "not-the-password-42" not in text and "not-the-password-42" not in repr(err.value)
    assert time.monotonic() - began < 30


def test_wrong_token_is_refused_without_echoing_it(milvus_server) -> None:
    key = "root:wrong-password-123"
    with pytest.raises(StoreUnavailableError) as err:
        open_spec({"store": "milvus", "store_url": milvus_server.url, "store_api_key": key})
    assert "credentials" in str(err.value) and "KONTROL_STORE_API_KEY" in str(err.value)
    assert "wrong-password-123" not in str(err.value)


def test_missing_url_is_a_config_error() -> None:
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="KONTROL_STORE_URL"):
        open_spec({"store": "milvus"})


@pytest.mark.slow
def test_store_class_is_the_registered_one(store_spec) -> None:
    store = open_spec(store_spec)
    try:
        assert isinstance(store, MilvusStore) and "t_" in store.describe()
        assert TOKEN not in repr(store)
    finally:
        store.close()


def _open_when_ready(spec: dict, deadline_s: float = 120.0):
    """A restarted Milvus answers its health check before it serves the collections again
    (it reloads them: ~25 s here); until then opening is a `StoreUnavailableError`."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            return open_spec(spec, read_only=True)
        except StoreUnavailableError:
            if time.monotonic() > end:
                raise
            time.sleep(1)


@pytest.mark.slow
def test_records_survive_a_server_restart(milvus_server: MilvusTestServer, store_spec) -> None:
    store = open_spec(store_spec)
    try:
        store.initialise(StoreInfo(fingerprint=FP, dim=DIM, model="test"))
        ids, vecs, payloads = make_records(30)
        store.upsert(ids, vecs, payloads)
        before = [h.id for h in store.search(vecs[0], 5)[0]]
    finally:
        store.close()
    milvus_server.stop()
    milvus_server.start()  # same ports, same data directory
    again = _open_when_ready(store_spec)
    try:
        assert again.check(FP, DIM).model == "test"
        assert again.count() == 30
        assert [h.id for h in again.search(vecs[0], 5)[0]] == before
        np.testing.assert_allclose(again.fetch(ids[:2]).vectors, vecs[:2], atol=1e-6)
    finally:
        again.close()


def test_server_gone_mid_run_is_one_clear_sentence(
    milvus_server: MilvusTestServer, store_spec
) -> None:
    """Last in the file: it kills the module's server (a later test would start it again)."""
    store = open_spec(store_spec)
    try:
        assert store.info() is None and store.count() == 0
        milvus_server.stop(grace_s=0)  # SIGKILL: gone without a goodbye
        began = time.monotonic()
        queries = np.ones((1, DIM), np.float32) / 4
        for call in (
            lambda: store.search(queries, 5),
            lambda: store.initialise(StoreInfo(fingerprint=FP, dim=DIM)),
            lambda: store.count(),
            lambda: store.refresh(),
        ):
            with pytest.raises(StoreUnavailableError, match="cannot be reached") as err:
                call()
            assert "\n" not in str(err.value) and TOKEN not in str(err.value)
        assert time.monotonic() - began < 60
    finally:
        store.close()
