"""The named-answer threshold, chosen from the collection's own risk-coverage curve.

A species is named when its calibrated probability reaches a threshold t (and the best neighbour
is similar enough). Lower t names more queries (coverage) and gets more of them wrong (risk). The
user states the precision named answers must keep (KONTROL_CLASSIFY_TARGET_PRECISION, 85 % by
default); the threshold is the lowest t >= 0.5 whose whole neighbourhood [t - 0.05, t + 0.05] keeps that
precision on held-out queries (a flat optimum, not a lucky spike), with enough named answers to
say so. The curve is measured on the same leave-one-out votes the calibration is fitted on, each
query's probability coming from a calibrator fitted on the other folds (cross-fitting), so the
choice never grades a calibrator on its own training queries.

When no threshold qualifies (a collection with mostly one photo per species, like the demo), the
caller falls back to the target itself: for calibrated probabilities, answers with p >= t are right
at least t of the time on average.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Named answers needed before a threshold's precision counts.
MIN_NAMED = 10
#: Half-width of the plateau a chosen threshold must sit on.
WINDOW = 0.05
GRID = np.round(np.arange(0.0, 0.991, 0.01), 2)
#: No threshold below this is chosen: a named answer is never more likely wrong than right, even
#: where the rest of the curve would carry it (a collection whose class answers are all right).
MIN_THRESHOLD = 0.5


@dataclass(frozen=True)
class Curve:
    """Per threshold of `grid`: share of queries named, and precision of those (NaN if none)."""

    grid: np.ndarray
    coverage: np.ndarray
    precision: np.ndarray


def named_mask(
    confidence: np.ndarray, best_similarity: np.ndarray, threshold: float, min_similarity: float
) -> np.ndarray:
    """Which queries get a species name at `threshold`."""
    return (np.asarray(confidence) >= threshold) & (np.asarray(best_similarity) >= min_similarity)


def risk_coverage(
    confidence: np.ndarray,
    correct: np.ndarray,
    best_similarity: np.ndarray,
    min_similarity: float,
    grid: np.ndarray | None = None,
) -> Curve:
    """Coverage and precision of named answers for every threshold of `grid`."""
    grid = GRID if grid is None else np.asarray(grid)
    correct = np.asarray(correct, dtype=bool)
    coverage, precision = [], []
    for t in grid:
        mask = named_mask(confidence, best_similarity, float(t), min_similarity)
        coverage.append(mask.mean() if mask.size else 0.0)
        precision.append(correct[mask].mean() if mask.any() else np.nan)
    return Curve(grid, np.array(coverage), np.array(precision))


def choose_threshold(
    curve: Curve,
    *,
    target: float,
    window: float = WINDOW,
    min_coverage: float = 0.0,
    floor: float = MIN_THRESHOLD,
) -> float | None:
    """The lowest threshold t (most answers) whose precision stays >= target for every threshold
    in [t - window, t + window] with named answers: a plateau, not a lucky spike. Thresholds that
    name no more than `min_coverage` of the queries prove nothing and are neither chosen nor
    counted in a window."""
    grid, coverage, precision = curve.grid, curve.coverage, curve.precision
    for i, t in enumerate(grid):
        near = (np.abs(grid - t) <= window + 1e-9) & (coverage > min_coverage)
        values = precision[near]
        values = values[np.isfinite(values)]
        if t >= floor and values.size and values.min() >= target and coverage[i] > min_coverage:
            return float(t)
    return None


def fold_of(groups: Sequence[object], folds: int, seed: int) -> np.ndarray:
    """Fold number of each row; rows of one group share a fold (a photo and its copies)."""
    unique = sorted({str(g) for g in groups})
    order = np.random.default_rng(seed).permutation(len(unique))
    number = {u: int(order[i]) % folds for i, u in enumerate(unique)}
    return np.array([number[str(g)] for g in groups], dtype=np.int64)
