"""The ImageNet animal table and the fallback guess built on it."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest

from core.imagenet import (
    NUM_ANIMALS,
    TABLE,
    animal_classes,
    imagenet_fallback,
    is_probably_animal,
)

# Genus or higher taxon; binomial; trinomial (subspecies, domestic forms).
LATIN = re.compile(r"^[A-Z][a-z]+( [a-z]+){0,2}$")
WORDS_BY_RANK = {"species": 2, "subspecies": 3}
RANKS = {
    "species",
    "subspecies",
    "breed",
    "domestic",
    "genus",
    "tribe",
    "subfamily",
    "family",
    "superfamily",
    "infraorder",
    "suborder",
    "order",
    "class",
    "phylum",
    "clade",
}


def _logits(hot: dict[int, float]) -> np.ndarray:
    z = np.zeros(1000, dtype=np.float32)
    for i, v in hot.items():
        z[i] = v
    return z


def test_table_matches_torchvision_categories() -> None:
    from torchvision.models import ResNet50_Weights

    categories = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    with TABLE.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == NUM_ANIMALS == 398
    assert [int(r["index"]) for r in rows] == list(range(398))
    assert [r["imagenet_name"] for r in rows] == categories[:398]
    assert len(animal_classes()) == 398


def test_scientific_names_and_ranks_are_well_formed() -> None:
    for row in animal_classes():
        assert LATIN.match(row.scientific_name), row
        assert row.rank in RANKS, row
        words = len(row.scientific_name.split())
        assert words == WORDS_BY_RANK.get(row.rank, words), row
        if row.rank not in {"species", "subspecies", "breed", "domestic"}:
            assert words == 1, row  # higher taxa are uninomials


def test_spot_checks() -> None:
    rows = animal_classes()
    assert (rows[291].imagenet_name, rows[291].scientific_name) == ("lion", "Panthera leo")
    assert rows[207].scientific_name == "Canis lupus familiaris" and rows[207].rank == "breed"
    assert rows[284].scientific_name == "Felis catus"
    assert rows[94].scientific_name == "Trochilidae" and rows[94].rank == "family"
    assert rows[388].scientific_name == "Ailuropoda melanoleuca"


def test_fallback_names_an_animal() -> None:
    result = imagenet_fallback(_logits({291: 8.0}))
    assert result is not None
    assert result["species"] == "Panthera leo" and result["common_name"] == "lion"
    assert result["rank"] == "species" and result["source"] == "imagenet"
    assert result["confidence"] > 0.5


def test_fallback_pools_breeds_of_one_species() -> None:
    # Each breed alone is below the threshold; together they are clearly a dog.
    logits = _logits({i: 5.0 for i in range(151, 161)} | {155: 5.2})
    result = imagenet_fallback(logits, min_confidence=0.3)
    assert result is not None and result["species"] == "Canis lupus familiaris"
    assert result["common_name"] == "Shih-Tzu"  # the best-scoring member class
    p = np.exp(logits - logits.max())
    p /= p.sum()
    assert result["confidence"] == pytest.approx(p[151:269].sum())  # all 118 breeds
    assert p.max() < 0.3


def test_fallback_refuses_non_animals_and_doubt() -> None:
    assert imagenet_fallback(_logits({500: 8.0, 291: 7.0})) is None  # an object wins
    assert imagenet_fallback(np.zeros(1000)) is None  # flat: nothing above 0.2
    assert imagenet_fallback(_logits({291: 2.0}), min_confidence=0.5) is None
    assert imagenet_fallback(np.zeros(37)) is None  # not ImageNet logits (a species checkpoint)


def test_is_probably_animal() -> None:
    assert is_probably_animal(_logits({291: 15.0})) > 0.99
    assert is_probably_animal(_logits({700: 15.0})) < 0.01
    assert is_probably_animal(np.zeros(1000)) == pytest.approx(0.398)
