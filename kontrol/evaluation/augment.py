"""The six alterations of the near-duplicate test: what happens to a photo on its way to a chat.

Each one mimics a real path a collection photo takes back to the bot (a screenshot crop, a mirrored
selfie-camera copy, messenger recompression, a thumbnail, a phone's "vivid" filter, a tilted
re-photograph). Only the crop is random; its position comes from the seed, so a run is repeatable.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable

from PIL import Image, ImageEnhance, ImageOps

Alteration = Callable[[Image.Image, random.Random], Image.Image]

CROP_FRACTION = 0.7
JPEG_QUALITY = 25
DOWNSCALE_FACTOR = 4
BRIGHTNESS = 1.3
SATURATION = 0.5
ROTATION_DEGREES = 12.0


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def random_crop(image: Image.Image, rng: random.Random) -> Image.Image:
    """A window of 70% of the width and height at a seeded random position."""
    image = _rgb(image)
    w, h = image.size
    cw, ch = max(1, round(w * CROP_FRACTION)), max(1, round(h * CROP_FRACTION))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return image.crop((x, y, x + cw, y + ch))


def horizontal_flip(image: Image.Image, rng: random.Random) -> Image.Image:
    """Mirror left-right."""
    return ImageOps.mirror(_rgb(image))


def jpeg_recompress(image: Image.Image, rng: random.Random) -> Image.Image:
    """Encode as JPEG at quality 25 and decode again (heavy blocking and colour bleeding)."""
    buffer = io.BytesIO()
    _rgb(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def downscale(image: Image.Image, rng: random.Random) -> Image.Image:
    """A quarter of the width and of the height (at least 1 pixel each)."""
    image = _rgb(image)
    w, h = image.size
    size = (max(1, w // DOWNSCALE_FACTOR), max(1, h // DOWNSCALE_FACTOR))
    return image.resize(size, Image.Resampling.LANCZOS)


def brighten_desaturate(image: Image.Image, rng: random.Random) -> Image.Image:
    """Brightness x1.3, then colour saturation x0.5."""
    brighter = ImageEnhance.Brightness(_rgb(image)).enhance(BRIGHTNESS)
    return ImageEnhance.Color(brighter).enhance(SATURATION)


def rotate(image: Image.Image, rng: random.Random) -> Image.Image:
    """Turn 12 degrees counter-clockwise on the same canvas; the uncovered corners are black."""
    return _rgb(image).rotate(ROTATION_DEGREES, resample=Image.Resampling.BICUBIC, fillcolor=0)


#: Name -> alteration, in the order reports list them.
ALTERATIONS: dict[str, Alteration] = {
    "crop70": random_crop,
    "hflip": horizontal_flip,
    "jpeg25": jpeg_recompress,
    "downscale4": downscale,
    "bright_desat": brighten_desaturate,
    "rotate12": rotate,
}


def alter_all(image: Image.Image, seed: int = 0) -> list[tuple[str, Image.Image]]:
    """All six alterations of one image; the same seed gives the same pixels."""
    rng = random.Random(seed)
    return [(name, fn(image, rng)) for name, fn in ALTERATIONS.items()]
