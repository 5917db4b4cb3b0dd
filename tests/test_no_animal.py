"""The no-animal check: a photo the backbone does not take for an animal gets no name at all,
since its nearest collection photos are animals whatever it shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bot.formatting import classification_text
from core.answer import classify_neighbours
from core.imagenet import animal_share
from core.settings import Settings
from tests.test_bot_e2e import world  # noqa: F401 - the module's collection and real model


def _logits(hot: dict[int, float]) -> np.ndarray:
    z = np.zeros(1000, dtype=np.float32)
    for i, v in hot.items():
        z[i] = v
    return z


def _answer(share: float | None, min_share: float = 0.2) -> dict:
    return classify_neighbours(
        np.ones(4, dtype=np.float32),
        ["Canis lupus"] * 5,
        np.array([0.95, 0.94, 0.93, 0.9, 0.9]),
        head=None,
        calibrator=None,
        min_similarity=0.5,
        min_confidence=0.35,
        min_probability="auto",
        target_precision=0.85,
        animal_share=share,
        min_animal_share=min_share,
    )


def test_animal_share_of_imagenet_logits_only() -> None:
    assert animal_share(_logits({291: 15.0})) > 0.99  # lion
    assert animal_share(_logits({817: 15.0})) < 0.01  # sports car
    assert animal_share(np.zeros(37)) is None  # a species checkpoint's head: no judgement
    assert animal_share(None) is None


def test_a_photo_without_an_animal_names_nothing() -> None:
    sure = _answer(0.9)
    assert sure["species"] == "Canis lupus" and sure["no_animal"] is False
    silenced = _answer(0.05)
    assert silenced["no_animal"] is True
    assert silenced["species"] is None and silenced["rank"] is None and silenced["taxon"] is None
    assert _answer(None)["species"] == "Canis lupus"  # unknown share: no check
    assert _answer(0.05, min_share=0.0)["species"] == "Canis lupus"  # check turned off


def test_the_bot_says_it_sees_no_animal() -> None:
    silenced = _answer(0.05)
    assert "do not see an animal" in classification_text("en", silenced, all_probabilities=True)
    ru = classification_text("ru", silenced, all_probabilities=False)
    assert "не вижу" in ru and "Canis" not in ru


def test_the_engine_checks_the_query_s_logits(tmp_path: Path) -> None:
    from core.engine import Engine
    from core.settings import load_settings
    from tests.helpers import TinyEmbedder, make_collection

    root = tmp_path / "photos"
    make_collection(root, {"Aa_aa": 4, "Bb_bb": 4})
    settings = load_settings(
        images_dir=root, index_dir=tmp_path / "idx", models_dir=tmp_path / "m", index_type="flat"
    )
    engine = Engine(settings, embedder=TinyEmbedder())
    engine.reindex(train="skip")
    vector = engine.store.fetch([engine.first_photo()["uuid"]]).vectors[0]
    assert engine.classify_vector(vector, _logits({817: 15.0}))["no_animal"] is True
    animal = engine.classify_vector(vector, _logits({291: 15.0}))
    assert animal["no_animal"] is False and animal["rank"] is not None


def test_setting_is_validated() -> None:
    assert Settings().classify_min_animal_share == 0.25
    with pytest.raises(ValueError):
        Settings(classify_min_animal_share=1.5)


def test_the_real_backbone_takes_a_test_pattern_for_no_animal(world) -> None:  # noqa: F811
    """With the offline Lite0 model and the default check, the bot world's coloured test
    patterns (which its own tests classify with the check off) name nothing."""
    from PIL import Image

    from core.engine import Engine

    settings = world.settings.model_copy(update={"classify_min_animal_share": 0.25})
    engine = Engine(settings, embedder=world.engine.embedder)
    photo = next(iter(sorted(world.root.glob("Vulpes_vulpes/*.jpg"))))
    with Image.open(photo) as img:
        result = engine.classify(img.convert("RGB"))
    assert result["no_animal"] is True and result["species"] is None
