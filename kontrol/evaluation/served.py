"""Held-out species answers through the engine's own classification path (issue 9, item 4).

Every answer here comes from `core.answer.classify_neighbours`, the function the engine serves,
with a species head and a vote calibration fitted by the engine's own fitting functions
(`core.head_fit.fit_head`, `core.calibration.fit_vote_calibration`) on the same bounded sample
rule. Nothing is written anywhere: the models live in memory for the run.

Held out, two ways:

- **as a new photo** (`held_out_answers`): each photo is asked as if it were just sent; its
  neighbours are all the other photos (what the index would hold, minus the photo and anything in
  its group, e.g. its augmented copies), and the head and calibration that answer it were fitted
  on the folds it is not in. A species with one photo stands for an animal the collection lacks.
- **as an unknown species** (`hide_species=True`): folds are whole species, and neighbours never
  include the query's species: what a photo of an animal missing from the collection gets.

The head answers only where the engine would let it: fitted, and better than the vote on its own
held-out split (`report["preferred"]`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from core.answer import LineageFn, classify_neighbours, named_threshold, table_lineage
from core.calibration import VoteCalibrator, fit_vote_calibration
from core.head import HeadTrainingError, SpeciesHead
from core.head_fit import bounded_sample, fit_head
from core.risk_coverage import fold_of

if TYPE_CHECKING:
    from core.settings import Settings

#: Models fitted here are never saved; this marks them in reports and refuses a mix-up.
EVAL_KEY = "eval:in-memory"
FOLDS = 5
_BLOCK = 512


@dataclass(frozen=True)
class AnswerPolicy:
    """The engine's classification settings (KONTROL_CLASSIFY_*)."""

    k: int = 5
    min_similarity: float = 0.5
    min_confidence: float = 0.35
    min_probability: float | str = "auto"
    target_precision: float = 0.85
    min_animal_share: float = 0.25
    temperature: float = 0.02

    @classmethod
    def from_settings(cls, settings: Settings) -> AnswerPolicy:
        """The policy the engine serves with these settings."""
        return cls(
            settings.classify_neighbors,
            settings.classify_min_similarity,
            settings.classify_min_confidence,
            settings.classify_min_probability,
            settings.classify_target_precision,
            settings.classify_min_animal_share,
            settings.classify_vote_temperature,
        )


@dataclass(frozen=True)
class Models:
    """What the engine would have fitted on a collection: head (may be None) and calibration."""

    head: SpeciesHead | None
    calibrator: VoteCalibrator | None

    @property
    def source(self) -> str:
        return "head" if self.head is not None and self.head.report.get("preferred") else "vote"


def fit_models(
    labels: Sequence[str],
    vectors: np.ndarray,
    policy: AnswerPolicy,
    *,
    seed: int = 0,
    lineage: LineageFn = table_lineage,
) -> Models:
    """The head, vote calibration and named-answer threshold the engine would fit on these
    photos, in memory."""
    labels = [str(v) for v in labels]
    rows = bounded_sample(labels, seed=seed)
    picked = [labels[i] for i in rows]
    try:
        head = fit_head(picked, vectors[rows], fingerprint=EVAL_KEY, key=EVAL_KEY)
    except HeadTrainingError:
        head = None
    calibrator = fit_vote_calibration(
        picked,
        vectors[rows],
        fingerprint=EVAL_KEY,
        key=EVAL_KEY,
        k=policy.k,
        seed=seed,
        min_similarity=policy.min_similarity,
        target_precision=policy.target_precision,
        lineage=lineage,
        temperature=policy.temperature,
    )
    return Models(head, calibrator)


@dataclass
class Answers:
    """Per query: the engine's answer dict and the truth."""

    queries: np.ndarray
    truth: list[str]
    answers: list[dict[str, Any]]
    sources: dict[str, int] = field(default_factory=dict)
    #: The named-answer threshold each fold's models chose (or were configured with).
    thresholds: list[float] = field(default_factory=list)

    def named(self) -> np.ndarray:
        """Answers that name a species."""
        return np.array([a.get("species") is not None for a in self.answers], dtype=bool)

    def right(self) -> np.ndarray:
        """Answers that name the right species ("not sure" is never right)."""
        return np.array(
            [a.get("species") == t for a, t in zip(self.answers, self.truth, strict=True)],
            dtype=bool,
        )

    def confidence(self) -> np.ndarray:
        """The probability shown for the top candidate."""
        return np.array([float(a.get("confidence") or 0.0) for a in self.answers])

    def raw_share(self) -> np.ndarray:
        """The uncalibrated number behind it (the vote share, or the head's probability)."""
        return np.array(
            [float(a.get("vote_share", a.get("confidence")) or 0.0) for a in self.answers]
        )

    def top_correct(self) -> np.ndarray:
        """Is the top candidate (named or not) the right species?"""
        return np.array(
            [
                next(iter(a.get("probabilities") or {}), None) == t
                for a, t in zip(self.answers, self.truth, strict=True)
            ],
            dtype=bool,
        )

    def best_similarity(self) -> np.ndarray:
        return np.array([float(a.get("best_similarity", -1.0)) for a in self.answers])

    def rank_outcomes(self, lineage: LineageFn = table_lineage) -> tuple[np.ndarray, np.ndarray]:
        """(graded answers at genus/family/order/class, that taxon is the truth's): the answers a
        naturalist gets when the species is uncertain, and whether they hold. An answer whose
        truth has no known taxon at that rank (a genus the tables lack) cannot be graded and is
        left out of both; `rank_answered` counts it."""
        graded, right = [], []
        for a, t in zip(self.answers, self.truth, strict=True):
            rank = a.get("rank")
            truth = lineage(t).get(rank) if rank not in (None, "species") else None
            graded.append(truth is not None)
            right.append(truth is not None and truth == a.get("taxon"))
        return np.array(graded, dtype=bool), np.array(right, dtype=bool)

    def rank_answered(self) -> np.ndarray:
        """Answers given at a rank above the species."""
        return np.array([a.get("rank") not in (None, "species") for a in self.answers], dtype=bool)


def _answer(
    vector: np.ndarray,
    species: list[str],
    sims: np.ndarray,
    models: Models,
    policy: AnswerPolicy,
    lineage: LineageFn,
    animal_share: float | None = None,
) -> dict[str, Any]:
    """The engine's answer given the neighbours, with these models and settings (`animal_share`:
    the photo's ImageNet animal mass where its logits are known; stored vectors carry none)."""
    return classify_neighbours(
        vector,
        species,
        sims,
        head=models.head,
        calibrator=models.calibrator,
        min_similarity=policy.min_similarity,
        min_confidence=policy.min_confidence,
        min_probability=policy.min_probability,
        target_precision=policy.target_precision,
        lineage=lineage,
        animal_share=animal_share,
        min_animal_share=policy.min_animal_share,
        temperature=policy.temperature,
    )


def _nearest(sims: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest finite values of one row, best first (ties: lower index
    first); a partition, not a sort of the whole row (eval at 100k photos)."""
    k = min(k, sims.shape[-1])
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    top = np.argpartition(-sims, k - 1)[:k]
    top = top[np.lexsort((top, -sims[top]))]
    return top[np.isfinite(sims[top])]


def held_out_answers(
    vectors: np.ndarray,
    labels: Sequence[str],
    policy: AnswerPolicy,
    *,
    folds: int = FOLDS,
    seed: int = 0,
    groups: Sequence[Any] | None = None,
    voters: np.ndarray | None = None,
    queries: np.ndarray | None = None,
    hide_species: bool = False,
    lineage: LineageFn = table_lineage,
) -> Answers:
    """Every query's answer through the engine's path, held out (see the module docstring).

    `groups` keeps related rows together (a photo and its augmented copies: same fold, never each
    other's neighbour); `voters` marks the rows that form the collection (neighbours and model
    fitting; all by default); `queries` which rows are asked (all by default).
    """
    x = np.asarray(vectors, dtype=np.float32)
    labels = [str(v) for v in labels]
    n = len(labels)
    group = np.array([str(g) for g in (range(n) if groups is None else groups)])
    voting = np.ones(n, dtype=bool) if voters is None else np.asarray(voters, dtype=bool)
    asked = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    species = np.array(labels)
    fold = fold_of(labels if hide_species else list(group), max(2, min(folds, n)), seed)
    answers: dict[int, dict[str, Any]] = {}
    sources: dict[str, int] = {}
    thresholds: list[float] = []
    for f in np.unique(fold[asked]):
        train = voting & (fold != f)
        if not train.any():
            continue
        models = fit_models(
            [labels[i] for i in np.flatnonzero(train)], x[train], policy, seed=seed, lineage=lineage
        )
        thresholds.append(
            named_threshold(
                policy.min_probability,
                policy.target_precision,
                None if models.source == "head" else models.calibrator,
                policy.min_similarity,
            )
        )
        in_fold = asked[fold[asked] == f]
        for start in range(0, len(in_fold), _BLOCK):
            q = in_fold[start : start + _BLOCK]
            sims = x[q] @ x.T
            hidden = group[q][:, None] == group[None, :]
            if hide_species:
                hidden |= species[q][:, None] == species[None, :]
            sims[hidden | ~voting[None, :]] = -np.inf
            for r, qi in enumerate(q):
                top = _nearest(sims[r], policy.k)
                answers[int(qi)] = _answer(
                    x[qi], [labels[j] for j in top], sims[r, top], models, policy, lineage
                )
                answers[int(qi)].setdefault("best_similarity", float(sims[r, top].max(initial=-1)))
            sources[models.source] = sources.get(models.source, 0) + len(q)
    kept = np.array(sorted(answers), dtype=np.int64)
    return Answers(
        kept, [labels[i] for i in kept], [answers[int(i)] for i in kept], sources, thresholds
    )


def outsider_answers(
    queries: np.ndarray,
    vectors: np.ndarray,
    labels: Sequence[str],
    policy: AnswerPolicy,
    *,
    seed: int = 0,
    lineage: LineageFn = table_lineage,
    animal_shares: Sequence[float | None] | None = None,
) -> list[dict[str, Any]]:
    """Answers for photos from outside the collection (e.g. no animal at all), with the models
    fitted on the whole collection: what the engine would say to them (`animal_shares`: each
    photo's ImageNet animal mass, for the engine's no-animal check)."""
    x = np.asarray(vectors, dtype=np.float32)
    labels = [str(v) for v in labels]
    models = fit_models(labels, x, policy, seed=seed, lineage=lineage)
    out = []
    rows = np.asarray(queries, dtype=np.float32).reshape(-1, x.shape[1])
    shares = list(animal_shares) if animal_shares is not None else [None] * len(rows)
    for row, share in zip(rows, shares, strict=True):
        sims = x @ row
        top = _nearest(sims, policy.k)
        neighbours = [labels[j] for j in top]
        out.append(_answer(row, neighbours, sims[top], models, policy, lineage, share))
    return out
