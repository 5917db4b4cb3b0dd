"""The Chroma store (embedded PersistentClient) runs the store contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.vectorstore import StoreInfo
from tests.store_contract import *  # noqa: F403
from tests.store_contract import DIM, FP, make_records, open_spec


@pytest.fixture
def store_spec(tmp_path: Path) -> dict:
    return {"store": "chroma", "index_dir": str(tmp_path / "idx"), "store_collection": "photos"}


def test_payload_round_trips_whole_and_filters_on_odd_values(store_spec) -> None:
    store = open_spec(store_spec)
    try:
        store.initialise(StoreInfo(fingerprint=FP, dim=DIM))
        ids, vecs, payloads = make_records(8)
        payloads[0].update(
            species='Odd "species" \\ name', tags=["a", "b"], exif={"iso": 100}, note=None
        )
        store.upsert(ids, vecs, payloads)
        row = store.search(vecs[0], 3, where={"species": payloads[0]["species"]})[0]
        assert [h.id for h in row] == [ids[0]]
        assert row[0].payload == payloads[0]
        assert store.fetch([ids[0]]).payloads == [payloads[0]]
    finally:
        store.close()


def test_read_only_open_of_a_missing_store_creates_nothing(tmp_path: Path) -> None:
    spec = {"store": "chroma", "index_dir": str(tmp_path / "none")}
    store = open_spec(spec, read_only=True)
    assert store.info() is None and store.count() == 0
    assert not (tmp_path / "none").exists()
    store.close()


def test_a_short_hnsw_answer_falls_back_to_an_exact_scan(store_spec, monkeypatch) -> None:
    from chromadb.api.models.Collection import Collection

    from core.vectorstore import matches
    from tests.store_contract import exact_top

    store = open_spec(store_spec)
    try:
        store.initialise(StoreInfo(fingerprint=FP, dim=DIM))
        ids, vecs, payloads = make_records(40)
        store.upsert(ids, vecs, payloads)
        real = Collection.query

        def short_query(self, *args, **kwargs):  # an ANN that loses all but one hit
            res = real(self, *args, **kwargs)
            for key in ("ids", "metadatas", "distances"):
                res[key] = [row[:1] for row in res[key]]
            return res

        monkeypatch.setattr(Collection, "query", short_query)
        where = {"family": "FamA"}
        row = store.search(vecs[3], 7, where=where)[0]
        assert [h.id for h in row] == exact_top(ids, vecs, payloads, vecs[3], 7, where)
        assert all(matches(h.payload, where) for h in row)
        assert len(store.search(vecs[3], 50)[0]) == 40
    finally:
        store.close()
