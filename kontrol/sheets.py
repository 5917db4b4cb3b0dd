"""Pieces of the contact sheets that `kontrol eval` and `kontrol clusters` draw."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

UNREADABLE = (210, 40, 40)


def font(size: int = 12) -> Any:
    """Pillow's default font at `size` (a fixed bitmap font where Pillow lacks FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def thumbnail(path: Path, side: int) -> Image.Image:
    """The whole photo fitted in a square; a grey tile saying so when it cannot be read."""
    tile = Image.new("RGB", (side, side), (235, 235, 235))
    try:
        with Image.open(path) as img:
            img.draft("RGB", (side, side))
            photo = ImageOps.contain(ImageOps.exif_transpose(img).convert("RGB"), (side, side))
    except (OSError, ValueError, Image.DecompressionBombError):
        ImageDraw.Draw(tile).text((8, side // 2 - 8), "unreadable", fill=UNREADABLE, font=font())
        return tile
    tile.paste(photo, ((side - photo.width) // 2, (side - photo.height) // 2))
    return tile
