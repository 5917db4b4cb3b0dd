"""Answer quality (issue 9): calibration, named-answer precision, risk-coverage, bootstrap CIs.

Everything here is held-out: each photo's vote comes from its neighbours among the other photos
(`core.calibration.loo_vote_rows`), and each photo's calibrated probability from a calibrator
fitted on the other folds (`cross_fitted`), never on the photo itself. Evaluation fits these
calibrators in memory only; the one the bot serves is fitted by `kontrol train` / a re-index.

- ECE (15 bins) of the top candidate's probability, with a reliability diagram, and the ECE
  that exact probabilities would show on as many queries (`ece_if_calibrated`);
- named-answer precision: of the answers that name a species, the share that are right; coverage
  is the share of queries answered with a name; the risk-coverage curve (`core.risk_coverage`,
  which the engine also uses to choose its threshold) draws both as the threshold moves;
- genus recall@1: the nearest other photo is of the same genus (queries whose genus has 2+ photos);
- `bootstrap_ci`: 95 % percentile intervals from resampling queries (1000 reps, fixed seed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.calibration import (
    ECE_BINS,
    VoteRow,
    cross_fitted_confidence,
    expected_calibration_error,
    top_predictions,
)
from core.risk_coverage import Curve, fold_of, risk_coverage
from core.taxonomy import lineage_for

BOOTSTRAP_REPS = 1000


def bootstrap_ci(
    values: np.ndarray | Sequence[float],
    stat: Callable[[np.ndarray], float] = np.mean,
    *,
    reps: int = BOOTSTRAP_REPS,
    seed: int = 0,
) -> tuple[float, float] | None:
    """95 % percentile interval of `stat` over queries resampled with replacement (None if empty).

    `values` may be 2-D (one row per query) for statistics of several columns, e.g. ECE."""
    data = np.asarray(values, dtype=np.float64)
    if data.shape[0] == 0:
        return None
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, data.shape[0], size=(reps, data.shape[0]))
    stats = np.array([stat(data[p]) for p in picks], dtype=np.float64)
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return None
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


@dataclass(frozen=True)
class HeldOut:
    """Per query: calibrated top probability, raw share, whether the top candidate is right, the
    best neighbour similarity and the fold the query was in."""

    confidence: np.ndarray
    raw: np.ndarray
    correct: np.ndarray
    best_similarity: np.ndarray
    fold: np.ndarray


def cross_fitted(
    rows: Sequence[VoteRow],
    *,
    folds: int = 5,
    seed: int = 0,
    groups: Sequence[int] | None = None,
) -> HeldOut:
    """Each query's calibrated probability from a calibrator fitted on the other folds.

    `groups` keeps related queries (a photo and its augmented copies) in the same fold.
    """
    keys = list(range(len(rows))) if groups is None else list(groups)
    conf = cross_fitted_confidence(rows, folds=folds, seed=seed, groups=keys)
    raw, correct, _ = top_predictions(rows, None)
    best = np.array([r.best_similarity for r in rows])
    return HeldOut(conf, raw, correct, best, fold_of(keys, folds, seed))


def ece_of(data: np.ndarray) -> float:
    """ECE of an (n, 2) array of [confidence, correct] rows (for `bootstrap_ci`)."""
    return expected_calibration_error(data[:, 0], data[:, 1] > 0.5, ECE_BINS)


def ece_if_calibrated(
    confidence: np.ndarray,
    *,
    groups: Sequence[object] | np.ndarray | None = None,
    reps: int = BOOTSTRAP_REPS,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Median and 95th percentile of the ECE a perfectly calibrated answerer would show with these
    confidences on this many queries (outcomes drawn as Bernoulli(confidence)).

    On a few dozen queries ECE is biased upwards: even exact probabilities leave binned gaps. An
    observed ECE under this 95th percentile is what exact probabilities could have produced.
    Queries of one group (a photo and its augmented copies) are right or wrong together, so their
    draws share one uniform number: fewer independent queries, a wider band."""
    conf = np.asarray(confidence, dtype=np.float64)
    if conf.size == 0:
        return None
    rng = np.random.default_rng(seed)
    if groups is None:
        draws = rng.random((reps, conf.size))
    else:
        _, which = np.unique(np.asarray(groups), return_inverse=True)
        draws = rng.random((reps, int(which.max()) + 1))[:, which]
    eces = np.array([expected_calibration_error(conf, hit) for hit in draws < conf])
    return float(np.median(eces)), float(np.percentile(eces, 95))


def curve_of(held: HeldOut, min_similarity: float, grid: np.ndarray | None = None) -> Curve:
    """The risk-coverage curve of held-out answers (`core.risk_coverage`)."""
    return risk_coverage(held.confidence, held.correct, held.best_similarity, min_similarity, grid)


def genus_recall_at_1(sim: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, list[int]]:
    """Per eligible query (its genus has 2+ photos): is the nearest other photo of its genus?"""
    genus = [lineage_for(lab).genus for lab in labels]
    counts: dict[str | None, int] = {}
    for g in genus:
        counts[g] = counts.get(g, 0) + 1
    queries = [i for i, g in enumerate(genus) if g is not None and counts[g] >= 2]
    hits = []
    for q in queries:
        row = np.array(sim[q], dtype=np.float64)
        row[q] = -np.inf
        hits.append(genus[int(np.argmax(row))] == genus[q])
    return np.array(hits, dtype=bool), queries


# --- pictures --------------------------------------------------------------------------------
def reliability_diagram(path: Path | str, held: HeldOut, bins: int = ECE_BINS) -> Path:
    """PNG: accuracy per confidence bin against the diagonal, raw share and calibrated."""
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(5.5, 5), dpi=110)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    edges = np.linspace(0, 1, bins + 1)
    for conf, name, colour in (
        (held.raw, "raw vote share", "tab:red"),
        (held.confidence, "calibrated (held-out)", "tab:blue"),
    ):
        which = np.clip((conf * bins).astype(int), 0, bins - 1)
        xs, ys, ns = [], [], []
        for b in range(bins):
            mask = which == b
            if mask.any():
                xs.append(conf[mask].mean())
                ys.append(held.correct[mask].mean())
                ns.append(mask.sum())
        ece = expected_calibration_error(conf, held.correct, bins)
        ax.plot(xs, ys, "o-", color=colour, label=f"{name} (ECE {ece:.3f})")
        for x, y, n in zip(xs, ys, ns, strict=True):
            ax.annotate(
                str(n), (x, y), fontsize=6, color=colour, xytext=(2, 2), textcoords="offset points"
            )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xticks(edges[::3])
    ax.set_xlabel("confidence of the top candidate")
    ax.set_ylabel("share right")
    ax.set_title(f"Reliability ({len(held.correct)} held-out queries, {bins} bins)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def risk_coverage_plot(
    path: Path | str,
    curve: Curve,
    *,
    threshold: float | None,
    target: float | None = None,
) -> Path:
    """PNG: precision of named answers against the share of queries answered with a name."""
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(6, 4.5), dpi=110)
    ax = fig.add_subplot()
    grid, coverage, precision = curve.grid, curve.coverage, curve.precision
    ax.plot(coverage, precision, "-", color="tab:blue", label="threshold 0 .. 0.99")
    if threshold is not None:
        i = int(np.argmin(np.abs(grid - threshold)))
        ax.plot(coverage[i], precision[i], "o", color="tab:red", label=f"threshold {threshold:.2f}")
    if target is not None:
        ax.axhline(target, color="k", linestyle="--", linewidth=1, label=f"target {target:.0%}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("coverage (share of queries named)")
    ax.set_ylabel("precision of named answers")
    ax.set_title("Risk-coverage")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
