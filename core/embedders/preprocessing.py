"""Image -> network input, in plain PIL + NumPy so both runtimes get byte-identical tensors.

The recipe is part of the embedding space: its `tag` goes into every fingerprint, and
`PREPROCESS_VERSION` must be bumped whenever the code below changes what it produces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

#: Bump when the pixels fed to the networks change for the same recipe (invalidates indexes).
PREPROCESS_VERSION = "p1"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The original TF EfficientNet-Lite models were trained on (pixel - 127) / 128.
TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3

_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


@dataclass(frozen=True)
class Preprocessing:
    """Resize the short side to `resize_size`, centre-crop `crop_size`, scale to [0,1], normalise."""

    crop_size: int
    resize_size: int
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def with_crop_ratio(cls, crop_size: int, ratio: float = 0.875, **kw: object) -> Preprocessing:
        """The classic eval recipe: resize to round(S / ratio), then crop S."""
        return cls(crop_size=crop_size, resize_size=round(crop_size / ratio), **kw)  # type: ignore[arg-type]

    @property
    def tag(self) -> str:
        """Short identity of the recipe for fingerprints."""
        norm = "tf" if self.mean == TF_LITE_MEAN else "in" if self.mean == IMAGENET_MEAN else "x"
        return (
            f"{PREPROCESS_VERSION}-r{self.resize_size}c{self.crop_size}-{self.interpolation}-{norm}"
        )

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        """RGB image of exactly crop_size x crop_size (torchvision's Resize + CenterCrop rules)."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_short = self.resize_size
        new_long = max(int(new_short * long / short), new_short)
        size = (new_short, new_long) if w <= h else (new_long, new_short)
        if size != (w, h):
            image = image.resize(size, _FILTERS[self.interpolation])
        s = self.crop_size
        w, h = image.size
        left = round((w - s) / 2.0)
        top = round((h - s) / 2.0)
        return image.crop((left, top, left + s, top + s))

    def __call__(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> (3, S, S) float32, normalised."""
        arr = np.asarray(self.resize_and_crop(image), dtype=np.float32) * (1.0 / 255.0)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        arr = (arr - mean) / std
        return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)
