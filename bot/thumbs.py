"""Downscaled JPEG copies of collection photos, fit for Telegram albums.

Collection originals can be large (tens of MB, any format); Telegram refuses photos over 10 MB,
with width + height > 10000 or an aspect ratio over 20. A copy with the longest side at 1280 px is
made once per (path, mtime, size) and kept on disk, so a photo is never re-encoded twice.
All functions are blocking: call them through `asyncio.to_thread`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from core.imageio import load_image

log = logging.getLogger(__name__)

MAX_SIDE = 1280
JPEG_QUALITY = 85
MAX_ASPECT = 20.0
MAX_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class PhotoKey:
    """Identity of one version of a collection file: a changed file gets a new key."""

    path: str
    mtime_ns: int
    size: int

    @classmethod
    def of(cls, path: str | Path) -> PhotoKey:
        stat = os.stat(path)
        return cls(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)

    def __str__(self) -> str:
        return f"{self.path}|{self.mtime_ns}|{self.size}"

    @property
    def digest(self) -> str:
        return hashlib.sha256(str(self).encode("utf-8")).hexdigest()[:32]


def _fit_aspect(image: Image.Image) -> Image.Image:
    """Centre-crop panoramas beyond Telegram's 20:1 aspect limit."""
    width, height = image.size
    if width > height * MAX_ASPECT:
        new_width = int(height * MAX_ASPECT)
        left = (width - new_width) // 2
        return image.crop((left, 0, left + new_width, height))
    if height > width * MAX_ASPECT:
        new_height = int(width * MAX_ASPECT)
        top = (height - new_height) // 2
        return image.crop((0, top, width, top + new_height))
    return image


def render_jpeg(
    source: Path,
    max_side: int = MAX_SIDE,
    quality: int = JPEG_QUALITY,
    *,
    max_pixels: int = 60_000_000,
    max_bytes: int = 50 * 1024 * 1024,
) -> bytes:
    """Encode `source` as an upright RGB JPEG within Telegram's photo limits.

    Decoding goes through `load_image`, so odd modes (16-bit, CMYK, alpha) and bombs are handled
    as everywhere else; JPEGs decode at reduced scale when they are much larger than needed.
    """
    image = load_image(
        source, max_pixels=max_pixels, max_bytes=max_bytes, min_side=1, target_size=max_side
    )
    image = _fit_aspect(image)
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    while True:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality, optimize=True)
        data = buffer.getvalue()
        if len(data) <= MAX_BYTES or quality <= 40:
            return data
        quality -= 15


def _write_atomic(target: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a JPEG behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".jpg")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ThumbnailCache:
    """Album-ready JPEG copies under `<state_dir>/thumbs`, named by the photo's key digest."""

    def __init__(
        self, state_dir: Path, *, max_pixels: int = 60_000_000, max_bytes: int = 50 * 1024 * 1024
    ) -> None:
        self.root = Path(state_dir) / "thumbs"
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes

    def path_for(self, key: PhotoKey) -> Path:
        return self.root / key.digest[:2] / f"{key.digest}.jpg"

    def get(self, source: str | Path, key: PhotoKey | None = None) -> bytes:
        """JPEG bytes for `source`, rendered on first use and read from disk afterwards.

        Raises when `source` cannot be read or decoded; a cache that cannot be written (disk full,
        read-only) only costs a re-render next time.
        """
        key = key or PhotoKey.of(source)
        cached = self.path_for(key)
        try:
            return cached.read_bytes()
        except FileNotFoundError:
            pass
        data = render_jpeg(Path(source), max_pixels=self.max_pixels, max_bytes=self.max_bytes)
        try:
            _write_atomic(cached, data)
        except OSError as exc:
            log.warning("Could not cache the album copy of %s: %s", source, exc)
        return data
