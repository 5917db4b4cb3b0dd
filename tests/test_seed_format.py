"""Atomic, validated persistence of the index (store) and the vector backends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core import seed_format as store
from core.errors import IndexCorruptError, IndexMismatchError, IndexMissingError
from core.index import create_index

REPO = Path(__file__).resolve().parents[1]


def _data(n: int, dim: int = 8, seed: int = 0, kind: str = "flat") -> store.IndexData:
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    index = create_index(kind, dim)
    index.add(emb)
    images = [
        {
            "id": i,
            "uuid": f"u{i}",
            "path": f"S/u{i}.jpg",
            "scientific_name": "S",
            "embedding_index": i,
        }
        for i in range(n)
    ]
    return store.IndexData(images, emb, index, {"model": "m", "model_fingerprint": "fp"})


@pytest.mark.parametrize("kind", ["flat", "flat_fp16", "hnsw"])
def test_roundtrip(tmp_path: Path, kind: str) -> None:
    data = _data(50, kind=kind)
    store.save(tmp_path, data)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted(
        store.FILES
    )
    loaded = store.load(tmp_path, expected_fingerprint="fp", expected_dim=8)
    assert loaded.meta["total_images"] == 50 and loaded.meta["index_type"] == kind
    np.testing.assert_array_equal(np.asarray(loaded.embeddings), data.embeddings)
    _, ids = loaded.index.search(data.embeddings[:3], 1)
    assert ids[:, 0].tolist() == [0, 1, 2]
    doc = json.loads((tmp_path / store.METADATA_FILE).read_text())
    assert set(doc["images"][0]) >= {"id", "uuid", "path", "scientific_name", "embedding_index"}
    assert doc["metadata"]["embedding_dim"] == 8


def test_missing_and_mismatch(tmp_path: Path) -> None:
    with pytest.raises(IndexMissingError, match="not indexed yet"):
        store.load(tmp_path)
    store.save(tmp_path, _data(5))
    with pytest.raises(IndexMismatchError, match="rebuild"):
        store.load(tmp_path, expected_fingerprint="other-model")
    with pytest.raises(IndexMismatchError):
        store.load(tmp_path, expected_dim=1280)


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: (d / store.METADATA_FILE).write_text("{not json"),
        lambda d: (d / store.INDEX_FILE).write_bytes(b"garbage" * 10),
        lambda d: (d / store.EMBEDDINGS_FILE).write_bytes(b"\x93NUMPY broken"),
        lambda d: (d / store.EMBEDDINGS_FILE).unlink(),
    ],
)
def test_damaged_index_is_refused_clearly(tmp_path: Path, damage) -> None:
    store.save(tmp_path, _data(5))
    damage(tmp_path)
    with pytest.raises(IndexCorruptError, match="kontrol index"):
        store.load(tmp_path)


def test_inconsistent_data_is_never_written(tmp_path: Path) -> None:
    data = _data(5)
    data.images.pop()
    with pytest.raises(ValueError):
        store.save(tmp_path, data)
    assert not store.exists(tmp_path)


def test_interrupted_roll_forward_completes_new_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.save(tmp_path, _data(5, seed=1))
    real_replace = os.replace
    calls = {"n": 0}

    def crash_after_first(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill between file moves")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        store.save(tmp_path, _data(9, seed=2))
    monkeypatch.setattr(os, "replace", real_replace)
    # On disk right now: one new file moved, two still pending. The next reader rolls forward.
    loaded = store.load(tmp_path)
    assert len(loaded.images) == 9


_WRITER = """
import sys
sys.path.insert(0, {repo!r})
from tests.test_seed_format import _data
from core import seed_format
seed_format.save({d!r}, _data(2000, dim=256, seed=1))
"""

SAVE_POINTS = [
    "seed:staged",
    "seed:committed",
    "seed:moved-embeddings.npy",
    "seed:moved-faiss_index.bin",
    "seed:moved-image_metadata.json",
]


@pytest.mark.parametrize("point", SAVE_POINTS)
def test_kill_during_save_leaves_old_or_new_never_a_mix(tmp_path: Path, point: str) -> None:
    """Killed at each named step of a save (not after a random sleep): old or new, never a mix."""
    store.save(tmp_path, _data(1000, dim=256))
    proc = subprocess.run(
        [sys.executable, "-c", _WRITER.format(repo=str(REPO), d=str(tmp_path))],
        env={**os.environ, "KONTROL_CRASH_AT": point},
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL  # it died exactly there
    loaded = store.load(tmp_path, mmap=False)
    n = len(loaded.images)
    assert n == (1000 if point == "seed:staged" else 2000)
    assert loaded.embeddings.shape == (n, 256) and loaded.index.ntotal == n
    # rows agree with the generation named by the metadata: nearest neighbour of a row is itself
    _, ids = loaded.index.search(np.asarray(loaded.embeddings[:5]), 1)
    assert ids[:, 0].tolist() == list(range(5))
    assert not list(tmp_path.glob(".staging-*")) and not (tmp_path / ".pending").exists()


def test_subset_search_returns_exactly_k(tmp_path: Path) -> None:
    data = _data(500, kind="flat_fp16")
    subset = np.arange(0, 500, 50)  # 10 rows
    scores, ids = data.index.search(data.embeddings[:1], 7, subset=subset)
    assert len(ids[0]) == 7 and set(ids[0]) <= set(subset.tolist())
    assert np.all(np.diff(scores[0]) <= 1e-6)
