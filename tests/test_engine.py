"""Indexing, incremental updates, search and classification through the engine API."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from core.engine import Engine
from core.errors import IndexBusyError, IndexMissingError, UnknownSpeciesError
from core.settings import Settings
from tests.helpers import TinyEmbedder, make_collection, make_image


def _engine(settings: Settings, embedder: TinyEmbedder | None = None) -> Engine:
    return Engine(settings, embedder=embedder or TinyEmbedder())


def test_index_and_find_similar(tiny_settings: Settings) -> None:
    engine = _engine(tiny_settings)
    report = engine.reindex()
    assert (report.total, report.added, report.unchanged, report.removed) == (13, 13, 0, 0)
    assert report.full_rebuild and not report.skipped
    path = next(Path(tiny_settings.images_dir, "Vulpes_vulpes").glob("*.jpg"))
    hits = engine.find_similar(Image.open(path), top_k=5)
    assert len(hits) == 5
    assert hits[0]["image_path"] == str(path) and hits[0]["similarity"] > 0.999
    assert hits[0]["class"] == "Vulpes vulpes" and hits[0]["uuid"] == path.stem
    sims = [h["similarity"] for h in hits]
    assert sims == sorted(sims, reverse=True)
    assert set(hits[0]) >= {"image_path", "similarity", "class", "uuid"}


def test_species_filter_returns_exactly_k(tiny_settings: Settings) -> None:
    engine = _engine(tiny_settings)
    engine.reindex()
    query = make_image(999)
    hits = engine.find_similar(query, top_k=3, species="canis_LUPUS")
    assert len(hits) == 3 and {h["class"] for h in hits} == {"Canis lupus"}
    # fewer photos than k: all of them, no padding
    assert len(engine.find_similar(query, top_k=10, species="Ursus arctos")) == 1
    with pytest.raises(UnknownSpeciesError) as err:
        engine.find_similar(query, species="Canis lupis")
    assert "Canis lupus" in err.value.suggestions


def test_incremental_reindex(tiny_settings: Settings) -> None:
    embedder = TinyEmbedder()
    engine = _engine(tiny_settings, embedder)
    engine.reindex()
    root = Path(tiny_settings.images_dir)
    # add one, change one, delete one
    make_collection(root, {"Lynx_lynx": 1}, seed=7)
    changed = sorted((root / "Canis_lupus").glob("*.jpg"))[0]
    make_image(4242).save(changed)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    deleted = sorted((root / "Felis_catus").glob("*.jpg"))[0]
    deleted.unlink()
    embedder.embedded = 0
    report = engine.reindex()
    assert (report.added, report.removed, report.unchanged, report.total) == (2, 1, 11, 13)
    assert embedder.embedded == 2 and not report.full_rebuild
    assert engine.stats()["species_count"] == 5
    hits = engine.find_similar(Image.open(changed), top_k=1)
    assert hits[0]["path"].endswith(changed.name) and hits[0]["similarity"] > 0.999
    assert all(h["uuid"] != deleted.stem for h in engine.find_similar(make_image(1), top_k=13))


def test_model_change_forces_full_rebuild(tiny_settings: Settings) -> None:
    _engine(tiny_settings, TinyEmbedder("v1")).reindex()
    other = TinyEmbedder("v2")
    engine = _engine(tiny_settings, other)
    with pytest.raises(Exception, match="rebuild"):
        engine.find_similar(make_image(1))
    report = engine.reindex()
    assert report.full_rebuild and report.added == 13 and other.embedded == 13
    assert engine.store.info().fingerprint == "tiny-v2"


def test_unreadable_files_are_skipped_and_listed(tiny_settings: Settings) -> None:
    root = Path(tiny_settings.images_dir)
    (root / "Canis_lupus" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "Canis_lupus" / "notes.txt").write_text("not an image, ignored")
    Image.new("RGB", (4, 4)).save(root / "Canis_lupus" / "tiny.png")
    report = _engine(tiny_settings).reindex()
    assert report.total == 13
    assert sorted(p for p, _ in report.skipped) == [
        "Canis_lupus/broken.jpg",
        "Canis_lupus/tiny.png",
    ]
    assert all(reason for _, reason in report.skipped)


def test_missing_index_is_a_clear_error(tiny_settings: Settings) -> None:
    engine = _engine(tiny_settings)
    assert not engine.is_indexed()
    with pytest.raises(IndexMissingError, match="kontrol index"):
        engine.classify(make_image(1))


def test_classify_votes_and_admits_doubt(tiny_settings: Settings) -> None:
    engine = _engine(tiny_settings)
    engine.reindex()
    path = sorted(Path(tiny_settings.images_dir, "Canis_lupus").glob("*.jpg"))[0]
    query = ImageOps.mirror(Image.open(path))
    result = engine.classify(query)
    assert result["species"] == "Canis lupus"
    assert 0 < result["confidence"] <= 1
    probs = list(result["probabilities"].values())
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    # an image unlike anything in the collection: not sure, but candidates are given
    strict = tiny_settings.model_copy(update={"classify_min_similarity": 0.999})
    doubtful = _engine(strict).classify(Image.new("RGB", (64, 64), (0, 255, 0)))
    assert doubtful["species"] is None and doubtful["probabilities"]


def test_second_reindex_is_refused_while_one_runs(tiny_settings: Settings) -> None:
    engine = _engine(tiny_settings)
    assert engine._reindex_lock.acquire()
    try:
        with pytest.raises(IndexBusyError):
            engine.reindex()
    finally:
        engine._reindex_lock.release()


def test_queries_keep_working_during_reindex_and_swap_in_one_step(tiny_settings: Settings) -> None:
    import threading

    engine = _engine(tiny_settings)
    engine.reindex()
    make_collection(Path(tiny_settings.images_dir), {"Lynx_lynx": 2}, seed=3)
    gate = threading.Event()
    seen: list[int] = []

    def progress(_p) -> None:
        seen.append(engine.stats()["total_images"])  # old index still served mid-run
        gate.set()

    t = threading.Thread(target=engine.reindex, kwargs={"progress": progress})
    t.start()
    t.join(30)
    assert gate.is_set() and seen and all(n == 13 for n in seen)
    assert engine.stats()["total_images"] == 15


def test_embeddings_are_unit_norm_and_metadata_schema(tiny_settings: Settings) -> None:
    engine = _engine(tiny_settings)
    engine.reindex()
    batches = list(engine.store.iterate())
    norms = np.linalg.norm(np.concatenate([b.vectors for b in batches]), axis=1)
    assert len(norms) == 13 and np.allclose(norms, 1, atol=1e-5)
    info = engine.store.info()
    assert info.model and info.dim == TinyEmbedder.dim and "created_at" in info.extra
    payload = batches[0].payloads[0]
    assert set(payload) >= {"path", "species", "genus", "source"}
    assert payload["genus"] == payload["species"].split()[0]


def test_unchanged_collection_keeps_the_same_generation(tiny_settings: Settings) -> None:
    embedder = TinyEmbedder()
    engine = _engine(tiny_settings, embedder)
    engine.reindex()
    first = engine.store.info().generation
    embedder.embedded = 0
    report = engine.reindex()
    assert report.added == 0 and report.unchanged == 13 and embedder.embedded == 0
    assert engine.store.info().generation == first


def test_head_replaces_the_vote_only_when_it_proved_itself(tmp_path: Path) -> None:
    from core.settings import load_settings

    root = tmp_path / "photos"
    make_collection(root, {"Aa_aa": 24, "Bb_bb": 24, "Cc_cc": 24, "Dd_dd": 24})
    settings = load_settings(
        images_dir=root, index_dir=tmp_path / "idx", models_dir=tmp_path / "m", index_type="flat"
    )
    engine = _engine(settings)
    report = engine.reindex()
    # well-separated species: the head is as accurate as the vote on >= 20 held-out photos
    assert report.head is not None and report.head["holdout_n"] >= 20
    assert report.head["preferred"] is True
    query = ImageOps.mirror(Image.open(sorted((root / "Bb_bb").glob("*.jpg"))[0]))
    result = engine.classify(query)
    assert result["source"] == "head" and result["species"] == "Bb bb"
    small = _engine(load_settings(**{**settings.model_dump(), "index_dir": tmp_path / "i2"}))
    small.settings = small.settings.model_copy(update={"images_dir": tmp_path / "few"})
    make_collection(tmp_path / "few", {"Aa_aa": 2, "Bb_bb": 2})
    assert small.reindex().head["preferred"] is False  # 1-2 held-out photos prove nothing
    assert small.classify(query)["source"] == "knn"


def test_analyze_equals_classify_plus_find_similar(tiny_settings: Settings) -> None:
    engine = _engine(tiny_settings)
    engine.reindex()
    query = make_image(77)
    for top_k, species in ((3, None), (12, None), (2, "Felis catus")):
        classification, hits = engine.analyze(query, top_k=top_k, species=species)
        alone = engine.classify(query)
        assert classification["species"] == alone["species"]
        assert list(classification["probabilities"]) == list(alone["probabilities"])
        assert classification["confidence"] == pytest.approx(alone["confidence"], abs=1e-5)
        expected = engine.find_similar(query, top_k=top_k, species=species)
        assert [h["path"] for h in hits] == [h["path"] for h in expected]
        assert [h["similarity"] for h in hits] == pytest.approx(
            [h["similarity"] for h in expected], abs=1e-5
        )
