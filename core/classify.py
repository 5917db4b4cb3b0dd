"""Species classification from nearest neighbours: a similarity-weighted vote.

Each of the k nearest photos votes for its species with weight exp((s - s_max) / T), s its cosine
similarity to the query; the probabilities are the normalised vote shares. Open set: when the best
neighbour is less similar than `min_similarity`, or the winner's share is below `min_confidence`,
the answer is species=None ("not sure") with the closest candidates, instead of a wrong name.
Both thresholds are settings (KONTROL_CLASSIFY_MIN_SIMILARITY / _MIN_CONFIDENCE); defaults come
from the similarity histograms that `kontrol eval` draws (same- vs different-species pairs).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The vote's temperature where none is given (and that of calibrations fitted before it was a
#: setting); the engine passes KONTROL_CLASSIFY_VOTE_TEMPERATURE.
TEMPERATURE = 0.05
TOP_PROBABILITIES = 5


def vote_shares(
    species: list[str], similarities: np.ndarray, temperature: float = TEMPERATURE
) -> list[tuple[str, float]]:
    """Each species' share of the similarity-weighted vote, largest first (ties: nearer first)."""
    sims = np.asarray(similarities, dtype=np.float64)
    weights = np.exp((sims - sims.max()) / temperature)
    totals: dict[str, float] = {}
    for name, w in zip(species, weights, strict=True):
        totals[name] = totals.get(name, 0.0) + float(w)
    norm = sum(totals.values())
    return sorted(((name, w / norm) for name, w in totals.items()), key=lambda x: -x[1])


def vote(
    species: list[str],
    similarities: np.ndarray,
    *,
    min_similarity: float,
    min_confidence: float,
    temperature: float = TEMPERATURE,
) -> dict[str, Any]:
    """Classify from neighbours (best first). Returns the API's classification dict."""
    if len(species) == 0:
        return {"species": None, "confidence": 0.0, "probabilities": {}, "source": "knn"}
    sims = np.asarray(similarities, dtype=np.float64)
    ranked = vote_shares(species, sims, temperature)
    probabilities = {name: round(p, 6) for name, p in ranked[:TOP_PROBABILITIES]}
    best, best_p = ranked[0]
    sure = float(sims.max()) >= min_similarity and best_p >= min_confidence
    return {
        "species": best if sure else None,
        "confidence": float(best_p),
        "probabilities": probabilities,
        "source": "knn",
        "best_similarity": float(sims.max()),
        # every species' share (not only the top ones shown): rank answers sum them per taxon
        "shares": dict(ranked),
    }
