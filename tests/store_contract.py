"""The `VectorStore` contract: every backend runs these tests unchanged.

A backend's test module provides one fixture, `store_spec`: a JSON-able dict of settings
(`{"store": "faiss", "index_dir": ...}`) that `open_spec` turns into a store through the same
`open_store` path production uses, so a reader in another process can open it too. Then:

    from tests.store_contract import *  # noqa: F403

Behaviour a backend does not declare in its `capabilities` is skipped, and what it declares is
checked (a backend declaring `exact` must return the exact top-k).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.errors import IndexMismatchError, IndexMissingError, KontrolError
from core.settings import load_settings
from core.vectorstore import StoreInfo, VectorStore, matches, open_store

DIM = 16
FP = "fp-contract"
READER = Path(__file__).with_name("store_reader.py")


def open_spec(spec: dict[str, Any], *, read_only: bool = False) -> VectorStore:
    """Open the store a spec describes, the way the engine does."""
    return open_store(load_settings(**spec), read_only=read_only)


def make_records(n: int, seed: int = 0, prefix: str = "r") -> tuple[list[str], np.ndarray, list]:
    """n records in 4 species of 2 families; vectors clustered per species, L2-normalised."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, DIM))
    species = [f"Genus{i % 4} species{i % 4}" for i in range(n)]
    vecs = centres[np.arange(n) % 4] + 0.6 * rng.standard_normal((n, DIM))
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"{prefix}{seed}-{i:05d}" for i in range(n)]
    payloads = [
        {
            "path": f"{s.replace(' ', '_')}/{ids[i]}.jpg",
            "species": s,
            "genus": s.split()[0],
            "family": "FamA" if i % 4 < 2 else "FamB",
        }
        for i, s in enumerate(species)
    ]
    return ids, vecs, payloads


def exact_top(ids, vecs, payloads, query, k, where=None) -> list[str]:
    """Reference answer: brute force over the records that match `where`."""
    keep = [i for i, p in enumerate(payloads) if matches(p, where)]
    scores = vecs[keep] @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return [ids[keep[j]] for j in order]


@pytest.fixture
def store(store_spec: dict[str, Any]):
    s = open_spec(store_spec)
    yield s
    s.close()


@pytest.fixture
def filled(store: VectorStore):
    ids, vecs, payloads = make_records(120)
    store.initialise(StoreInfo(fingerprint=FP, dim=DIM, model="test"))
    with store.writer():
        store.upsert(ids, vecs, payloads)
        store.maintain()  # lets a backend build its search index (cheap when nothing to do)
    return store, ids, vecs, payloads


def test_new_store_has_no_info_and_check_says_run_index(store: VectorStore) -> None:
    assert store.info() is None
    with pytest.raises(IndexMissingError, match="kontrol index"):
        store.check(FP, DIM)


def test_info_round_trip_and_other_model_refused(store: VectorStore) -> None:
    store.initialise(StoreInfo(fingerprint=FP, dim=DIM, model="test", extra={"root": "/x"}))
    info = store.check(FP, DIM)
    assert (info.fingerprint, info.dim, info.model, info.extra["root"]) == (FP, DIM, "test", "/x")
    store.set_extra({"note": "n"})
    assert store.info().extra == {"root": "/x", "note": "n"}
    with pytest.raises(IndexMismatchError):
        store.check("other-model", DIM)
    with pytest.raises(IndexMismatchError):
        store.check(FP, DIM + 1)
    with pytest.raises(IndexMismatchError):
        store.initialise(StoreInfo(fingerprint="other-model", dim=DIM))
    store.initialise(StoreInfo(fingerprint="other-model", dim=DIM), reset=True)
    assert store.info().fingerprint == "other-model" and store.count() == 0


def test_empty_store_searches_to_nothing(store: VectorStore) -> None:
    store.initialise(StoreInfo(fingerprint=FP, dim=DIM))
    q = np.ones((2, DIM), np.float32) / 4
    assert store.search(q, 5) == [[], []]
    assert store.search(q, 5, where={"species": "x"}) == [[], []]


def test_each_record_finds_itself_first(filled) -> None:
    store, ids, vecs, payloads = filled
    assert store.count() == 120
    hits = store.search(vecs[:10], 3)
    for i, row in enumerate(hits):
        assert row[0].id == ids[i]
        assert row[0].score == pytest.approx(1.0, abs=1e-3)
        assert row[0].payload["species"] == payloads[i]["species"]
        assert row[0].payload["path"] == payloads[i]["path"]
        assert [h.score for h in row] == sorted((h.score for h in row), reverse=True)


def test_unfiltered_search_matches_brute_force(filled) -> None:
    store, ids, vecs, payloads = filled
    rng = np.random.default_rng(5)
    queries = vecs[:20] + 0.3 * rng.standard_normal((20, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    recall = []
    for q, row in zip(queries, store.search(queries, 10), strict=True):
        want = exact_top(ids, vecs, payloads, q, 10)
        assert len(row) == 10
        recall.append(len({h.id for h in row} & set(want)) / 10)
        ref = {i: float(vecs[ids.index(i)] @ q) for i in (h.id for h in row)}
        for h in row:  # scores are true cosines, not an approximation of them
            assert h.score == pytest.approx(ref[h.id], abs=2e-3)
    assert np.mean(recall) >= (1.0 if store.capabilities.exact else 0.95)


def test_k_larger_than_store_returns_everything(filled) -> None:
    store, _ids, vecs, _ = filled
    row = store.search(vecs[:1], 500)[0]
    assert len(row) == 120 and len({h.id for h in row}) == 120


def test_filter_returns_exactly_min_k_matches(filled) -> None:
    store, ids, vecs, payloads = filled
    # a rare species: 3 records among 123
    rare_ids, rare_vecs, rare_payloads = make_records(3, seed=9, prefix="rare")
    for p in rare_payloads:
        p.update(species="Rara avis", genus="Rara", family="FamC")
    store.upsert(rare_ids, rare_vecs, rare_payloads)
    all_ids, all_vecs = ids + rare_ids, np.concatenate([vecs, rare_vecs])
    all_payloads = payloads + rare_payloads
    for where, expect in (
        ({"species": "Rara avis"}, 3),
        ({"species": "Genus1 species1"}, 10),
        ({"family": "FamA"}, 10),
        ({"genus": ["Genus3", "Rara"]}, 10),
        ({"species": "Genus0 species0", "family": "FamB"}, 0),
        ({"species": "No such"}, 0),
    ):
        for q in all_vecs[[0, 5, 121]]:
            row = store.search(q, 10, where=where)[0]
            assert len(row) == expect, where
            assert all(matches(h.payload, where) for h in row)
            want = exact_top(all_ids, all_vecs, all_payloads, q, 10, where)
            assert len({h.id for h in row} & set(want)) >= 0.99 * len(want)
        assert store.count(where) == sum(matches(p, where) for p in all_payloads)


def test_upsert_replaces_a_record(filled) -> None:
    store, ids, vecs, payloads = filled
    new_vec = -vecs[7]
    store.upsert([ids[7]], new_vec[None], [{**payloads[7], "species": "Moved one"}])
    assert store.count() == 120
    top = store.search(new_vec, 1)[0][0]
    assert top.id == ids[7] and top.payload["species"] == "Moved one"
    assert store.search(vecs[7], 1)[0][0].id != ids[7] or store.search(vecs[7], 1)[0][0].score < 0
    assert store.count({"species": "Moved one"}) == 1
    got = store.fetch([ids[7]])
    np.testing.assert_allclose(got.vectors[0], new_vec, atol=1e-6)


def test_delete_removes_and_ignores_unknown(filled) -> None:
    store, ids, vecs, _ = filled
    assert store.delete([*ids[:5], "never-there"]) == 5
    assert store.count() == 115
    for row in store.search(vecs[:5], 10):
        assert not {h.id for h in row} & set(ids[:5])
    assert store.fetch(ids[:5]).ids == []
    assert store.delete(ids[:5]) == 0


def test_fetch_keeps_order_and_skips_unknown(filled) -> None:
    store, ids, vecs, payloads = filled
    got = store.fetch([ids[3], "nope", ids[1]])
    assert got.ids == [ids[3], ids[1]]
    np.testing.assert_allclose(got.vectors, vecs[[3, 1]], atol=1e-6)
    assert got.payloads[0]["path"] == payloads[3]["path"]


def test_iterate_and_values_cover_every_record(filled) -> None:
    store, ids, _vecs, _payloads = filled
    seen: list[str] = []
    for batch in store.iterate(batch_size=50):
        assert batch.vectors is not None and len(batch.vectors) == len(batch.ids)
        seen.extend(batch.ids)
    assert sorted(seen) == sorted(ids)
    only = [
        i
        for b in store.iterate(batch_size=7, vectors=False, where={"family": "FamB"})
        for i in b.ids
    ]
    assert len(only) == 60
    assert store.values("species") == {f"Genus{i} species{i}": 30 for i in range(4)}


def test_persistence_across_restart(store_spec, filled) -> None:
    store, _ids, vecs, _ = filled
    if not store.capabilities.persistent:
        pytest.skip("backend is not persistent")
    before = [h.id for h in store.search(vecs[0], 10)[0]]
    store.close()
    again = open_spec(store_spec, read_only=True)
    try:
        assert again.check(FP, DIM).model == "test"
        assert again.count() == 120
        assert [h.id for h in again.search(vecs[0], 10)[0]] == before
    finally:
        again.close()


def test_read_only_store_refuses_writes(store_spec, filled) -> None:
    _store, ids, vecs, payloads = filled
    reader = open_spec(store_spec, read_only=True)
    try:
        with pytest.raises(KontrolError):
            reader.upsert(ids[:1], vecs[:1], payloads[:1])
        with pytest.raises(KontrolError):
            reader.delete(ids[:1])
        assert reader.count() == 120
    finally:
        reader.close()


def test_reader_process_sees_each_commit_of_a_writer(store_spec, filled) -> None:
    """A reader in another process notices every committed batch without reopening."""
    store, *_ = filled
    if not store.capabilities.multi_process:
        pytest.skip("backend allows one process at a time")
    proc = subprocess.Popen(
        [sys.executable, str(READER), json.dumps(store_spec, default=str), "180"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "count 120"  # reader is up
        for step in range(3):
            new_ids, new_vecs, new_payloads = make_records(20, seed=100 + step, prefix="w")
            with store.writer():
                store.upsert(new_ids, new_vecs, new_payloads)
            # event-based: the reader prints each count it observes
            assert proc.stdout.readline().strip() == f"count {140 + 20 * step}"
    finally:
        proc.kill()
        proc.wait()
