"""Embedders: offline weights load, both runtimes agree, fingerprints and the ONNX cache behave.

Nothing here touches the network: V2 M tests point TORCH_HOME at an empty folder and make the
download raise, as it does offline.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from core.embedders import PREPROCESS_VERSION, create_backbone, create_embedder
from core.embedders import onnx_runtime as onnx_mod
from core.embedders.checkpoint import CheckpointEmbedder
from core.embedders.efficientnet_lite import EfficientNetLiteEmbedder, lite_weights_path
from core.embedders.onnx_runtime import OnnxEmbedder
from core.embedders.torchvision_v2m import EfficientNetV2MEmbedder
from core.errors import ConfigError, ModelUnavailableError
from core.settings import load_settings

DEMO_DIR = Path(__file__).resolve().parents[1] / "data" / "demo"


# --- synthetic images --------------------------------------------------------------------------
def _natural_ish(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """Smooth coloured background + blurred blobs: low-frequency structure like a photo."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8)
    img = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    w, h = size
    for _ in range(6):
        x0, y0 = int(rng.uniform(0, w * 0.7)), int(rng.uniform(0, h * 0.7))
        x1, y1 = x0 + int(rng.uniform(30, w * 0.4)), y0 + int(rng.uniform(30, h * 0.4))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(2))
    noise = rng.normal(0, 6, size=(h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype(np.uint8))


def _varied_images() -> list[Image.Image]:
    """Gradients, hard-edged shapes, pure noise, odd sizes and modes."""
    rng = np.random.default_rng(0)
    x = np.linspace(0, 255, 300, dtype=np.float32)
    grad = np.stack(
        [np.tile(x, (200, 1)), np.tile(x[:200, None], (1, 300)), np.full((200, 300), 90)], -1
    )
    shapes = Image.new("RGB", (500, 260), (20, 120, 40))
    d = ImageDraw.Draw(shapes)
    d.rectangle((40, 40, 200, 200), fill=(250, 240, 10))
    d.polygon([(300, 20), (480, 240), (260, 230)], fill=(10, 10, 200))
    noise = rng.integers(0, 256, size=(240, 240, 3), dtype=np.uint8)
    images = [
        Image.fromarray(grad.astype(np.uint8)),
        shapes,
        Image.fromarray(noise),
        _natural_ish(1),
        _natural_ish(2, (180, 400)).convert("L"),  # grayscale, portrait
    ]
    return images + _demo_photos(3)


def _demo_photos(n: int) -> list[Image.Image]:
    """Up to n real photos from the demo collection, if one has been built (optional)."""
    if not DEMO_DIR.is_dir():
        return []
    files = sorted(p for p in DEMO_DIR.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    return [Image.open(p).convert("RGB") for p in files[:n]]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


# --- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def lite0_torch() -> EfficientNetLiteEmbedder:
    emb = EfficientNetLiteEmbedder("efficientnet_lite0")
    emb.load()
    return emb


@pytest.fixture(scope="module")
def lite0_onnx(models_dir: Path) -> OnnxEmbedder:
    emb = OnnxEmbedder(EfficientNetLiteEmbedder("efficientnet_lite0"), models_dir)
    emb.load()
    return emb


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return _varied_images()


# --- EfficientNet-Lite ---------------------------------------------------------------------------
def test_lite0_loads_offline_and_outputs_unit_vectors(lite0_torch, images) -> None:
    out = lite0_torch.embed_images(images[:3])
    assert out.embeddings.shape == (3, 1280)
    assert out.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.embeddings, axis=1), 1.0, atol=1e-5)
    assert out.logits is not None and out.logits.shape == (3, 1000)
    assert out.logits.dtype == np.float32
    assert len(lite0_torch.class_names) == 1000
    assert lite0_torch.dim == 1280 and lite0_torch.input_size == 224


def test_preprocess_shapes_and_modes(lite0_torch) -> None:
    for img in (
        Image.new("RGBA", (50, 900)),
        Image.new("L", (1000, 40)),
        Image.new("P", (224, 224)),
    ):
        arr = lite0_torch.preprocess(img)
        assert arr.shape == (3, 224, 224) and arr.dtype == np.float32


def test_empty_batch(lite0_torch) -> None:
    out = lite0_torch.embed_images([])
    assert out.embeddings.shape == (0, 1280)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_onnx_matches_torch(name, models_dir, lite0_torch, lite0_onnx, images) -> None:
    if name == "efficientnet_lite0":
        ref, ort_emb = lite0_torch, lite0_onnx
    else:
        ref = EfficientNetLiteEmbedder(name)
        ort_emb = OnnxEmbedder(EfficientNetLiteEmbedder(name), models_dir)
        images = images[1:4]  # Lite2 is ~2.5x slower; three kinds of image are enough here
    batch = np.stack([ref.preprocess(img) for img in images])
    a, b = ref.embed_batch(batch), ort_emb.embed_batch(batch)
    cos = (a.embeddings * b.embeddings).sum(1)
    assert cos.min() >= 0.9999, cos
    np.testing.assert_allclose(a.logits, b.logits, atol=2e-3, rtol=1e-3)
    assert ort_emb.input_size == ref.input_size


def _sample_photo(module: str, *parts: str) -> Image.Image:
    """A real photo shipped inside a dev dependency (skip if that package is absent)."""
    mod = pytest.importorskip(module)
    path = Path(mod.__file__).parent.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} not shipped")
    return Image.open(path).convert("RGB")


def test_lite0_recognises_real_photos(lite0_onnx) -> None:
    """Guards architecture + normalisation: a wrong activation or mean/std breaks these first."""
    hopper = _sample_photo("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg")
    flower = _sample_photo("sklearn", "datasets", "images", "flower.jpg")
    logits = lite0_onnx.embed_images([hopper, flower]).logits
    names = lite0_onnx.class_names
    top5 = [[names[i] for i in np.argsort(row)[::-1][:5]] for row in logits]
    assert "military uniform" in top5[0], top5[0]
    assert top5[1][0] == "daisy", top5[1]


def test_horizontal_flip_stays_similar(lite0_onnx) -> None:
    imgs = [_natural_ish(s) for s in (11, 12, 13)]
    flipped = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in imgs]
    out = lite0_onnx.embed_images(imgs + flipped).embeddings
    same = (out[:3] * out[3:]).sum(1)
    other = out[:3] @ out[:3].T
    assert same.min() > 0.9, same
    # A flipped copy is closer to its original than to any other image.
    for i in range(3):
        assert same[i] > max(other[i, j] for j in range(3) if j != i)


def test_fingerprints(tmp_path) -> None:
    base = {"models_dir": tmp_path, "descriptor": "pooled"}  # runtimes, not descriptors
    lite0_t = create_embedder(load_settings(model="efficientnet_lite0", runtime="torch", **base))
    lite0_o = create_embedder(load_settings(model="efficientnet_lite0", runtime="onnx", **base))
    lite2_o = create_embedder(load_settings(model="efficientnet_lite2", runtime="onnx", **base))
    assert lite0_t.fingerprint == lite0_o.fingerprint
    assert lite0_o.fingerprint != lite2_o.fingerprint
    assert PREPROCESS_VERSION in lite0_t.fingerprint
    assert "onnx" not in lite0_o.fingerprint.lower() and "torch" not in lite0_o.fingerprint.lower()
    assert isinstance(lite0_o, OnnxEmbedder) and not isinstance(lite0_t, OnnxEmbedder)
    assert not (tmp_path / "onnx").exists()  # construction and fingerprint do no export


def test_random_weights_only_for_v2m(tmp_path) -> None:
    with pytest.raises(ConfigError):
        create_embedder(load_settings(models_dir=tmp_path), random_weights=True)


# --- ONNX cache ----------------------------------------------------------------------------------
def _copy_cache(src_dir: Path, dst_dir: Path) -> None:
    shutil.copytree(src_dir / "onnx", dst_dir / "onnx")


def _fresh_lite0(models: Path) -> OnnxEmbedder:
    return OnnxEmbedder(EfficientNetLiteEmbedder("efficientnet_lite0"), models)


def test_onnx_cache_reused(lite0_onnx, models_dir, tmp_path, monkeypatch) -> None:
    _copy_cache(models_dir, tmp_path)
    emb = _fresh_lite0(tmp_path)

    def no_export(*_a, **_k):
        raise AssertionError("cache should have been reused")

    monkeypatch.setattr(onnx_mod, "export_onnx", no_export)
    emb.load()
    assert not emb.exported
    assert emb.onnx_path.name == lite0_onnx.onnx_path.name
    assert emb.source._module is None  # the torch model was never built


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no_sidecar"])
def test_damaged_onnx_cache_is_reexported(damage, lite0_onnx, models_dir, tmp_path, images) -> None:
    _copy_cache(models_dir, tmp_path)
    emb = _fresh_lite0(tmp_path)
    path = emb.onnx_path
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(data[:1000] + b"\x00" * 64 + data[1064:])
    else:
        path.with_suffix(".json").unlink()
    emb.load()
    assert emb.exported
    assert onnx_mod.cache_is_valid(path, emb.fingerprint)
    a = emb.embed_images(images[:2]).embeddings
    b = lite0_onnx.embed_images(images[:2]).embeddings
    assert (a * b).sum(1).min() >= 0.9999
    assert not list(path.parent.glob("*.tmp"))  # no temp files left behind


def test_onnx_cache_name_tracks_weights(tmp_path) -> None:
    assert onnx_mod.cache_file_name("m|aaaa|p1") != onnx_mod.cache_file_name("m|bbbb|p1")
    name = onnx_mod.cache_file_name("checkpoint:efficientnet_v2_m|ab/cd|p1-r480")
    assert "/" not in name and name.endswith(".onnx")


def test_onnx_embed_batch_is_thread_safe(lite0_onnx, images) -> None:
    batch = np.stack([lite0_onnx.preprocess(img) for img in images[:4]])
    expected = lite0_onnx.embed_batch(batch).embeddings
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(2):
                results.append(lite0_onnx.embed_batch(batch).embeddings)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 8
    for r in results:
        np.testing.assert_allclose(r, expected, atol=1e-5)


# --- EfficientNet V2 M -------------------------------------------------------------------------
@pytest.fixture
def offline_torch_hub(tmp_path, monkeypatch) -> Path:
    """Empty TORCH_HOME and a download that fails as it does without internet."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def offline(*_a, **_k):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    return home


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_v2m_offline_without_weights_explains(runtime, offline_torch_hub, tmp_path) -> None:
    settings = load_settings(model="efficientnet_v2_m", runtime=runtime, models_dir=tmp_path)
    emb = create_embedder(settings)
    with pytest.raises(ModelUnavailableError) as err:
        emb.load()
    msg = str(err.value)
    assert "https://download.pytorch.org/models/efficientnet_v2_m" in msg
    assert "KONTROL_WEIGHTS_PATH" in msg
    assert str(offline_torch_hub) in msg  # where the cache file would go
    assert not (tmp_path / "onnx").exists()


def test_v2m_missing_weights_path(offline_torch_hub, tmp_path) -> None:
    emb = EfficientNetV2MEmbedder(tmp_path / "nope.pth")
    with pytest.raises(ModelUnavailableError, match=r"nope\.pth"):
        emb.load()


def test_v2m_wrong_weights_file(offline_torch_hub, tmp_path) -> None:
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(2)}, bad)
    with pytest.raises(ModelUnavailableError, match="not an ImageNet efficientnet_v2_m"):
        EfficientNetV2MEmbedder(bad).load()


def test_v2m_random_weights_are_marked(caplog) -> None:
    real = EfficientNetV2MEmbedder(Path("/nonexistent/weights.pth"))
    with caplog.at_level(logging.WARNING):
        rnd = EfficientNetV2MEmbedder(random_weights=True)
        fp = rnd.fingerprint
    assert "RANDOM" in fp and "random" in caplog.text.lower()
    assert rnd.input_size == 480 and len(rnd.class_names) == 1000
    with pytest.raises(ModelUnavailableError):
        _ = real.fingerprint


def test_v2m_preprocessing_matches_torchvision(images) -> None:
    from torchvision.models import EfficientNet_V2_M_Weights

    ref = EfficientNet_V2_M_Weights.IMAGENET1K_V1.transforms()
    ours = EfficientNetV2MEmbedder(random_weights=True)
    for img in images[:3]:
        np.testing.assert_allclose(ours.preprocess(img), ref(img).numpy(), atol=1e-5)


@pytest.mark.slow
def test_v2m_random_weights_onnx_matches_torch(tmp_path) -> None:
    settings = load_settings(model="efficientnet_v2_m", models_dir=tmp_path)
    ort_emb = create_embedder(settings, random_weights=True)
    ref = create_backbone(settings, random_weights=True)
    img = [_natural_ish(5)]
    a, b = ref.embed_images(img), ort_emb.embed_images(img)
    assert a.embeddings.shape == (1, 1280) and a.logits.shape == (1, 1000)
    assert _cos(a.embeddings, b.embeddings).min() >= 0.9999


# --- fine-tuned checkpoint -----------------------------------------------------------------------
SPECIES = ["Vulpes vulpes", "Lynx lynx", "Ursus arctos"]


def _write_checkpoint(
    path: Path, *, name="efficientnet_lite0", classes=SPECIES, head=3, names_in_file=True, prefix=""
) -> Path:
    state = torch.load(
        lite_weights_path("efficientnet_lite0"), map_location="cpu", weights_only=True
    )
    gen = torch.Generator().manual_seed(0)
    state["_fc.weight"] = torch.randn(head, 1280, generator=gen) * 0.05
    state["_fc.bias"] = torch.zeros(head)
    ckpt = {
        "params": {"model": {"name": name, "pretrained": True}, "train": {"epochs": 3}},
        "model_state_dict": {prefix + k: v for k, v in state.items()},
    }
    if names_in_file:
        ckpt["class_names"] = list(classes)
    torch.save(ckpt, path)
    return path


def test_checkpoint_embeds_with_its_own_head(tmp_path, lite0_torch, images) -> None:
    path = _write_checkpoint(tmp_path / "best_model.pth")
    emb = create_embedder(
        load_settings(
            model="checkpoint",
            checkpoint_path=path,
            runtime="torch",
            models_dir=tmp_path,
            descriptor="pooled",
        )
    )
    assert emb.class_names == SPECIES
    out = emb.embed_images(images[:3])
    assert out.logits is not None and out.logits.shape == (3, 3)
    assert out.embeddings.shape == (3, 1280)
    # Same backbone weights as Lite0: same embedding, different fingerprint (own head/file).
    ref = lite0_torch.embed_images(images[:3]).embeddings
    assert (out.embeddings * ref).sum(1).min() >= 0.9999
    assert emb.fingerprint != lite0_torch.fingerprint
    assert emb.fingerprint.startswith("checkpoint:efficientnet_lite0|")

    ort_emb = create_embedder(
        load_settings(
            model="checkpoint",
            checkpoint_path=path,
            runtime="onnx",
            models_dir=tmp_path,
            descriptor="pooled",
        )
    )
    assert ort_emb.fingerprint == emb.fingerprint
    b = ort_emb.embed_images(images[:3])
    np.testing.assert_allclose(b.logits, out.logits, atol=2e-3)


@pytest.mark.parametrize("form", ["list", "dict", "wrapped"])
def test_checkpoint_class_names_from_sibling_json(form, tmp_path) -> None:
    path = _write_checkpoint(tmp_path / "best_model.pth", names_in_file=False, prefix="module.")
    payload = {
        "list": SPECIES,
        "dict": {str(i): n for i, n in enumerate(SPECIES)},
        "wrapped": {"class_names": SPECIES},
    }[form]
    (tmp_path / "class_names.json").write_text(json.dumps(payload))
    emb = CheckpointEmbedder(path)
    assert emb.class_names == SPECIES
    emb.load()  # `module.` prefix stripped, strict load passes


def test_checkpoint_errors(tmp_path) -> None:
    with pytest.raises(ModelUnavailableError, match="KONTROL_CHECKPOINT_PATH"):
        CheckpointEmbedder(tmp_path / "missing.pth").load()

    unknown = _write_checkpoint(tmp_path / "a.pth", name="resnet50")
    with pytest.raises(ConfigError, match="unknown architecture"):
        CheckpointEmbedder(unknown).load()

    mismatch = _write_checkpoint(tmp_path / "b.pth", classes=[*SPECIES, "Canis lupus"])
    with pytest.raises(ConfigError, match="3 outputs but there are 4"):
        CheckpointEmbedder(mismatch).load()

    (tmp_path / "nonames").mkdir()
    nonames = _write_checkpoint(tmp_path / "nonames" / "c.pth", names_in_file=False)
    with pytest.raises(ConfigError, match="class_names"):
        CheckpointEmbedder(nonames).load()

    wrong_arch = _write_checkpoint(tmp_path / "d.pth", name="efficientnet_lite2")
    with pytest.raises(ConfigError, match="does not match architecture"):
        CheckpointEmbedder(wrong_arch).load()

    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelUnavailableError):
        CheckpointEmbedder(tmp_path / "garbage.pth").load()


def test_serving_path_imports_neither_torch_nor_torchvision() -> None:
    """Start-up cost: with ONNX, resolving the model, its class names, the engine and a store
    must not import torch (2-3 s of a fresh `kontrol search`)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from core.settings import load_settings\n"
        "from core.embedders import create_embedder\n"
        "import core.engine, core.vectorstore.faiss_store, kontrol.cli\n"
        "e = create_embedder(load_settings())\n"
        "assert e.fingerprint and e.input_size and len(e.class_names) == 1000\n"
        "bad = [m for m in ('torch', 'torchvision') if m in sys.modules]\n"
        "print(','.join(bad) or 'clean')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()
    assert out == "clean"
