"""A second opinion from the backbone's own ImageNet head, for species the collection lacks.

`core/data/imagenet_animals.csv` maps the 398 animal classes of ImageNet-1k (indices 0..397) to
the best scientific name each class supports, with its rank: `species`, `subspecies`, a higher
taxon (`genus`, `tribe`, `subfamily`, `family`, `superfamily`, `infraorder`, `suborder`, `order`,
`class`, `phylum`, `clade`) when the class is a group (ImageNet "hummingbird" -> Trochilidae), or
`breed` / `domestic` for breeds and domestic forms (118 dog breeds -> Canis lupus familiaris, five
cat classes -> Felis catus, "hen" -> Gallus gallus domesticus). Classes 398..999 are objects.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

NUM_CLASSES = 1000
NUM_ANIMALS = 398
TABLE = Path(__file__).parent / "data" / "imagenet_animals.csv"


@dataclass(frozen=True)
class AnimalClass:
    """One row of the table."""

    index: int
    imagenet_name: str
    scientific_name: str
    rank: str


@lru_cache(maxsize=1)
def animal_classes() -> tuple[AnimalClass, ...]:
    """The 398 animal classes in ImageNet order (read once from the packaged CSV)."""
    text = TABLE.read_text(encoding="utf-8")
    rows = tuple(
        AnimalClass(int(r["index"]), r["imagenet_name"], r["scientific_name"], r["rank"])
        for r in csv.DictReader(text.splitlines())
    )
    if [r.index for r in rows] != list(range(NUM_ANIMALS)):
        raise ValueError(f"{TABLE.name} must list ImageNet classes 0..{NUM_ANIMALS - 1} in order")
    return rows


@lru_cache(maxsize=1)
def _group_ids() -> tuple[np.ndarray, tuple[str, ...]]:
    """Per animal class, the id of its scientific name (classes sharing a name pool their mass)."""
    names: dict[str, int] = {}
    ids = np.array(
        [names.setdefault(r.scientific_name, len(names)) for r in animal_classes()], dtype=np.int64
    )
    return ids, tuple(names)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def _check(logits: np.ndarray) -> np.ndarray | None:
    """Softmax of ImageNet-1k logits, or None for a head of another size (a species checkpoint)."""
    arr = np.asarray(logits)
    if arr.size != NUM_CLASSES or not np.all(np.isfinite(arr)):
        return None
    return _softmax(arr)


def animal_share(logits: np.ndarray | None) -> float | None:
    """Softmax mass on the 398 animal classes (low: the photo likely shows no animal); None when
    the logits are not ImageNet-1k's (a species checkpoint), so no such judgement can be made."""
    p = None if logits is None else _check(logits)
    return None if p is None else float(p[:NUM_ANIMALS].sum())


def is_probably_animal(logits: np.ndarray) -> float:
    """Softmax mass on the 398 animal classes: low values suggest the photo shows no animal."""
    return animal_share(logits) or 0.0


def imagenet_fallback(logits: np.ndarray, *, min_confidence: float = 0.2) -> dict[str, Any] | None:
    """ImageNet's guess for one photo (logits shape (1000,)), or None when it is not an animal.

    The top class must be an animal; then classes mapping to the same scientific name pool their
    probability (a dog split over 118 breeds is still confidently a dog), the best pooled name is
    the answer, and it must reach `min_confidence`. A non-animal top class, a low pooled
    probability, or logits that are not ImageNet-1k (e.g. a fine-tuned species head) give None.
    """
    p = _check(logits)
    if p is None or int(np.argmax(p)) >= NUM_ANIMALS:
        return None
    ids, names = _group_ids()
    pooled = np.bincount(ids, weights=p[:NUM_ANIMALS], minlength=len(names))
    group = int(np.argmax(pooled))
    confidence = float(pooled[group])
    if confidence < min_confidence:
        return None
    members = np.flatnonzero(ids == group)
    best = animal_classes()[int(members[np.argmax(p[members])])]
    return {
        "species": best.scientific_name,
        "common_name": best.imagenet_name,
        "confidence": confidence,
        "rank": best.rank,
        "source": "imagenet",
    }
