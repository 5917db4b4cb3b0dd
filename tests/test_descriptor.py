"""Descriptors: fingerprints per descriptor, unit vectors of the declared width, and the identities
that pin the arithmetic (a symmetric photo's flip is itself; fusion weight 0 is pooled)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from core.embedders import create_embedder
from core.embedders.base import Embedder, EmbedOutput, l2_normalize
from core.embedders.descriptor import (
    DIM_MULTIPLE,
    DescriptorEmbedder,
    animal_hellinger,
    animal_softmax,
    lineage_groups,
)
from core.engine import Engine
from core.errors import ConfigError
from core.imagenet import NUM_ANIMALS
from core.settings import load_settings
from core.taxonomy import imagenet_lineage
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
    settings = load_settings(runtime="torch", descriptor="pooled")
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


def test_engine_rebuilds_an_index_of_another_lineage_weight(tiny_settings) -> None:
    def engine(lam: float) -> Engine:
        emb = DescriptorEmbedder(
            LogitsEmbedder(), "imagenet_fusion", fusion_weight=0.5, lineage_weight=lam
        )
        return Engine(tiny_settings, embedder=emb)

    assert engine(0.0).reindex().full_rebuild
    assert not engine(0.0).reindex().full_rebuild  # same λ: kept
    lineage = engine(0.5)
    assert lineage.reindex().full_rebuild  # another λ: rebuilt, never mixed
    assert lineage.store.info().dim == lineage.embedder.dim == 560  # 48 + 398 + 102 -> 560
    assert lineage.store.count() == 13


# --- lineage (KONTROL_LINEAGE_WEIGHT) ----------------------------------------------------------------


def _peaked(*classes: int) -> np.ndarray:
    """One row of 1000 logits per ImageNet class, confident in it."""
    logits = np.zeros((len(classes), 1000), dtype=np.float32)
    logits[np.arange(len(classes)), classes] = 20.0
    return logits


def _index_of(name: str) -> int:
    return next(i for i in range(NUM_ANIMALS) if imagenet_lineage(i).species == name)


def test_lineage_zero_is_todays_fusion_exactly(tmp_path: Path) -> None:
    base = LogitsEmbedder()
    images = [make_image(i) for i in range(4)]
    raw = base.embed_images(images)
    for descriptor in ("imagenet_fusion", "flip_fusion"):
        emb = DescriptorEmbedder(base, descriptor, fusion_weight=0.3, lineage_weight=0.0)
        assert emb.tag == f"{descriptor}-w0.3-t1-d1" and emb.dim == 448
    emb = DescriptorEmbedder(base, "imagenet_fusion", fusion_weight=0.3, lineage_weight=0.0)
    # today's arithmetic, written out: any change to the λ = 0 vectors would rebuild indexes
    w = 0.3
    pad = np.zeros((4, 448 - 48 - NUM_ANIMALS), dtype=np.float32)
    today = l2_normalize(
        np.concatenate(
            [
                np.sqrt(1 - w) * l2_normalize(raw.embeddings),
                np.sqrt(w) * animal_hellinger(raw.logits),
                pad,
            ],
            axis=1,
        )
    )
    np.testing.assert_array_equal(emb.embed_images(images).embeddings, today)
    settings = load_settings(
        models_dir=tmp_path, runtime="torch", descriptor="imagenet_fusion", lineage_weight=0.0
    )
    prints = create_embedder(settings).fingerprint
    w, t = settings.fusion_weight, settings.fusion_temperature
    assert prints.endswith(f"|imagenet_fusion-w{w:g}-t{t:g}-d1")


def test_lineage_weight_is_in_the_fingerprint(tmp_path: Path) -> None:
    base = {"models_dir": tmp_path, "runtime": "torch", "descriptor": "imagenet_fusion"}
    prints = [
        create_embedder(load_settings(**base, lineage_weight=lam)).fingerprint
        for lam in (0.0, 0.25, 0.5)
    ]
    assert len(set(prints)) == 3
    assert f"-l0.25-{lineage_groups().digest}-" in prints[1]
    # pooled / flip have no class part: λ changes nothing there, nor their fingerprint
    flips = {
        create_embedder(
            load_settings(**{**base, "descriptor": "flip"}, lineage_weight=lam)
        ).fingerprint
        for lam in (0.0, 0.5)
    }
    assert len(flips) == 1


@pytest.mark.parametrize("descriptor", ["imagenet_fusion", "flip_fusion"])
@pytest.mark.parametrize("lam", [0.25, 1.0])
def test_lineage_rows_are_unit_and_padded(descriptor: str, lam: float) -> None:
    emb = DescriptorEmbedder(LogitsEmbedder(), descriptor, fusion_weight=0.4, lineage_weight=lam)
    out = emb.embed_images([make_image(i) for i in range(3)]).embeddings
    assert out.shape == (3, emb.dim) and emb.dim % DIM_MULTIPLE == 0
    assert emb.dim >= 48 + NUM_ANIMALS + lineage_groups().columns
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_lineage_similarity_is_the_documented_mix() -> None:
    """cos = (1-w) cos(e,e') + w [(1-λ) BC(p,p') + λ mean_rank BC(p_rank,p_rank')], with a class
    whose rank is unknown grouped by its nearest known lower rank."""
    w, lam = 0.3, 0.6
    rng = np.random.default_rng(1)
    out = EmbedOutput(l2_normalize(rng.normal(size=(3, 48))), rng.normal(size=(3, 1000)) * 3)
    fused = DescriptorEmbedder(
        LogitsEmbedder(), "imagenet_fusion", fusion_weight=w, lineage_weight=lam
    )
    vec = fused._fuse(out).embeddings
    p = animal_softmax(out.logits)
    ranks = ("genus", "family", "order", "class")
    rank_bc = np.zeros((3, 3))
    for i in range(len(ranks)):
        keys = []
        for c in range(NUM_ANIMALS):
            lineage = imagenet_lineage(c)
            keys.append(next((lineage.get(r) for r in ranks[i::-1] if lineage.get(r)), f"#{c}"))
        names = sorted(set(keys))
        member = np.zeros((NUM_ANIMALS, len(names)))
        member[np.arange(NUM_ANIMALS), [names.index(k) for k in keys]] = 1
        q = np.sqrt(p @ member)
        rank_bc += q @ q.T / len(ranks)
    bc = np.sqrt(p) @ np.sqrt(p).T
    expected = (1 - w) * out.embeddings @ out.embeddings.T + w * ((1 - lam) * bc + lam * rank_bc)
    np.testing.assert_allclose(vec @ vec.T, expected, atol=1e-5)


def test_lineage_credits_relatives_not_strangers() -> None:
    leopard, jaguar = _index_of("Panthera pardus"), _index_of("Panthera onca")
    cougar = _index_of("Puma concolor")
    bird = next(i for i in range(NUM_ANIMALS) if imagenet_lineage(i).class_ == "Aves")
    assert imagenet_lineage(cougar).family == imagenet_lineage(leopard).family == "Felidae"
    # the same image embedding for all rows: only the class part differs between pairs
    logits = _peaked(leopard, jaguar, cougar, bird)
    out = EmbedOutput(l2_normalize(np.ones((4, 48), dtype=np.float32)), logits)

    def sims(lam: float) -> np.ndarray:
        emb = DescriptorEmbedder(
            LogitsEmbedder(), "imagenet_fusion", fusion_weight=0.3, lineage_weight=lam
        )
        vec = emb._fuse(out).embeddings
        return vec @ vec.T

    plain, lineage = sims(0.0), sims(0.5)
    assert lineage[0, 1] > plain[0, 1] + 0.05  # same genus, other species
    assert lineage[0, 2] > plain[0, 2] + 0.03  # same family, other genus
    assert lineage[0, 1] > lineage[0, 2]  # the closer relative gains more
    assert lineage[0, 3] == pytest.approx(plain[0, 3], abs=1e-3)  # a bird is no relative


def test_lineage_weight_out_of_range_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="KONTROL_LINEAGE_WEIGHT must be within"):
        DescriptorEmbedder(LogitsEmbedder(), "imagenet_fusion", lineage_weight=1.5)
    with pytest.raises(ConfigError, match="KONTROL_LINEAGE_WEIGHT"):
        load_settings(lineage_weight=-0.1)
    monkeypatch.setenv("KONTROL_LINEAGE_WEIGHT", "1.01")
    with pytest.raises(ConfigError, match="KONTROL_LINEAGE_WEIGHT"):
        load_settings()
    monkeypatch.setenv("KONTROL_LINEAGE_WEIGHT", "0.5")
    assert load_settings().lineage_weight == 0.5
