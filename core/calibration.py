"""Calibrated confidence for the neighbour vote: "80 %" should be right about 80 % of the time.

The vote's raw share is a softmax over similarity gaps: with one close neighbour of species A it
says 100 % A, even when the collection has no other photo of A's kind. `VoteCalibrator` maps a
candidate's vote share and the query's best neighbour similarity to the probability that the
candidate is the right species (Platt scaling: a logistic regression on [logit(share), best
similarity]). It is fitted on held-out predictions: leave-one-out over the indexed photos, each
photo classified from its neighbours among the others (`loo_vote_rows`), the top candidate of
every query one example (right species or not); the same monotone map then rescales the runner-up
candidates, so their order is kept. Photos whose species has no other photo are kept: they
are what a photo of an animal missing from the collection looks like, so the calibrated
probability also accounts for how often that happens in this collection.

The calibrator is saved beside the species head in the models directory, keyed like the head
(model fingerprint + label-set key): `kontrol train` and a re-index fit it, evaluation never does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import atomic_file
from core.classify import TEMPERATURE, vote_shares
from core.risk_coverage import MIN_NAMED, choose_threshold, fold_of, risk_coverage

log = logging.getLogger(__name__)

CALIBRATION_FILE = "vote_calibration.json"
FORMAT_VERSION = 1
ECE_BINS = 15
#: Fewer held-out queries than this and no calibrator is fitted (the raw share is kept).
MIN_QUERIES = 20
#: Leave-one-out queries used for fitting at most (a random sample beyond this).
MAX_QUERIES = 5000
_EPS = 1e-4
#: Shown probabilities never reach certainty: the calibrated value is capped here.
MAX_PROBABILITY = 0.99
#: Ranks above the species that get their own calibration (the answer's rank ladder).
RANK_LADDER = ("genus", "family", "order", "class")

LineageFn = Callable[[str], Mapping[str, str]]


@dataclass(frozen=True)
class VoteRow:
    """One held-out query: its vote's candidates (largest share first), shares, best similarity
    and the true species (None when unknown, e.g. a photo with no animal)."""

    candidates: tuple[str, ...]
    shares: np.ndarray
    best_similarity: float
    truth: str | None


def _features(shares: np.ndarray, best_similarity: np.ndarray | float) -> np.ndarray:
    s = np.clip(np.asarray(shares, dtype=np.float64), _EPS, 1 - _EPS)
    b = np.broadcast_to(np.asarray(best_similarity, dtype=np.float64), s.shape)
    return np.stack([np.log(s / (1 - s)), b, np.ones_like(s)], axis=-1)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def _platt(
    coef: np.ndarray, shares: np.ndarray | Sequence[float], best_similarity: float
) -> np.ndarray:
    """Platt-scaled probabilities of candidates, capped below 1, never summing past 1."""
    p = _sigmoid(_features(np.asarray(shares, dtype=np.float64), best_similarity) @ coef)
    p = np.minimum(p, MAX_PROBABILITY)
    total = float(p.sum())
    return p / total * MAX_PROBABILITY if total > MAX_PROBABILITY else p


def taxon_shares(
    names: Sequence[str], shares: Sequence[float], rank: str, lineage: LineageFn
) -> tuple[list[str], np.ndarray]:
    """The vote's shares summed per taxon at `rank`, largest first (candidates whose taxon is
    unknown at that rank add to none)."""
    totals: dict[str, float] = {}
    for name, share in zip(names, shares, strict=True):
        taxon = lineage(name).get(rank)
        if taxon:
            totals[taxon] = totals.get(taxon, 0.0) + float(share)
    ranked = sorted(totals.items(), key=lambda item: -item[1])
    return [t for t, _ in ranked], np.array([v for _, v in ranked], dtype=np.float64)


def rank_rows(rows: Sequence[VoteRow], rank: str, lineage: LineageFn) -> list[VoteRow]:
    """The held-out votes seen at `rank`: candidates are taxa, the truth the photo's own taxon.
    Rows whose truth has no known taxon at that rank cannot be graded and are left out."""
    out = []
    for row in rows:
        truth = lineage(row.truth).get(rank) if row.truth else None
        taxa, shares = taxon_shares(row.candidates, row.shares, rank, lineage)
        if truth and taxa:
            out.append(VoteRow(tuple(taxa), shares, row.best_similarity, truth))
    return out


@dataclass
class VoteCalibrator:
    """P(candidate is right | its vote share, the best neighbour similarity), Platt-scaled."""

    coef: np.ndarray  # (3,): logit(share), best similarity, intercept
    fingerprint: str = ""
    key: str = ""
    report: dict[str, Any] = field(default_factory=dict)
    #: Per rank (genus, family, order): the same map for the vote's share summed per taxon.
    ranks: dict[str, np.ndarray] = field(default_factory=dict)

    def probability(
        self, shares: np.ndarray | Sequence[float], best_similarity: float
    ) -> np.ndarray:
        """Calibrated probability of each candidate (same order as `shares`), capped below 1 and
        scaled so that they never sum past 1."""
        return _platt(self.coef, shares, best_similarity)

    def rank_probability(
        self, rank: str, shares: np.ndarray | Sequence[float], best_similarity: float
    ) -> np.ndarray | None:
        """Calibrated probability that each candidate taxon (its summed vote share given) is the
        photo's taxon at `rank`; None when no calibration was fitted for that rank.

        Summing the species' probabilities instead would undercount: a photo of a species the
        collection lacks has no right species among the candidates, yet its genus or family
        often is there."""
        coef = self.ranks.get(rank)
        return None if coef is None else _platt(coef, shares, best_similarity)

    def fitted_for(self, k: int, temperature: float) -> bool:
        """Fitted on votes of these k neighbours at this temperature (older files: T = 0.05)?
        A map fitted on other votes does not fit these."""
        r = self.report
        return r.get("k", k) == k and r.get("temperature", TEMPERATURE) == temperature

    def named_threshold(
        self, target: float, min_similarity: float, rank: str = "species"
    ) -> float | None:
        """The named-answer threshold chosen from this collection's risk-coverage curve for
        `target` precision (`core.risk_coverage`) at `rank`; None when none qualified or it was
        chosen for other settings."""
        r = self.report
        if r.get("target_precision") is None or r.get("min_similarity") is None:
            return None
        chosen = (
            r.get("named_threshold")
            if rank == "species"
            else (r.get("ranks") or {}).get(rank, {}).get("named_threshold")
        )
        same = np.isclose(r["target_precision"], target) and np.isclose(
            r["min_similarity"], min_similarity
        )
        return float(chosen) if chosen is not None and same else None

    def save(self, models_dir: Path) -> Path:
        """Write `<models_dir>/vote_calibration.json` atomically."""
        models_dir = Path(models_dir)
        body = {
            "format_version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "key": self.key,
            "coef": [float(c) for c in self.coef],
            "ranks": {rank: [float(c) for c in coef] for rank, coef in self.ranks.items()},
            "report": self.report,
        }
        target = models_dir / CALIBRATION_FILE
        with atomic_file(target, "w", encoding="utf-8") as handle:
            json.dump(body, handle, indent=2)
        return target


def load_calibrator(models_dir: Path, *, fingerprint: str, key: str) -> VoteCalibrator | None:
    """The saved calibrator if fitted for this model and label set, else None (never raises)."""
    path = Path(models_dir) / CALIBRATION_FILE
    if not path.exists():
        return None
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        coef = np.asarray(body["coef"], dtype=np.float64)
        if body.get("format_version") != FORMAT_VERSION or coef.shape != (3,):
            raise ValueError("inconsistent contents")
        ranks = {
            str(rank): np.asarray(c, dtype=np.float64)
            for rank, c in (body.get("ranks") or {}).items()
        }
        for c in (coef, *ranks.values()):
            if c.shape != (3,) or not np.all(np.isfinite(c)):
                raise ValueError("inconsistent or non-finite coefficients")
    except Exception as exc:
        log.warning("Vote calibration %s is unreadable (%s); ignoring it.", path, exc)
        return None
    if body.get("fingerprint") != fingerprint or body.get("key") != key:
        log.info("Vote calibration %s is stale; ignoring it.", path)
        return None
    return VoteCalibrator(coef, fingerprint, key, dict(body.get("report") or {}), ranks)


# --- held-out predictions -----------------------------------------------------------------------
def loo_vote_rows(
    vectors: np.ndarray,
    labels: Sequence[str],
    *,
    k: int = 10,
    temperature: float = TEMPERATURE,
    groups: Sequence[int] | None = None,
    queries: np.ndarray | None = None,
    voters: np.ndarray | None = None,
    block: int = 1024,
) -> list[VoteRow]:
    """Leave-one-out votes: each query classified from its k nearest other photos.

    `groups` (optional) names a group per photo whose members never vote for each other (an
    original and its augmented copies). `queries` limits which rows are asked (all by default),
    `voters` (a boolean mask) which rows may be neighbours (all by default).
    """
    x = np.asarray(vectors, dtype=np.float32)
    n = len(x)
    labels = [str(v) for v in labels]
    group = np.arange(n) if groups is None else np.asarray(groups)
    asked = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    rows: list[VoteRow] = []
    for start in range(0, len(asked), block):
        q = asked[start : start + block]
        sims = x[q] @ x.T
        sims[group[q][:, None] == group[None, :]] = -np.inf
        if voters is not None:
            sims[:, ~np.asarray(voters, dtype=bool)] = -np.inf
        kk = min(k, n - 1)
        if kk <= 0:
            break
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        for r, qi in enumerate(q):
            nb = top[r][np.argsort(-sims[r, top[r]], kind="stable")]
            nb = nb[np.isfinite(sims[r, nb])]
            if len(nb) == 0:
                continue
            ranked = vote_shares([labels[j] for j in nb], sims[r, nb], temperature)
            rows.append(
                VoteRow(
                    tuple(name for name, _ in ranked),
                    np.array([p for _, p in ranked]),
                    float(sims[r, nb[0]]),
                    labels[qi],
                )
            )
    return rows


def _design(rows: Sequence[VoteRow]) -> tuple[np.ndarray, np.ndarray]:
    """Features and outcome of each row's top candidate (what the answer names)."""
    if not rows:
        return np.zeros((0, 3)), np.zeros(0)
    feats = _features(
        np.array([row.shares[0] for row in rows]), np.array([row.best_similarity for row in rows])
    )
    return feats, np.array([row.candidates[0] == row.truth for row in rows], dtype=np.float64)


def fit_platt(x: np.ndarray, y: np.ndarray, *, l2: float = 1e-2, iters: int = 50) -> np.ndarray:
    """Logistic regression by Newton's method (a small ridge keeps separable data finite)."""
    w = np.zeros(x.shape[1])
    reg = l2 * np.eye(x.shape[1])
    reg[-1, -1] = 0.0  # the intercept is not penalised
    for _ in range(iters):
        p = _sigmoid(x @ w)
        grad = x.T @ (p - y) / len(y) + reg @ w
        hess = (x * (p * (1 - p))[:, None]).T @ x / len(y) + reg + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    w[0] = max(w[0], 0.0)  # more of the vote never means less likely
    return w


def top_predictions(
    rows: Sequence[VoteRow], calibrator: VoteCalibrator | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(confidence, correct, predicted species) of each row's top candidate; the raw share when
    no calibrator is given."""
    conf, correct, names = [], [], []
    for row in rows:
        p = (
            row.shares
            if calibrator is None
            else calibrator.probability(row.shares, row.best_similarity)
        )
        conf.append(float(p[0]))
        correct.append(row.candidates[0] == row.truth)
        names.append(row.candidates[0])
    return np.array(conf), np.array(correct, dtype=bool), names


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE over equal-width confidence bins: the mean |accuracy - confidence|, bins weighted."""
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if conf.size == 0:
        return float("nan")
    which = np.clip((conf * bins).astype(int), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(hit[mask].mean() - conf[mask].mean())
    return float(total)


def fit_calibrator(rows: Sequence[VoteRow]) -> VoteCalibrator:
    """A calibrator fitted on held-out vote rows (each row's top candidate an example)."""
    x, y = _design(rows)
    cal = VoteCalibrator(fit_platt(x, y))
    raw_conf, correct, _ = top_predictions(rows, None)
    cal_conf, _, _ = top_predictions(rows, cal)
    cal.report = {
        "queries": len(rows),
        "examples": len(y),
        "top1_accuracy": float(correct.mean()) if len(rows) else None,
        "ece_raw": expected_calibration_error(raw_conf, correct),
        "ece_fitted": expected_calibration_error(cal_conf, correct),
    }
    return cal


def cross_fitted_confidence(
    rows: Sequence[VoteRow],
    *,
    folds: int = 5,
    seed: int = 0,
    groups: Sequence[object] | None = None,
) -> np.ndarray:
    """Each row's calibrated top probability from a calibrator fitted on the other folds."""
    n = len(rows)
    fold = fold_of(list(range(n)) if groups is None else list(groups), folds, seed)
    conf = np.zeros(n)
    for f in range(folds):
        test, train = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
        if test.size and train.size:
            cal = fit_calibrator([rows[i] for i in train])
            conf[test], _, _ = top_predictions([rows[i] for i in test], cal)
    return conf


def choose_named_threshold(
    rows: Sequence[VoteRow], *, min_similarity: float, target: float, seed: int = 0
) -> dict[str, Any]:
    """The named-answer threshold for `target` precision from the rows' held-out risk-coverage
    curve (None when none qualifies), with the coverage and precision it gives."""
    conf = cross_fitted_confidence(rows, seed=seed)
    _, correct, _ = top_predictions(rows, None)
    best = np.array([r.best_similarity for r in rows])
    curve = risk_coverage(conf, correct, best, min_similarity)
    chosen = choose_threshold(curve, target=target, min_coverage=MIN_NAMED / max(1, len(rows)))
    out: dict[str, Any] = {
        "named_threshold": chosen,
        "target_precision": float(target),
        "min_similarity": float(min_similarity),
        "named_coverage": None,
        "named_precision": None,
    }
    if chosen is not None:
        i = int(np.argmin(np.abs(curve.grid - chosen)))
        out["named_coverage"] = float(curve.coverage[i])
        out["named_precision"] = float(curve.precision[i])
    return out


def fit_vote_calibration(
    labels: Sequence[str],
    vectors: np.ndarray,
    *,
    fingerprint: str,
    key: str,
    k: int = 10,
    seed: int = 0,
    min_similarity: float | None = None,
    target_precision: float | None = None,
    lineage: LineageFn | None = None,
    temperature: float = TEMPERATURE,
) -> VoteCalibrator | None:
    """Leave-one-out over the photos (at most MAX_QUERIES queries) and a fitted calibrator;
    None when there are too few photos to say anything. With `min_similarity` and
    `target_precision`, the named-answer threshold is chosen too (`choose_named_threshold`);
    with `lineage`, each rank of RANK_LADDER gets its own calibration and threshold."""
    n = len(labels)
    if n < MIN_QUERIES:
        return None
    queries = None
    if n > MAX_QUERIES:
        queries = np.sort(np.random.default_rng(seed).choice(n, MAX_QUERIES, replace=False))
    rows = loo_vote_rows(vectors, labels, k=k, queries=queries, temperature=temperature)
    if len(rows) < MIN_QUERIES:
        return None
    cal = fit_calibrator(rows)
    cal.fingerprint, cal.key = fingerprint, key
    cal.report["k"] = k
    cal.report["temperature"] = temperature
    choose = min_similarity is not None and target_precision is not None
    if choose:
        cal.report.update(
            choose_named_threshold(
                rows, min_similarity=min_similarity, target=target_precision, seed=seed
            )
        )
    for rank in RANK_LADDER if lineage is not None else ():
        seen = rank_rows(rows, rank, lineage)
        if len(seen) < MIN_QUERIES:
            continue
        fitted = fit_calibrator(seen)
        cal.ranks[rank] = fitted.coef
        summary = dict(fitted.report)
        if choose:
            summary.update(
                choose_named_threshold(
                    seen, min_similarity=min_similarity, target=target_precision, seed=seed
                )
            )
        cal.report.setdefault("ranks", {})[rank] = summary
    return cal
