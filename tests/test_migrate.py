"""`migrate` copies a store into another backend without re-embedding (no FAISS needed here:
Qdrant local mode and Chroma are the two ends)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.vectorstore import StoreInfo, VectorStore
from core.vectorstore.migrate import MigrationError, migrate
from tests.store_contract import DIM, FP, make_records, open_spec


def _filled(spec: dict, n: int = 90) -> tuple[VectorStore, list[str], np.ndarray, list]:
    store = open_spec(spec)
    store.initialise(StoreInfo(fingerprint=FP, dim=DIM, model="test", extra={"root": "/photos"}))
    ids, vecs, payloads = make_records(n)
    store.upsert(ids, vecs, payloads)
    return store, ids, vecs, payloads


@pytest.fixture
def specs(tmp_path: Path) -> dict[str, dict]:
    return {
        "qdrant": {"store": "qdrant", "index_dir": str(tmp_path / "q"), "store_collection": "a"},
        "chroma": {"store": "chroma", "index_dir": str(tmp_path / "c"), "store_collection": "abc"},
        "qdrant2": {"store": "qdrant", "index_dir": str(tmp_path / "q2")},
    }


def test_qdrant_to_chroma_and_back_keeps_everything(specs) -> None:
    source, ids, vecs, payloads = _filled(specs["qdrant"])
    before = source.info()
    chroma = open_spec(specs["chroma"])
    back = open_spec(specs["qdrant2"])
    try:
        report = migrate(source, chroma, batch_size=16, verify_queries=12)
        assert (report.records, report.batches, report.target_count) == (90, 6, 90)
        assert report.queries == 12 and report.overlap >= 0.95
        info = chroma.check(FP, DIM)
        assert info.model == "test" and info.extra["root"] == "/photos"
        assert info.extra["migration"] == "complete"
        got = chroma.fetch([ids[5], ids[77]])
        np.testing.assert_allclose(got.vectors, vecs[[5, 77]], atol=1e-6)
        assert got.payloads == [payloads[5], payloads[77]]
        assert chroma.count({"family": "FamA"}) == source.count({"family": "FamA"})

        report2 = migrate(chroma, back, batch_size=50)
        assert report2.records == 90 and report2.overlap >= 0.95
        assert back.info().extra["migration"] == "complete"
        assert sorted(i for b in back.iterate(vectors=False) for i in b.ids) == sorted(ids)
        # the source was only read
        assert source.info() == before and source.count() == 90
    finally:
        for s in (source, chroma, back):
            s.close()


def test_a_failed_copy_leaves_the_target_incomplete_and_the_source_untouched(
    specs, monkeypatch
) -> None:
    source, *_ = _filled(specs["qdrant"])
    before = source.info()
    target = open_spec(specs["chroma"])
    calls = []
    real = type(target).upsert

    def failing_upsert(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(target), "upsert", failing_upsert)
    try:
        with pytest.raises(OSError, match="disk full"):
            migrate(source, target, batch_size=10)
        assert target.info().extra["migration"] == "incomplete"
        assert target.count() == 20
        assert source.info() == before and source.count() == 90
        monkeypatch.undo()
        with pytest.raises(MigrationError, match="reset=True"):
            migrate(source, target)  # a half-filled target is not silently mixed into
        report = migrate(source, target, reset=True)
        assert report.records == 90 and target.info().extra["migration"] == "complete"
    finally:
        source.close()
        target.close()


def test_an_unverifiable_copy_is_not_marked_complete(specs, monkeypatch) -> None:
    source, *_ = _filled(specs["qdrant"])
    target = open_spec(specs["qdrant2"])
    try:
        monkeypatch.setattr(
            type(target), "search", lambda self, q, k, where=None: [[] for _ in range(len(q))]
        )
        with pytest.raises(MigrationError, match="overlap"):
            migrate(source, target)
        assert target.info().extra["migration"] == "incomplete"
    finally:
        monkeypatch.undo()
        source.close()
        target.close()


def test_another_models_target_is_refused(specs) -> None:
    source, *_ = _filled(specs["qdrant"])
    target = open_spec(specs["chroma"])
    try:
        target.initialise(StoreInfo(fingerprint="other", dim=DIM))
        with pytest.raises(MigrationError, match="another model"):
            migrate(source, target)
        assert target.info().fingerprint == "other"
    finally:
        source.close()
        target.close()
