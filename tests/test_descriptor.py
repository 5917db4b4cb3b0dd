"""Descriptors: fingerprints per descriptor, unit vectors of the declared width, and the identities
that pin the arithmetic (a symmetric photo's flip is itself; fusion weight 0 is pooled)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from core.embedders import create_embedder
from core.embedders.base import Embedder, EmbedOutput, l2_normalize
from core.embedders.descriptor import DescriptorEmbedder, animal_hellinger
from core.engine import Engine
from core.errors import ConfigError
from core.imagenet import NUM_ANIMALS
from core.settings import load_settings
from tests.helpers import TinyEmbedder, make_image


class LogitsEmbedder(TinyEmbedder):
    """TinyEmbedder plus fake 1000-class logits derived from the pixels (deterministic)."""

    def __init__(self) -> None:
        super().__init__("logits")
        self._proj = np.random.default_rng(0).normal(size=(48, 1000)).astype(np.float32) * 4

    @property
    def class_names(self) -> list[str]:
        return [f"c{i}" for i in range(1000)]

    def embed_batch(self, batch: np.ndarray) -> EmbedOutput:
        flat = batch.reshape(len(batch), -1)
        return EmbedOutput(l2_normalize(flat), flat @ self._proj)


def _symmetric(seed: int) -> Image.Image:
    """A left-right symmetric picture whose centre crop stays symmetric."""
    half = make_image(seed, (128, 256))
    canvas = Image.new("RGB", (256, 256))
    canvas.paste(half, (0, 0))
    canvas.paste(ImageOps.mirror(half), (128, 0))
    return canvas


def test_fingerprint_names_descriptor_and_parameters(tmp_path: Path) -> None:
    base = {"models_dir": tmp_path, "runtime": "torch"}
    prints = {
        create_embedder(load_settings(**base, **kw)).fingerprint
        for kw in (
            {"descriptor": "pooled"},
            {"descriptor": "flip"},
            {"descriptor": "imagenet_fusion", "fusion_weight": 0.3},
            {"descriptor": "imagenet_fusion", "fusion_weight": 0.5},
            {"descriptor": "imagenet_fusion", "fusion_weight": 0.5, "fusion_temperature": 2.0},
            {"descriptor": "flip_fusion", "fusion_weight": 0.5},
        )
    }
    assert len(prints) == 6
    pooled = create_embedder(load_settings(**base, descriptor="pooled"))
    assert not isinstance(pooled, DescriptorEmbedder)  # pooled indexes keep their fingerprint


def test_bad_parameters_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        DescriptorEmbedder(TinyEmbedder(), "nope")
    with pytest.raises(ConfigError):
        DescriptorEmbedder(TinyEmbedder(), "imagenet_fusion", fusion_weight=1.5)
    with pytest.raises(ConfigError):  # no ImageNet head to fuse
        DescriptorEmbedder(TinyEmbedder(), "imagenet_fusion").load()


@pytest.mark.parametrize("descriptor", ["flip", "imagenet_fusion", "flip_fusion"])
def test_unit_rows_of_declared_dim(descriptor: str) -> None:
    emb = DescriptorEmbedder(LogitsEmbedder(), descriptor, fusion_weight=0.4)
    out = emb.embed_images([make_image(i) for i in range(3)])
    assert out.embeddings.shape == (3, emb.dim)
    np.testing.assert_allclose(np.linalg.norm(out.embeddings, axis=1), 1.0, atol=1e-5)
    assert out.logits is not None and out.logits.shape == (3, 1000)
    assert emb.dim == (448 if "fusion" in descriptor else 48)  # 48 + 398, padded to 16s


def test_flip_of_symmetric_image_equals_pooled_lite0() -> None:
    settings = load_settings(runtime="torch")
    pooled = create_embedder(settings)
    flip = DescriptorEmbedder(pooled, "flip")
    images = [_symmetric(1), _symmetric(2)]
    a, b = pooled.embed_images(images), flip.embed_images(images)
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-5)
    asym = [make_image(3, (256, 256))]
    assert not np.allclose(pooled.embed_images(asym).embeddings, flip.embed_images(asym).embeddings)


def test_flip_is_mirror_invariant() -> None:
    emb = DescriptorEmbedder(LogitsEmbedder(), "flip")
    img = make_image(5)
    a, b = emb.embed_images([img, ImageOps.mirror(img)]).embeddings
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_fusion_weight_zero_is_pooled_padded() -> None:
    base = LogitsEmbedder()
    fused = DescriptorEmbedder(base, "imagenet_fusion", fusion_weight=0.0)
    images = [make_image(i) for i in range(4)]
    ref = base.embed_images(images).embeddings
    out = fused.embed_images(images).embeddings
    np.testing.assert_allclose(out[:, : base.dim], ref, atol=1e-6)
    assert not out[:, base.dim :].any()


def test_fusion_similarity_is_weighted_sum() -> None:
    base = LogitsEmbedder()
    w = 0.3
    fused = DescriptorEmbedder(base, "imagenet_fusion", fusion_weight=w)
    images = [make_image(i) for i in range(2)]
    raw = base.embed_images(images)
    out = fused.embed_images(images).embeddings
    hell = animal_hellinger(raw.logits)
    expected = (1 - w) * raw.embeddings[0] @ raw.embeddings[1] + w * hell[0] @ hell[1]
    assert out[0] @ out[1] == pytest.approx(expected, abs=1e-5)


def test_engine_indexes_and_searches_fused_vectors(tiny_settings) -> None:
    emb: Embedder = DescriptorEmbedder(LogitsEmbedder(), "imagenet_fusion", fusion_weight=0.5)
    engine = Engine(tiny_settings, embedder=emb)
    report = engine.reindex()
    assert report.total == 13
    assert engine.store.count() == 13 and engine.store.info().dim == emb.dim
    assert emb.dim % 16 == 0 and emb.dim >= 48 + NUM_ANIMALS
    path = next(Path(tiny_settings.images_dir, "Canis_lupus").iterdir())
    with Image.open(path) as img:
        hits = engine.find_similar(img.convert("RGB"), top_k=3)
    assert hits[0]["path"].endswith(path.name) and hits[0]["similarity"] > 0.99
    # Another descriptor's index is rebuilt from scratch, never mixed.
    other = Engine(tiny_settings, embedder=DescriptorEmbedder(LogitsEmbedder(), "flip"))
    assert other.reindex().full_rebuild
