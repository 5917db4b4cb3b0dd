"""How the species head answers: its classification dict, open-set aware.

Kept apart from the model (`core.head`) and its fitting (`core.head_fit`): the policy (when to
say "not sure") changes with product decisions, the model with data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.head import TOP_PROBABILITIES, SpeciesHead


def head_classification(
    head: SpeciesHead,
    vector: np.ndarray,
    *,
    min_confidence: float,
    best_similarity: float | None = None,
    min_similarity: float | None = None,
) -> dict[str, Any]:
    """The classification dict (as `core.classify.vote`) from the head, open-set aware.

    species is None ("not sure") when the top probability is below `min_confidence`, or when the
    query's best neighbour similarity is below `min_similarity` (the softmax alone cannot tell an
    unseen animal from a known one).
    """
    probs = head.predict_proba(np.asarray(vector).reshape(1, -1))[0]
    order = np.argsort(-probs)
    best_p = float(probs[order[0]])
    sure = best_p >= min_confidence
    if best_similarity is not None and min_similarity is not None:
        sure = sure and best_similarity >= min_similarity
    result: dict[str, Any] = {
        "species": head.classes[order[0]] if sure else None,
        "confidence": best_p,
        "probabilities": {
            head.classes[i]: round(float(probs[i]), 6) for i in order[:TOP_PROBABILITIES]
        },
        "source": "head",
    }
    if best_similarity is not None:
        result["best_similarity"] = float(best_similarity)
    return result
