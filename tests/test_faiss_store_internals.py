"""What only the embedded FAISS store does: tiers, tail, compaction, crash safety, locks, checks."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from core.errors import IndexBusyError
from core.vectorstore import StoreInfo, faiss_ann
from core.vectorstore.faiss_store import FaissStore, Tuning
from tests.store_contract import DIM, FP, exact_top, make_records

CRASH_WRITER = Path(__file__).with_name("store_crash_writer.py")
SMALL = Tuning(exact_max=50, tail_max=10, mode="auto")


def _store(path: Path, n: int = 120, tuning: Tuning = SMALL, seed: int = 0):
    store = FaissStore(path, tuning=tuning)
    store.initialise(StoreInfo(fingerprint=FP, dim=DIM, model="test"))
    ids, vecs, payloads = make_records(n, seed=seed)
    store.upsert(ids, vecs, payloads)
    return store, ids, vecs, payloads


def _recall(store, ids, vecs, payloads, where=None, n=30) -> float:
    rng = np.random.default_rng(3)
    q = vecs[:n] + 0.3 * rng.standard_normal((n, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    got = store.search(q, 10, where=where)
    return float(
        np.mean(
            [
                len({h.id for h in row} & set(exact_top(ids, vecs, payloads, qq, 10, where))) / 10
                for qq, row in zip(q, got, strict=True)
            ]
        )
    )


def test_store_follows_size_from_exact_to_ivf_and_back(tmp_path: Path) -> None:
    store, ids, vecs, payloads = _store(tmp_path, n=2000)
    assert store.info().extra == {}
    assert store._state.ann is None  # not built until maintained
    report = store.maintain()
    assert report["ann"]["nlist"] >= 2 and report["ann"]["tuned_recall_at_10"] >= 0.98
    assert store._state.ann is not None and store._state.ann_rows == 2000
    assert _recall(store, ids, vecs, payloads) >= 0.95
    # a filter matching more rows than filter_exact_max goes through the IVF with a selector
    store.tuning = Tuning(exact_max=50, tail_max=10, filter_exact_max=10)
    where = {"family": "FamA"}
    for row in store.search(vecs[:5], 10, where=where):
        assert len(row) == 10 and all(h.payload["family"] == "FamA" for h in row)
    assert _recall(store, ids, vecs, payloads, where=where) >= 0.95
    # shrink below exact_max: the ANN is dropped, search is exact again
    store.delete(ids[40:])
    assert "compacted" in store.maintain()
    assert store._meta()["ann_file"] is None and store._state.ann is None
    assert _recall(store, ids[:40], vecs[:40], payloads[:40]) == 1.0


def test_appended_rows_are_searchable_before_any_rebuild(tmp_path: Path) -> None:
    store, _ids, _vecs, _payloads = _store(tmp_path, n=600)
    store.maintain()
    ann_file = store._meta()["ann_file"]
    new_ids, new_vecs, new_payloads = make_records(5, seed=7, prefix="tail")
    store.upsert(new_ids, new_vecs, new_payloads)
    assert store._meta()["ann_file"] == ann_file  # appending rewrote nothing
    for i, row in enumerate(store.search(new_vecs, 1)):
        assert row[0].id == new_ids[i]
    # past tail_max, maintenance folds the tail into a new ANN
    more = make_records(20, seed=8, prefix="more")
    store.upsert(*more)
    assert "ann" in store.maintain()
    assert store._meta()["ann_file"] != ann_file and store._state.ann_rows == 625


def test_append_writes_bytes_proportional_to_new_rows(tmp_path: Path) -> None:
    store, *_ = _store(tmp_path, n=600)
    store.maintain()
    sizes = {p.name: p.stat().st_size for p in tmp_path.iterdir() if p.suffix != ".sqlite-wal"}
    store.upsert(*make_records(1, seed=5, prefix="one"))
    after = {p.name: p.stat().st_size for p in tmp_path.iterdir() if p.suffix != ".sqlite-wal"}
    vec_file = store._meta()["vectors_file"]
    assert after[vec_file] - sizes[vec_file] == DIM * 4
    ann = store._meta()["ann_file"]
    assert after[ann] == sizes[ann]


def test_compaction_drops_tombstones_and_keeps_every_live_record(tmp_path: Path) -> None:
    store, ids, vecs, payloads = _store(tmp_path, n=200)
    store.delete(ids[:100])
    store.upsert([ids[150]], vecs[150:151] * -1, [payloads[150]])
    rows_before = store._meta()["rows"]
    report = store.maintain()
    assert report["compacted"]["rows"] == 100 < rows_before
    assert store.count() == 100
    top = store.search(-vecs[150], 1)[0][0]
    assert top.id == ids[150] and top.score == pytest.approx(1.0, abs=1e-4)
    assert store.verify()["bad_ids"] == []
    assert len(list(tmp_path.glob("vectors-*.f32"))) == 1


def test_verify_finds_flipped_bits_and_nan_rows(tmp_path: Path) -> None:
    store, ids, *_ = _store(tmp_path, n=50)
    path = tmp_path / store._meta()["vectors_file"]
    raw = bytearray(path.read_bytes())
    raw[3 * DIM * 4 + 5] ^= 0x10  # one flipped bit in row 3
    raw[7 * DIM * 4 : 8 * DIM * 4] = np.full(DIM, np.nan, np.float32).tobytes()
    path.write_bytes(bytes(raw))
    fresh = FaissStore(tmp_path, read_only=True)
    assert sorted(fresh.verify()["bad_ids"]) == sorted([ids[3], ids[7]])
    assert zlib.crc32(b"") == 0  # (sanity: CRC of nothing)


def _files(path: Path) -> dict:
    # SQLite's -wal/-shm sidecars are how WAL readers coordinate; the data files must not change
    return {
        p.name: (p.stat().st_size, p.stat().st_mtime_ns)
        for p in path.iterdir()
        if not p.name.endswith(("-wal", "-shm"))
    }


def test_read_only_open_touches_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, ids, vecs, _ = _store(tmp_path, n=60)
    store.maintain()
    store.close()
    before = _files(tmp_path)
    reader = FaissStore(tmp_path, read_only=True)
    assert reader.search(vecs[0], 1)[0][0].id == ids[0]
    reader.close()
    assert _files(tmp_path) == before
    # an unwritable directory (a read-only volume): opened immutable, still serves
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: m != os.W_OK and real_access(p, m))
    for side in tmp_path.glob("*-shm"):
        side.unlink()
    reader = FaissStore(tmp_path, read_only=True)
    assert reader.search(vecs[1], 1)[0][0].id == ids[1]
    reader.close()
    assert not list(tmp_path.glob("*-shm"))
    assert not (tmp_path / "missing").exists()
    FaissStore(tmp_path / "missing", read_only=True).close()
    assert not (tmp_path / "missing").exists()  # a mistyped directory is not created


def test_second_writer_process_is_refused_not_interleaved(tmp_path: Path) -> None:
    _store(tmp_path, n=10)[0].close()
    code = (
        "import sys; from core.vectorstore.faiss_store import FaissStore\n"
        f"s = FaissStore({str(tmp_path)!r})\n"
        "with s.writer():\n    print('locked', flush=True); sys.stdin.readline()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(IndexBusyError, match="Another process"), FaissStore(tmp_path).writer():
            pass
    finally:
        holder.communicate("\n", timeout=30)
    with FaissStore(tmp_path).writer():  # released: the next writer gets it
        pass


POINTS = {
    "append": ["append:written", "append:synced", "commit:before", "commit:after"],
    "delete": ["commit:before", "commit:after"],
    "compact": ["compact:written", "commit:before", "compact:committed"],
    "ann": ["ann:written", "commit:before", "commit:after"],
}


@pytest.mark.parametrize(
    ("action", "point"), [(a, p) for a, points in POINTS.items() for p in points]
)
def test_kill_at_each_step_leaves_old_or_new_state(tmp_path: Path, action: str, point: str) -> None:
    store, _ids, _vecs, _payloads = _store(tmp_path, n=120)
    if action == "ann":
        store.tuning = SMALL
    store.close()
    env = {**os.environ, "KONTROL_CRASH_AT": point}
    proc = subprocess.run(
        [sys.executable, str(CRASH_WRITER), str(tmp_path), action, "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr  # it really died at the named point
    reopened = FaissStore(tmp_path, tuning=SMALL)  # a writer open runs recovery
    allowed = {"append": {120, 140}, "delete": {120, 110}, "compact": {120, 72}, "ann": {120}}
    count = reopened.count()
    assert count in allowed[action]
    assert reopened.verify() == {"checked": count, "bad_ids": []}
    meta = reopened._meta()
    files = {p.name for p in tmp_path.iterdir() if p.name.startswith(("vectors-", "ann-"))}
    ann = [meta["ann_file"], faiss_ann.lists_file(meta["ann_file"])] if meta["ann_file"] else []
    assert files == {meta["vectors_file"], *ann}
    assert (tmp_path / meta["vectors_file"]).stat().st_size == meta["rows"] * DIM * 4
    live = [b for batch in reopened.iterate() for b in zip(batch.ids, batch.vectors, strict=True)]
    for id_, vec in live[:20]:
        assert reopened.search(vec, 1)[0][0].id == id_
    # and the store still takes writes
    reopened.upsert(*make_records(3, seed=42, prefix="after"))
    assert reopened.count() == count + 3


def test_filter_far_from_the_query_scans_the_lists_holding_it(tmp_path: Path) -> None:
    """A species filter on a photo of another animal: its matches are in lists far from the
    query; the store scans exactly the lists that hold them, so recall stays exact."""
    store, ids, vecs, payloads = _store(tmp_path, n=3000)
    store.maintain()
    assert store._state.row_list is not None and (store._state.row_list >= 0).all()
    store.tuning = Tuning(exact_max=50, tail_max=10, filter_exact_max=10)  # no exact shortcut
    calls = []
    real = store._filtered_lists
    store._filtered_lists = lambda *a, **kw: calls.append(1) or real(*a, **kw)
    where = {"species": "Genus2 species2"}
    queries = vecs[[i for i in range(60) if i % 4 == 0][:15]]  # species0 photos
    for q, row in zip(queries, store.search(queries, 10, where=where), strict=True):
        want = exact_top(ids, vecs, payloads, q, 10, where)
        assert len(row) == 10 and {h.id for h in row} == set(want)
    assert calls  # the list-aware path answered
