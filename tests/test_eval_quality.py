"""Answer-quality evaluation (issue 9): bootstrap intervals, risk-coverage, threshold choice."""

from __future__ import annotations

import numpy as np

from core.calibration import loo_vote_rows
from kontrol.evaluation import quality


def test_bootstrap_ci_is_reproducible_and_covers_the_mean() -> None:
    values = np.random.default_rng(1).random(200) < 0.7
    a = quality.bootstrap_ci(values.astype(float), seed=3)
    b = quality.bootstrap_ci(values.astype(float), seed=3)
    assert a == b and a is not None
    assert a[0] < values.mean() < a[1] and a[1] - a[0] < 0.2
    assert quality.bootstrap_ci([]) is None


def test_cross_fitted_calibration_on_clusters() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(150, 16))
    x = np.repeat(centres, 3, axis=0) + 1.2 * rng.normal(size=(450, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = [f"G{i // 6} s{i // 3}" for i in range(450)]
    held = quality.cross_fitted(loo_vote_rows(x, labels, k=10), seed=0)
    pairs = np.stack([held.confidence, held.correct.astype(float)], axis=1)
    assert (
        quality.ece_of(pairs)
        < 0.1
        < quality.ece_of(np.stack([held.raw, held.correct.astype(float)], axis=1))
    )
    coverage = quality.curve_of(held, min_similarity=-1.0).coverage
    assert coverage[0] == 1.0 and np.all(np.diff(coverage) <= 0)
    ci = quality.bootstrap_ci(pairs, quality.ece_of, reps=200)
    assert ci is not None and ci[0] <= ci[1]


def test_genus_recall_at_1() -> None:
    x = np.eye(4, dtype=np.float32)
    x[1] = x[0] * 0.9 + x[1] * 0.1
    sim = x @ x.T
    hits, queries = quality.genus_recall_at_1(
        sim, ["Felis catus", "Felis silvestris", "Canis lupus", "Ursus arctos"]
    )
    assert queries == [0, 1] and hits.tolist() == [True, True]
