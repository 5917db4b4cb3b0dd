"""The species head: fitting, calibration, persistence, staleness and the open-set answer."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pytest

from core.engine import Engine
from core.errors import IndexMismatchError, IndexMissingError
from core.head import HEAD_FILE, HeadTrainingError, load_head
from core.head_fit import (
    expected_calibration_error,
    train_head,
    train_head_cli,
    train_head_from_store,
)
from core.head_policy import head_classification
from core.seed_format import IndexData
from core.settings import Settings
from core.vectorstore import StoreInfo
from core.vectorstore.faiss_store import FaissStore
from tests.helpers import TinyEmbedder


def clusters(
    layout: dict[str, int], *, dim: int = 32, spread: float = 0.3, seed: int = 0
) -> IndexData:
    """Unit-normalised gaussian clusters, one per species (index structure not needed)."""
    rng = np.random.default_rng(seed)
    rows, names = [], []
    for name, count in layout.items():
        centre = rng.normal(size=dim)
        rows.append(centre + spread * rng.normal(size=(count, dim)))
        names += [name] * count
    x = np.concatenate(rows)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    images = [{"scientific_name": n} for n in names]
    meta = {"model_fingerprint": "fp-1", "generation": "gen-1"}
    return IndexData(images=images, embeddings=x, index=None, meta=meta)  # type: ignore[arg-type]


SEPARATED = {f"Genus species{i}": 20 for i in range(6)} | {"Lynx lynx": 1}


def test_high_heldout_accuracy_on_separated_species() -> None:
    data = clusters(SEPARATED)
    head, report = train_head(data, seed=0)
    assert report["holdout_accuracy"] >= 0.95
    assert report["classes"] == 7 and report["singleton_classes"] == 1
    assert report["holdout_n"] == 6 * 5 and report["train_n"] == 6 * 15 + 1
    assert report["ece_after"] < 0.1
    assert set(report) >= {"train_n", "holdout_n", "ece_before", "temperature", "seconds"}
    assert "Lynx lynx" in head.classes  # singletons train, so they can be predicted
    probs = head.predict_proba(data.embeddings)
    assert probs.shape == (len(data.images), 7)
    assert np.allclose(probs.sum(axis=1), 1.0)
    names = np.array(head.classes)[probs.argmax(axis=1)]
    truth = np.array([r["scientific_name"] for r in data.images])
    assert (names == truth).mean() >= 0.98


def test_temperature_scaling_fixes_an_overconfident_head() -> None:
    # Overlapping clusters, many dimensions, almost no regularisation: the training split is
    # separable, so the uncalibrated head is overconfident on held-out photos.
    data = clusters({f"Genus s{i}": 30 for i in range(12)}, dim=64, spread=2.5)
    _, report = train_head(data, seed=0, l2=1e-5)
    assert 0.5 < report["holdout_accuracy"] < 0.95
    assert report["temperature"] > 1.0
    assert report["nll_after"] < report["nll_before"]
    assert report["ece_after"] < report["ece_before"]


def test_expected_calibration_error() -> None:
    labels = np.array([0, 0, 1, 1])
    perfect = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert expected_calibration_error(perfect, labels) == pytest.approx(0.0)
    half_wrong = np.array([[0.9, 0.1]] * 4)  # 90% sure, right half the time
    assert expected_calibration_error(half_wrong, labels) == pytest.approx(0.4)


def test_save_load_round_trip(tmp_path: Path) -> None:
    data = clusters(SEPARATED)
    head, report = train_head(data)
    path = head.save(tmp_path)
    assert path == tmp_path / HEAD_FILE
    assert not [p for p in tmp_path.iterdir() if p != path]  # no temp file left behind
    loaded = load_head(tmp_path, fingerprint="fp-1", generation="gen-1")
    assert loaded is not None
    assert loaded.classes == head.classes and loaded.temperature == head.temperature
    assert loaded.report["holdout_accuracy"] == report["holdout_accuracy"]
    np.testing.assert_allclose(
        loaded.predict_proba(data.embeddings), head.predict_proba(data.embeddings), atol=1e-6
    )


@pytest.mark.parametrize(("fingerprint", "generation"), [("fp-2", "gen-1"), ("fp-1", "gen-2")])
def test_stale_head_is_not_used(
    tmp_path: Path, fingerprint: str, generation: str, caplog: pytest.LogCaptureFixture
) -> None:
    train_head(clusters(SEPARATED))[0].save(tmp_path)
    with caplog.at_level(logging.INFO, logger="core.head"):
        assert load_head(tmp_path, fingerprint=fingerprint, generation=generation) is None
    assert "stale" in caplog.text


def test_missing_or_damaged_head_gives_none(tmp_path: Path) -> None:
    assert load_head(tmp_path, fingerprint="fp-1", generation="gen-1") is None
    train_head(clusters(SEPARATED))[0].save(tmp_path)
    path = tmp_path / HEAD_FILE
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated
    assert load_head(tmp_path, fingerprint="fp-1", generation="gen-1") is None
    path.write_bytes(b"not a numpy archive at all")
    assert load_head(tmp_path, fingerprint="fp-1", generation="gen-1") is None


def _as_store(data: IndexData, path: Path) -> FaissStore:
    store = FaissStore(path)
    store.initialise(StoreInfo(fingerprint="fp-1", dim=data.embeddings.shape[1]))
    ids = [f"p{i}" for i in range(len(data.images))]
    payloads = [
        {"path": f"{i}.jpg", "species": r["scientific_name"]} for i, r in enumerate(data.images)
    ]
    store.upsert(ids, data.embeddings, payloads)
    return store


def test_too_few_classes(tmp_path: Path) -> None:
    one = clusters({"Canis lupus": 10, "Vulpes vulpes": 1, "Felis catus": 1})
    with pytest.raises(HeadTrainingError, match="two species"):
        train_head(one)
    store = _as_store(one, tmp_path / "idx")
    assert train_head_from_store(store, tmp_path, fingerprint="fp-1", key="k1") is None
    assert not (tmp_path / HEAD_FILE).exists()


def test_head_from_store_is_refitted_only_for_a_new_label_set(tmp_path: Path) -> None:
    store = _as_store(clusters(SEPARATED), tmp_path / "idx")
    report = train_head_from_store(store, tmp_path, fingerprint="fp-1", key="k1")
    assert report is not None and report["classes"] == 7
    mtime = (tmp_path / HEAD_FILE).stat().st_mtime_ns
    again = train_head_from_store(store, tmp_path, fingerprint="fp-1", key="k1")
    assert again == report  # same label set: not refitted
    assert (tmp_path / HEAD_FILE).stat().st_mtime_ns == mtime
    assert train_head_from_store(store, tmp_path, fingerprint="fp-1", key="k2") is not None
    assert load_head(tmp_path, fingerprint="fp-1", generation="k2") is not None


def test_head_sample_is_bounded_per_species(tmp_path: Path) -> None:
    from core.head_fit import sample_store

    store = _as_store(clusters({"Aa aa": 50, "Bb bb": 5}), tmp_path / "idx")
    labels, vectors = sample_store(store, per_species=10)
    assert labels.count("Aa aa") == 10 and labels.count("Bb bb") == 5
    assert vectors.shape == (15, 32)


def test_head_classification_open_set() -> None:
    data = clusters(SEPARATED)
    head, _ = train_head(data)
    vector = data.embeddings[0]
    sure = head_classification(head, vector, min_confidence=0.35)
    assert sure["species"] == "Genus species0" and sure["source"] == "head"
    assert sure["confidence"] >= 0.35
    assert next(iter(sure["probabilities"])) == "Genus species0"
    assert len(sure["probabilities"]) == 5
    assert set(sure) >= {"species", "confidence", "probabilities", "source"}
    unsure = head_classification(head, vector, min_confidence=1.01)
    assert unsure["species"] is None and unsure["probabilities"] == sure["probabilities"]
    far = head_classification(
        head, vector, min_confidence=0.35, best_similarity=0.2, min_similarity=0.55
    )
    assert far["species"] is None and far["best_similarity"] == 0.2


def test_train_cli_on_a_real_index(
    tiny_settings: Settings, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.embedders

    monkeypatch.setattr(core.embedders, "create_embedder", lambda settings: TinyEmbedder())
    with pytest.raises(IndexMissingError):
        train_head_cli(argparse.Namespace(), tiny_settings)
    Engine(tiny_settings, embedder=TinyEmbedder()).reindex()
    assert train_head_cli(argparse.Namespace(), tiny_settings) == 0
    assert "Held-out accuracy" in capsys.readouterr().out
    from core.engine import label_set_key

    engine = Engine(tiny_settings, embedder=TinyEmbedder())
    head = load_head(
        tiny_settings.models_dir,
        fingerprint=TinyEmbedder().fingerprint,
        generation=label_set_key(engine.species_counts()),
    )
    assert head is not None and head.dim == TinyEmbedder.dim
    assert sorted(head.classes) == ["Canis lupus", "Felis catus", "Ursus arctos", "Vulpes vulpes"]
    # an index of another model gets no head: the engine would never use it
    monkeypatch.setattr(core.embedders, "create_embedder", lambda settings: TinyEmbedder("v2"))
    with pytest.raises(IndexMismatchError, match="rebuild"):
        train_head_cli(argparse.Namespace(), tiny_settings)


def test_train_cli_without_a_head_reports_the_vote_calibration(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One photo per species: no head can be fitted, yet the calibration and its thresholds are,
    and `kontrol train` says so instead of failing."""
    import core.embedders
    from core.settings import load_settings
    from tests.helpers import make_collection

    monkeypatch.setattr(core.embedders, "create_embedder", lambda settings: TinyEmbedder())
    root = tmp_path / "photos"
    make_collection(root, {f"Genus{i}_species{i}": 1 for i in range(24)})
    settings = load_settings(
        images_dir=root, index_dir=tmp_path / "idx", models_dir=tmp_path / "m", index_type="flat"
    )
    Engine(settings, embedder=TinyEmbedder()).reindex(train="skip")
    assert train_head_cli(argparse.Namespace(), settings) == 0
    out = capsys.readouterr().out
    assert "No species head" in out and "Vote calibration: 24 leave-one-out queries" in out
    assert "Named-answer threshold" in out
