"""`kontrol finetune`: the projection learns where it can, the evaluation is photo-level and paired,
nothing is adopted without a significant gain, and the result plugs in as a new fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kontrol.finetune.embedder import ProjectedEmbedder
from kontrol.finetune.train import (
    Projection,
    bootstrap_ci,
    cross_validate,
    per_query_metrics,
    train_projection,
    worth_adopting,
)
from tests.helpers import TinyEmbedder, make_collection, make_image


def _nuisance_data(seed: int = 0, species: int = 12, per: int = 6, dim: int = 48):
    """Species identity lives in a weak subspace; a strong nuisance subspace (lighting, background)
    is shared at random across species, so raw cosine retrieval is poor and a linear map helps."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((species, 8))
    nuisance = rng.standard_normal((species * per, dim - 8)) * 2.0
    x = np.concatenate(
        [np.repeat(centres, per, axis=0) + 0.3 * rng.standard_normal((species * per, 8)), nuisance],
        axis=1,
    ).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.repeat([f"s{i}" for i in range(species)], per)
    return x, labels


def test_projection_gains_on_learnable_structure() -> None:
    x, labels = _nuisance_data()
    report = cross_validate(x, labels, folds=3, epochs=40, rank=16, lr=1e-2, seed=0)
    assert report["queries"] == len(x)  # every photo held out exactly once
    assert report["map_gain"] > 0.05
    assert report["map_gain_ci95"][0] > 0
    assert worth_adopting(report)


def test_no_structure_no_adoption() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((60, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.repeat([f"s{i}" for i in range(20)], 3)  # labels carry no signal
    report = cross_validate(x, labels, folds=3, epochs=20, rank=8, seed=0)
    assert not worth_adopting(report)


def test_metrics_and_bootstrap() -> None:
    g = np.eye(4, dtype=np.float32)
    g[1] = g[0] * 0.9 + g[1] * 0.1
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    r1, ap = per_query_metrics(g, np.array([0, 0, 1, 1]), np.array([0, 1]))
    assert r1.tolist() == [1.0, 1.0] and ap.tolist() == [1.0, 1.0]
    lo, hi = bootstrap_ci(np.array([0.1] * 20))
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    assert not worth_adopting({"map_gain_ci95": (-0.01, 0.2), "recall_at_1_gain": 0.1})


def test_save_load_and_projected_embedder(tmp_path: Path) -> None:
    x, labels = _nuisance_data(dim=48)
    _, codes = np.unique(labels, return_inverse=True)
    proj = train_projection(x, codes, np.arange(len(x)), rank=4, epochs=3)
    base = TinyEmbedder()
    proj.base_fingerprint = base.fingerprint
    path = tmp_path / "proj.bin"
    proj.save(path)
    again = Projection.load(path)
    assert np.allclose(again.apply(x), proj.apply(x))
    emb = ProjectedEmbedder(base, again)
    assert emb.fingerprint != base.fingerprint and emb.fingerprint.startswith(base.fingerprint)
    out = emb.embed_images([make_image(1), make_image(2)])
    assert out.embeddings.shape == (2, base.dim)
    assert np.allclose(np.linalg.norm(out.embeddings, axis=1), 1.0, atol=1e-5)
    other = TinyEmbedder("v2")
    with pytest.raises(Exception, match="another model"):
        ProjectedEmbedder(other, again)


def test_finetune_command_saves_and_does_not_adopt_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from core.engine import Engine
    from core.settings import load_settings
    from kontrol.cli import main

    root = tmp_path / "photos"
    make_collection(root, {"Canis_lupus": 4, "Vulpes_vulpes": 4, "Felis_catus": 4})
    models = tmp_path / "models"
    settings = load_settings(images_dir=root, index_dir=tmp_path / "index", models_dir=models)
    Engine(settings, embedder=TinyEmbedder()).reindex(train="skip")
    monkeypatch.setattr("core.embedders.create_embedder", lambda s: TinyEmbedder())
    monkeypatch.setenv("KONTROL_MODELS_DIR", str(models))
    out, js = tmp_path / "out" / "proj.npz", tmp_path / "ft.json"
    argv = ["finetune", "--images", str(root), "--index-dir", str(tmp_path / "index")]
    argv += ["--out", str(out), "--json", str(js), "--folds", "3", "--epochs", "5"]
    assert main([*argv, "--augment", "1"]) == 0
    report = json.loads(js.read_text())
    assert report["photos"] == 12 and report["augmented"] == 12 and report["queries"] == 12
    assert out.exists() and Projection.load(out).base_fingerprint == TinyEmbedder().fingerprint
    text = capsys.readouterr().out
    assert "species mAP" in text
    assert not (models / "finetune").exists()  # never adopted without --adopt
