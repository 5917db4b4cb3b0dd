"""Open any photo a user or a collection may contain and hand back a clean RGB image.

Every image the engine sees passes through `load_image`, so this is the one place that defends
against hostile or odd inputs (decompression bombs, truncated uploads, 16-bit scans, CMYK, palette
transparency, phone rotation) and turns each failure into an `ImageError` a person can read.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import ImageError, ImageTooLargeError, ImageTooSmallError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})

# Formats we let Pillow try; anything else (EPS, PSD, ...) is refused rather than half-supported.
# (Multi-picture phone JPEGs come through the JPEG plugin as format "MPO".)
_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")
_SUPPORTED_TEXT = "JPEG, PNG, WebP, GIF, BMP or TIFF"

# Resize-then-centre-crop pipelines keep 87.5% of the shorter side (224/256); a JPEG draft must
# leave at least target/0.875 pixels there so that step never upsamples.
_CROP_FRACTION = 0.875

_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    KeyError,
    struct.error,
    zlib.error,
)


def is_image_file(path: Path | str) -> bool:
    """True if the name has a photo extension we index (case-insensitive); content is not read."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def load_image(
    source: Path | str | bytes | BinaryIO,
    *,
    max_pixels: int = 60_000_000,
    max_bytes: int = 50 * 1024 * 1024,
    min_side: int = 32,
    target_size: int | None = None,
) -> Image.Image:
    """Decode `source` (a path, raw bytes or a binary stream) into an upright 8-bit RGB image.

    `target_size` lets large JPEGs decode at 1/2, 1/4 or 1/8 scale while keeping the shorter side
    at least `target_size / 0.875`. Raises `ImageTooLargeError` (bytes or pixels over the limit,
    checked before pixels are decoded), `ImageTooSmallError` (shorter side below `min_side`) or
    `ImageError` (not an image, unsupported, damaged or truncated).
    """
    _prepare_pillow()
    stream, label = _open_source(source, max_bytes)
    try:
        return _decode(stream, label, max_pixels, min_side, target_size)
    finally:
        stream.close()


def _prepare_pillow() -> None:
    """Register all format plugins and switch off Pillow's global pixel limit.

    `Image.open(formats=...)` fails on a plugin not yet registered (WebP, TIFF), so load all.
    Our `max_pixels`, checked on the header, replaces the global limit: Pillow's check fires at
    its own process-wide threshold, as a warning or (above twice that) an error, and under
    `-W error` the warning becomes an exception too, so outcomes would depend on warning filters
    and on whoever last set the global. Re-applied on every call in case something reset it.
    """
    Image.init()
    if Image.MAX_IMAGE_PIXELS is not None:
        Image.MAX_IMAGE_PIXELS = None


# --- input --------------------------------------------------------------------------------------


def _open_source(source: Path | str | bytes | BinaryIO, max_bytes: int) -> tuple[BinaryIO, str]:
    """A seekable stream over the input plus a name for messages; enforces `max_bytes`."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        _check_size(len(data), max_bytes, "The image")
        return io.BytesIO(data), "The image"
    if isinstance(source, str | Path):
        path = Path(source)
        label = f"The file '{path.name}'"
        try:
            size = path.stat().st_size
            if not path.is_file():
                raise ImageError(f"{label} is not a regular file.")
        except FileNotFoundError:
            raise ImageError(f"{label} does not exist.") from None
        except OSError as exc:
            raise ImageError(f"{label} cannot be read ({exc.strerror or 'I/O error'}).") from None
        _check_size(size, max_bytes, label)
        try:
            return path.open("rb"), label
        except OSError as exc:
            raise ImageError(f"{label} cannot be read ({exc.strerror or 'I/O error'}).") from None
    # A stream: may be unseekable (a socket, an HTTP body), so read at most one byte too many.
    try:
        data = source.read(max_bytes + 1)
    except (OSError, ValueError):
        raise ImageError("The image could not be read from its stream.") from None
    if not isinstance(data, bytes | bytearray):
        raise ImageError("The image stream did not return bytes.")
    _check_size(len(data), max_bytes, "The image")
    return io.BytesIO(bytes(data)), "The image"


def _check_size(size: int, max_bytes: int, label: str) -> None:
    if size == 0:
        raise ImageError(f"{label} is empty (0 bytes).")
    if size > max_bytes:
        raise ImageTooLargeError(
            f"{label} is too large: {_mib(size)} MB, the limit is {_mib(max_bytes)} MB."
        )


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f}"


def _megapixels(n: int) -> str:
    return f"{n / 1e6:,.0f}" if n >= 1_000_000 else f"{n / 1e6:.2g}"


# --- decoding -----------------------------------------------------------------------------------


def _decode(
    stream: BinaryIO, label: str, max_pixels: int, min_side: int, target_size: int | None
) -> Image.Image:
    head = stream.read(32)
    stream.seek(0)
    try:
        im = Image.open(stream, formats=_FORMATS)
    except UnidentifiedImageError:
        raise ImageError(_unidentified_message(label, head)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(f"{label} has too many pixels to open safely.") from None
    except _DECODE_ERRORS:
        raise ImageError(f"{label} is damaged: its header cannot be read.") from None

    with im:
        width, height = im.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"{label} is too large: {width}x{height} pixels "
                f"({_megapixels(width * height)} megapixels), the limit is "
                f"{_megapixels(max_pixels)} megapixels."
            )
        if min(width, height) < min_side:
            raise ImageTooSmallError(
                f"{label} is too small ({width}x{height} pixels); "
                f"each side must be at least {min_side} pixels."
            )
        if target_size and im.format in ("JPEG", "MPO"):
            need = math.ceil(target_size / _CROP_FRACTION)
            im.draft(None, (need, need))
        try:
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageTooLargeError(f"{label} has too many pixels to open safely.") from None
        except MemoryError:
            raise ImageTooLargeError(f"{label} needs too much memory to decode.") from None
        except _DECODE_ERRORS as exc:
            raise ImageError(_broken_message(label, exc)) from None
        upright = _upright(im)
        try:
            rgb = to_rgb(upright)
        except (ValueError, OSError):
            raise ImageError(f"{label} uses a colour mode ({im.mode}) we cannot convert.") from None
    if rgb is im:
        rgb = rgb.copy()  # detach from the (now closed) file
    rgb.info.clear()
    return rgb


def _upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block leaves the image as stored, not an error."""
    try:
        return ImageOps.exif_transpose(im)
    except _DECODE_ERRORS:
        return im


def _unidentified_message(label: str, head: bytes) -> str:
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif"):
        return f"{label} is HEIC/AVIF, which is not supported; please send a JPEG or PNG."
    if head.lstrip()[:1] in (b"<", b"{") or _looks_like_text(head):
        return f"{label} is not an image (it looks like text). Supported: {_SUPPORTED_TEXT}."
    return f"{label} is not an image in a supported format ({_SUPPORTED_TEXT})."


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def _broken_message(label: str, exc: BaseException) -> str:
    text = str(exc).lower()
    if "truncated" in text or isinstance(exc, EOFError) or "premature" in text:
        return f"{label} is incomplete: the file ends before the picture does (truncated)."
    return f"{label} is damaged: its picture data cannot be decoded."


# --- colour conversion --------------------------------------------------------------------------


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha composited on white, high bit depths rescaled."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        return _on_white(im.convert("RGBA")) if _has_alpha(im) else im.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _on_white(im.convert("RGBA"))
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(im))).convert("RGB")
    return im.convert("RGB")  # 1, L, CMYK (Adobe inversion handled by the JPEG decoder), YCbCr, ...


def _has_alpha(im: Image.Image) -> bool:
    return "transparency" in im.info or (im.palette is not None and im.palette.mode == "RGBA")


def _on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Rescale grey levels to 0-255 by the range the container implies, not by clipping."""
    if arr.dtype.kind == "f":
        data = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(data.min()), float(data.max())
        if lo >= 0.0 and hi <= 1.0:  # normalised float data
            scaled = data * 255.0
        else:
            scaled = (data - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(data)
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    data = arr.astype(np.int64)
    if arr.dtype.itemsize == 2 or (data.min() >= 0 and data.max() > 255 and data.max() <= 65535):
        # 16-bit samples (I;16*, or 16-bit data Pillow widened to mode I): 65535 -> 255.
        return ((data * 255 + 32767) // 65535).astype(np.uint8)
    lo, hi = int(data.min()), int(data.max())
    if lo >= 0 and hi <= 255:  # 8-bit values held in a 32-bit image
        return data.astype(np.uint8)
    scaled = (data - lo) * 255 // (hi - lo) if hi > lo else np.zeros_like(data)
    return scaled.astype(np.uint8)
