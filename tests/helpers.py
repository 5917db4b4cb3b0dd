"""Test doubles and generators shared by the tests (no network, no model weights)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from core.embedders.base import Embedder, EmbedOutput, l2_normalize


class TinyEmbedder(Embedder):
    """A deterministic 48-d embedder (4x4 RGB thumbnail): fast, and similar images stay similar.

    It implements the real interface, so the indexer, store and engine are exercised unchanged.
    """

    name = "tiny"
    dim = 48
    input_size = 16

    def __init__(self, tag: str = "v1") -> None:
        self.tag = tag
        self.loaded = False
        self.embedded = 0

    @property
    def fingerprint(self) -> str:
        return f"tiny-{self.tag}"

    def load(self) -> None:
        self.loaded = True

    def preprocess(self, image: Image.Image) -> np.ndarray:
        small = image.convert("RGB").resize((4, 4), Image.Resampling.BILINEAR)
        arr = np.asarray(small, dtype=np.float32) / 255.0 - 0.5
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def embed_batch(self, batch: np.ndarray) -> EmbedOutput:
        self.embedded += len(batch)
        flat = batch.reshape(len(batch), -1)
        return EmbedOutput(l2_normalize(flat), None)


def make_image(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A varied synthetic picture: a colour gradient background and random shapes."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 256, 3)
    grad = np.linspace(0, 1, w)[None, :, None] * rng.integers(-120, 120, 3)
    arr = np.clip(base + grad + np.zeros((h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
        x1, y1 = x0 + int(rng.integers(5, w // 2)), y0 + int(rng.integers(5, h // 2))
        draw.ellipse((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return img


def make_collection(root: Path, layout: dict[str, int], seed: int = 0) -> list[Path]:
    """Write `<root>/<Species_name>/<uuid>.jpg` files; photos of one species share a palette."""
    paths = []
    for s_i, (species, count) in enumerate(sorted(layout.items())):
        folder = root / species
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(count):
            img = make_image(seed * 1000 + s_i * 100 + j)
            # species-specific tint so same-species photos are closer to each other
            tint = Image.new("RGB", img.size, tuple((s_i * 83 + k * 51) % 256 for k in range(3)))
            img = Image.blend(img, tint, 0.6)
            name = hashlib.md5(f"{species}-{j}-{seed}".encode()).hexdigest()
            path = folder / f"{name}.jpg"
            img.save(path, quality=90)
            paths.append(path)
    return paths
