"""The species answer a user can trust: calibrated probabilities and the most specific safe rank.

`finish_answer` takes the raw classification (neighbour vote or head) and

1. calibrates it: the vote's shares go through the fitted `VoteCalibrator` (the head's
   probabilities are temperature-calibrated already); no shown probability reaches 100 %;
2. names the species when the best neighbour is similar enough (open set) and its calibrated
   probability reaches the named-answer threshold;
3. otherwise answers at the lowest rank whose candidates together reach that threshold: two
   congeneric species splitting the vote become "the genus Felis, probably Felis catus";
4. else "not sure" with the closest candidates.

Keys added to the classification dict (the old ones keep their meaning): `rank` ("species",
"genus", "family", "order" or None), `taxon` (the name at that rank), `taxon_confidence` (its
probability), `likely_species` (the most probable species inside the taxon), `calibrated`.
`species` stays None unless the answer is at species level.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from core.calibration import MAX_PROBABILITY, RANK_LADDER, VoteCalibrator, taxon_shares
from core.classify import TEMPERATURE, vote
from core.head_policy import head_classification
from core.taxonomy import lineage_for, rank_names

if TYPE_CHECKING:
    from core.head import SpeciesHead


LineageFn = Callable[[str], Mapping[str, str]]


@lru_cache(maxsize=4096)
def _table_lineage(species: str) -> dict[str, str]:
    return rank_names(lineage_for(species))


def table_lineage(species: str) -> Mapping[str, str]:
    """Genus, family, order, class of a name from the packaged tables (cached)."""
    return _table_lineage(species)


def finish_answer(
    result: dict[str, Any],
    *,
    calibrator: VoteCalibrator | None,
    min_probability: float,
    min_similarity: float,
    raw_min_confidence: float | None = None,
    lineage: LineageFn = table_lineage,
    rank_thresholds: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Calibrate `result` (from `vote` or `head_classification`) and choose the answer's rank.

    A rank answer needs its taxon's probability to reach `rank_thresholds[rank]` (default: the
    species threshold). For the vote, that probability comes from the calibrator's own map for
    the rank (the vote's share summed per taxon) where one was fitted, else from the species'
    probabilities summed per taxon. Without a calibrator the vote keeps its own decision (species
    or None, made with `raw_min_confidence` on the raw share) and that threshold also gates the
    rank answer.
    """
    out = dict(result)
    all_shares: dict[str, float] = dict(out.pop("shares", None) or {})
    probabilities: dict[str, float] = dict(result.get("probabilities") or {})
    names = list(probabilities)
    raw = np.array([probabilities[n] for n in names], dtype=np.float64)
    best_similarity = result.get("best_similarity")
    source = result.get("source")
    if source == "knn" and calibrator is not None and names:
        probs = calibrator.probability(raw, float(best_similarity or 0.0))
        out["vote_share"] = float(raw[0])
        calibrated, threshold = True, min_probability
    elif source == "head":
        probs = np.minimum(raw, MAX_PROBABILITY)
        calibrated, threshold = True, min_probability
    else:  # the raw vote: its own threshold, its own scale
        probs = raw
        calibrated, threshold = False, None
    if names:
        order = np.argsort(-probs, kind="stable")
        names = [names[i] for i in order]
        probs = probs[order]
        out["probabilities"] = {n: round(float(p), 6) for n, p in zip(names, probs, strict=True)}
        out["confidence"] = float(probs[0])
    out["calibrated"] = calibrated
    gate = best_similarity is None or float(best_similarity) >= min_similarity
    if threshold is not None:
        sure = gate and bool(names) and float(probs[0]) >= threshold
        out["species"] = names[0] if sure else None
    else:
        threshold = min_probability if raw_min_confidence is None else raw_min_confidence
    out.update(rank=None, taxon=None, taxon_confidence=None, likely_species=None)
    if out.get("species") is not None:
        out.update(
            rank="species",
            taxon=out["species"],
            taxon_confidence=float(out["confidence"]),
            likely_species=out["species"],
        )
        return out
    if not gate or not names:
        return out
    shares = all_shares or dict(zip(names, raw[order], strict=True))
    for rank in RANK_LADDER:
        first: dict[str, str] = {}
        for name in (*names, *shares):  # shown candidates first, then every other voter
            taxon = lineage(name).get(rank)
            if taxon:
                first.setdefault(taxon, name)
        # a taxon is at least as likely as its species together: the sum of their probabilities
        totals: dict[str, float] = {}
        for name, value in zip(names, probs, strict=True):
            t = lineage(name).get(rank)
            if t:
                totals[t] = totals.get(t, 0.0) + float(value)
        if source == "knn" and calibrator is not None and rank in calibrator.ranks:
            taxa, summed = taxon_shares(list(shares), list(shares.values()), rank, lineage)
            own = calibrator.rank_probability(rank, summed, float(best_similarity or 0.0))
            assert own is not None  # the rank has a calibration
            for t, value in zip(taxa, own, strict=True):
                totals[t] = max(totals.get(t, 0.0), float(value))
        elif len(names) < 2:  # one species and no rank calibration: its genus is no surer
            return out
        if not totals:
            continue
        taxon = max(totals, key=lambda t: totals[t])
        probability = totals[taxon]
        needed = threshold if rank_thresholds is None else rank_thresholds.get(rank, threshold)
        if probability >= needed:
            out.update(
                rank=rank,
                taxon=taxon,
                taxon_confidence=min(probability, MAX_PROBABILITY),
                likely_species=first.get(taxon),
            )
            return out
    return out


def classify_neighbours(
    vector: np.ndarray,
    species: Sequence[str],
    similarities: np.ndarray,
    *,
    head: SpeciesHead | None,
    calibrator: VoteCalibrator | None,
    min_similarity: float,
    min_confidence: float,
    min_probability: float | str,
    target_precision: float,
    lineage: LineageFn = table_lineage,
    animal_share: float | None = None,
    min_animal_share: float = 0.0,
    temperature: float = TEMPERATURE,
) -> dict[str, Any]:
    """The species answer for a query given its nearest photos (species, similarity; best first).

    The one classification path: the engine serves it and `kontrol eval` measures it. The head
    answers when it is fitted for this label set and proved better than the vote on held-out
    photos (`report["preferred"]`); otherwise the neighbour vote does. Either way `finish_answer`
    calibrates the result and picks the rank, naming a species at `named_threshold`. A photo
    whose backbone puts less than `min_animal_share` of its ImageNet probability on animal
    classes (`animal_share`; None: unknown) names nothing and is marked `no_animal`: its nearest
    neighbours are animals whatever it shows.
    """
    sims = np.asarray(similarities, dtype=np.float32)
    use_head = head is not None and bool(head.report.get("preferred"))
    threshold = named_threshold(
        min_probability,
        target_precision,
        None if use_head else calibrator,
        min_similarity,
    )
    if use_head:
        assert head is not None
        result = head_classification(
            head,
            vector,
            min_confidence=min_confidence,
            best_similarity=float(sims.max()) if len(sims) else -1.0,
            min_similarity=min_similarity,
        )
    else:
        result = vote(
            [str(s) for s in species],
            sims,
            min_similarity=min_similarity,
            min_confidence=min_confidence,
            temperature=temperature,
        )
    out = finish_answer(
        result,
        calibrator=calibrator,
        min_probability=threshold,
        min_similarity=min_similarity,
        raw_min_confidence=min_confidence,
        lineage=lineage,
        rank_thresholds={
            rank: named_threshold(
                min_probability,
                target_precision,
                None if use_head else calibrator,
                min_similarity,
                rank,
            )
            for rank in RANK_LADDER
        },
    )
    if out.get("calibrated"):
        out["named_threshold"] = threshold
    out["no_animal"] = animal_share is not None and animal_share < min_animal_share
    if out["no_animal"]:
        out.update(species=None, rank=None, taxon=None, taxon_confidence=None, likely_species=None)
    return out


def named_threshold(
    configured: float | str,
    target_precision: float,
    calibrator: VoteCalibrator | None,
    min_similarity: float,
    rank: str = "species",
) -> float:
    """The calibrated probability a species must reach to be named.

    A number configured is used as is. 'auto': the threshold the vote calibration chose from the
    collection's risk-coverage curve for the target precision; without one (the head answers, or
    the collection could not show a threshold), the target itself, which calibrated probabilities
    keep on average.
    """
    if configured != "auto":
        return float(configured)
    chosen = (
        calibrator.named_threshold(target_precision, min_similarity, rank) if calibrator else None
    )
    return target_precision if chosen is None else chosen
