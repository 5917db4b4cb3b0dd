"""The species answer's wording (issue 9): calibrated words, no 100 %, no tiny candidates."""

from __future__ import annotations

import pytest

from bot.formatting import classification_text, hedge, probability_percent


def _species(p: float, **extra) -> dict:
    return {
        "species": "Canis lupus",
        "confidence": p,
        "probabilities": {"Canis lupus": p, "Vulpes vulpes": 0.2, "Felis catus": 0.03},
        "source": "knn",
        "calibrated": True,
        "rank": "species",
        "taxon": "Canis lupus",
        **extra,
    }


@pytest.mark.parametrize(
    ("p", "en", "ru"),
    [
        (0.95, "Almost certainly", "Почти наверняка"),
        (0.9, "Almost certainly", "Почти наверняка"),
        (0.75, "Probably", "Вероятно"),
        (0.5, "Possibly", "Возможно"),
    ],
)
def test_calibrated_words(p: float, en: str, ru: str) -> None:
    assert hedge("en", p) == en and hedge("ru", p).startswith(ru)
    assert en in classification_text("en", _species(p), all_probabilities=False)
    assert ru in classification_text("ru", _species(p), all_probabilities=False)


def test_never_shows_100_percent() -> None:
    assert probability_percent(1.0) == "99%" and probability_percent(0.999) == "99%"
    for lang in ("en", "ru"):
        for flag in (True, False):
            text = classification_text(lang, _species(1.0), all_probabilities=flag)
            text = text.replace("\xa0", "")  # Russian puts a no-break space before %
            assert "100%" not in text and "99%" in text
    raw = {"species": "Canis lupus", "confidence": 1.0, "probabilities": {"Canis lupus": 1.0}}
    assert "100%" not in classification_text("en", raw, all_probabilities=True)


def test_candidates_under_five_percent_are_hidden() -> None:
    text = classification_text("en", _species(0.75), all_probabilities=True)
    assert "Vulpes vulpes" in text and "Felis catus" not in text
    unsure = {
        "species": None,
        "confidence": 0.3,
        "probabilities": {"Canis lupus": 0.3, "Vulpes vulpes": 0.049},
        "rank": None,
    }
    text = classification_text("en", unsure, all_probabilities=False)
    assert "Canis lupus" in text and "Vulpes vulpes" not in text


def test_genus_level_answer() -> None:
    result = {
        "species": None,
        "confidence": 0.45,
        "probabilities": {"Felis catus": 0.45, "Felis silvestris": 0.35, "Lynx lynx": 0.04},
        "source": "knn",
        "calibrated": True,
        "rank": "genus",
        "taxon": "Felis",
        "taxon_confidence": 0.8,
        "likely_species": "Felis catus",
    }
    en = classification_text("en", result, all_probabilities=False)
    assert en.splitlines()[0] == (
        "🐾 Probably an animal of the genus <b><i>Felis</i></b> (80%), "
        "most likely <i>Felis catus</i> (45%)"
    )
    assert "Felis silvestris" in en and "Lynx lynx" not in en
    ru = classification_text("ru", result, all_probabilities=False)
    assert "рода <b><i>Felis</i></b>" in ru and ru.startswith("🐾 Вероятно,")
    family = {**result, "rank": "family", "taxon": "Felidae", "taxon_confidence": 0.93}
    assert "Almost certainly an animal of the family" in classification_text(
        "en", family, all_probabilities=False
    )


def test_numbers_follow_the_language() -> None:
    from bot.formatting import percent

    assert percent(0.051, "en") == "5.1%" and percent(0.87, "en") == "87%"
    assert percent(0.051, "ru") == "5,1\xa0%" and percent(0.87, "ru") == "87\xa0%"
