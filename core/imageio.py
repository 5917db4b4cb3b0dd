"""Open any photo a user or a collection may contain and hand back a clean RGB image.

Every image the engine sees passes through `load_image`, so this is the one place that defends
against hostile or odd inputs (decompression bombs, truncated uploads, 16-bit scans, CMYK, palette
transparency, phone rotation, iPhone HEIC) and turns each failure into an `ImageError` a person can
read. Memory is bounded too: each decode reserves its estimated peak from a process-wide budget
(`core.decode_budget`) before decoding, and large images are shrunk right after decoding when the
caller only needs `target_size` pixels.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from contextlib import closing
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.decode_budget import DecodeBudget, get_decode_budget
from core.errors import ImageError, ImageTooLargeError, ImageTooSmallError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif"}
)

# Formats we let Pillow try; anything else (EPS, PSD, ...) is refused rather than half-supported.
# (Multi-picture phone JPEGs come through the JPEG plugin as format "MPO"; HEIF is pillow-heif's.)
_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "HEIF")
_SUPPORTED_TEXT = "JPEG, PNG, WebP, GIF, BMP, TIFF or HEIC"

# Resize-then-centre-crop pipelines keep 87.5% of the shorter side (224/256); a JPEG draft must
# leave at least target/0.875 pixels there so that step never upsamples.
_CROP_FRACTION = 0.875

# Images above this many pixels are shrunk (`Image.reduce`) right after decoding when the caller
# needs only `target_size`; smaller ones stay exact, so the embeddings of ordinary photos do not
# change with this step.
_SHRINK_ABOVE_PIXELS = 4_000_000

_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

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
    budget: DecodeBudget | None = None,
) -> Image.Image:
    """Decode `source` (a path, raw bytes or a binary stream) into an upright 8-bit RGB image.

    `target_size` lets large images come back smaller (JPEG draft at 1/2, 1/4 or 1/8 scale; any
    format above 4 megapixels shrunk by an integer factor after decoding) while keeping the
    shorter side at least `target_size / 0.875`. The decode first reserves its estimated memory
    from `budget` (default: the process-wide one) and waits while others hold it. Raises
    `ImageTooLargeError` (bytes, pixels or memory over the limit, checked before pixels are
    decoded), `ImageTooSmallError` (shorter side below `min_side`) or `ImageError` (not an image,
    unsupported, damaged or truncated).
    """
    _prepare_pillow()
    stream, label = _open_source(source, max_bytes)
    try:
        return _decode(
            stream, label, max_pixels, min_side, target_size, budget or get_decode_budget()
        )
    finally:
        stream.close()


_plugins_ready = False


def _prepare_pillow() -> None:
    """Register all format plugins, HEIF (pillow-heif) included, once.

    `Image.open(formats=...)` fails on a plugin not yet registered (WebP, TIFF), so load all.
    Pillow's process-wide `Image.MAX_IMAGE_PIXELS` is left as it is: our `max_pixels`, checked on
    each header, is the stricter limit by default, and other code in the process keeps Pillow's.
    """
    global _plugins_ready
    if _plugins_ready:
        return
    Image.init()
    try:
        from pillow_heif import register_heif_opener

        # Only the primary picture: thumbnails, depth and auxiliary images cost memory for nothing.
        register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
    except ImportError:  # optional at run time: HEIC is then refused with a clear message
        pass
    _plugins_ready = True


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
    stream: BinaryIO,
    label: str,
    max_pixels: int,
    min_side: int,
    target_size: int | None,
    budget: DecodeBudget,
) -> Image.Image:
    im = _open(stream, label, max_pixels)
    try:
        factor, cost = _plan(im, label, max_pixels, min_side, target_size)
        reservation = budget.reserve(cost, label)
    except BaseException:
        im.close()
        raise
    # `close` frees the pixels (Pillow's `with` only closes the file) before the reservation
    # ends, so the budget's malloc_trim after a large decode finds that memory free.
    with reservation, closing(im):
        _load(im, label)
        rgb = _finish(im, factor, _orientation(im), label)
    rgb.info.clear()
    return rgb


def _plan(
    im: Image.Image, label: str, max_pixels: int, min_side: int, target_size: int | None
) -> tuple[int, int]:
    """Check the header's size, set a JPEG draft, and return (shrink factor, bytes to reserve)."""
    width, height = im.size
    if width * height > max_pixels:
        raise ImageTooLargeError(_too_many_pixels(label, im.size, max_pixels))
    if min(width, height) < min_side:
        raise ImageTooSmallError(
            f"{label} is too small ({width}x{height} pixels); "
            f"each side must be at least {min_side} pixels."
        )
    need = math.ceil(target_size / _CROP_FRACTION) if target_size else 0
    if need and im.format in ("JPEG", "MPO"):
        im.draft(None, (need, need))
    factor = _shrink_factor(im.size, need)
    known = _header_orientation(im)
    cost = decode_cost(
        im.mode,
        im.size,
        factor,
        _decoder_extra(im, width * height),
        alpha=im.mode == "P" and _has_alpha(im),
        rotated=known is None or known in _ORIENTATION,
    )
    return factor, cost


def _open(stream: BinaryIO, label: str, max_pixels: int) -> Image.Image:
    """Read the header only; Pillow's own bomb guard (its global limit) maps to our error."""
    head = stream.read(32)
    stream.seek(0)
    try:
        return Image.open(stream, formats=_FORMATS)
    except UnidentifiedImageError:
        raise ImageError(_unidentified_message(label, head)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(_too_many_pixels(label, None, max_pixels)) from None
    except _DECODE_ERRORS:
        raise ImageError(f"{label} is damaged: its header cannot be read.") from None


def _too_many_pixels(label: str, size: tuple[int, int] | None, max_pixels: int) -> str:
    if size is None:  # Pillow's own (process-wide) limit fired first: name the lower one
        limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
        return f"{label} is too large: it has more than {_megapixels(limit)} megapixels."
    return (
        f"{label} is too large: {size[0]}x{size[1]} pixels ({_megapixels(size[0] * size[1])} "
        f"megapixels), the limit is {_megapixels(max_pixels)} megapixels."
    )


def _load(im: Image.Image, label: str) -> None:
    try:
        im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(f"{label} has too many pixels to open safely.") from None
    except MemoryError:
        raise ImageTooLargeError(f"{label} needs too much memory to decode.") from None
    except _DECODE_ERRORS as exc:
        raise ImageError(_broken_message(label, exc)) from None


def _finish(im: Image.Image, factor: int, orientation: int, label: str) -> Image.Image:
    """Shrink (if asked), convert to RGB, then turn upright; never returns `im` itself."""
    try:
        small = _shrink(im, factor) if factor > 1 else im
        rgb = to_rgb(small)
    except (ValueError, OSError):
        raise ImageError(f"{label} uses a colour mode ({im.mode}) we cannot convert.") from None
    method = _ORIENTATION.get(orientation)
    if method is not None:
        rgb = rgb.transpose(method)
    return rgb.copy() if rgb is im else rgb  # detach from the file closed on return


def _orientation(im: Image.Image) -> int:
    """The EXIF (or XMP) orientation; a broken EXIF block means 'as stored', not an error."""
    try:
        value = im.getexif().get(0x0112, 1)
    except _DECODE_ERRORS:
        return 1
    return value if isinstance(value, int) else 1


def _header_orientation(im: Image.Image) -> int | None:
    """The orientation if the header alone tells it, else None.

    PNG keeps EXIF anywhere in the file and its `getexif` decodes the whole image to find it:
    called before the budget is reserved, that would decode outside the budget.
    """
    if "exif" not in im.info and type(im).getexif is not Image.Image.getexif:
        return None
    return _orientation(im)


# --- shrinking and its memory cost --------------------------------------------------------------

# Modes `Image.reduce` averages correctly; the others are first converted to one of these.
_REDUCIBLE = frozenset({"L", "LA", "La", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "I", "F"})


def _shrink_factor(size: tuple[int, int], need: int) -> int:
    """Integer factor that keeps the shorter side >= `need`; 1 (no shrink) for small images."""
    if not need or size[0] * size[1] <= _SHRINK_ABOVE_PIXELS:
        return 1
    return max(1, min(size) // need)


def _shrink(im: Image.Image, factor: int) -> Image.Image:
    """Box-average `im` down by `factor`, converting first where averaging the mode is wrong."""
    mode = im.mode
    if mode in _REDUCIBLE:
        return im.reduce(factor)
    if mode.startswith("I;16"):  # averaged as 32-bit, then back to 16-bit for `to_rgb`
        return im.convert("I").reduce(factor).convert("I;16")
    if mode == "1":
        return im.convert("L").reduce(factor)
    if mode in ("P", "PA"):
        alpha = mode == "PA" or _has_alpha(im)
        return im.convert("RGBA" if alpha else "RGB").reduce(factor)
    return im.convert("RGB").reduce(factor)


def decode_cost(
    mode: str,
    size: tuple[int, int],
    factor: int = 1,
    decoder_extra: int = 0,
    *,
    alpha: bool = False,
    rotated: bool = False,
) -> int:
    """Estimated peak bytes of decoding an image of `mode` and `size` and making it RGB.

    Pillow keeps 1 byte per pixel for 1/L/P, 2 for 16-bit grey and 4 for everything else (RGB
    included). Then either the decoder's own buffers (`decoder_extra`, freed when decoding ends)
    or the conversion that follows is alive, whichever is larger: at full size an RGB copy (plus
    compositing for alpha, numpy work for 16/32-bit, a rotated copy), or, shrinking by `factor`,
    only what `_shrink` converts before averaging. Per-pixel factors were measured, one decode
    per mode and format, by `scripts/bench_upload_memory.py --calibrate` (see RELIABILITY.md).
    """
    pixels = size[0] * size[1]
    stored = _stored_bytes_per_pixel(mode)
    if factor > 1:
        alpha = alpha or mode in ("LA", "RGBA", "PA")
        convert = 0 if mode in _REDUCIBLE else (1 if mode == "1" else 4)
        work = pixels * (convert + (4 if alpha else 0)) + 16 * (pixels // factor**2)
    else:
        alpha = alpha or mode in ("LA", "La", "RGBA", "RGBa", "PA")
        per_pixel = _FULL_SIZE_WORK.get(mode, 9 if alpha else 4)
        # Turning an RGB image upright replaces its copy; other modes rotate their RGB result.
        work = pixels * (per_pixel + (4 if rotated and mode != "RGB" else 0))
    return pixels * stored + max(decoder_extra, work) + _SLACK


# Bytes per pixel converted at full size, beyond the stored image (`to_rgb`'s numpy work).
_FULL_SIZE_WORK = {"I;16": 9, "I;16L": 9, "I;16B": 9, "I;16N": 9, "I": 10, "F": 13}
_SLACK = 2 * 1024 * 1024


def _stored_bytes_per_pixel(mode: str) -> int:
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def _decoder_extra(im: Image.Image, full_pixels: int) -> int:
    """Memory a decoder holds besides the image while it runs: whole-image buffers."""
    pixels = im.size[0] * im.size[1]
    if im.format in ("JPEG", "MPO") and im.info.get("progressive"):
        # Progressive JPEGs keep every DCT coefficient (2 bytes) of the full-size image, even
        # when drafted to 1/8: per pixel 2 bytes times the components' sampling shares.
        layers = getattr(im, "layer", None) or []
        sampling = [h * v for _, h, v, _ in layers] if layers else []
        share = sum(sampling) / max(sampling) if sampling else len(im.getbands())
        return int(full_pixels * 2 * share)
    if im.format == "WEBP":  # libwebp's RGBA frame and canvases, and the copy handed to Pillow
        return pixels * 16
    if im.format == "HEIF":  # libheif's buffer (16-bit samples for HDR) and HEVC decoder state
        return pixels * (10 if int(im.info.get("bit_depth") or 8) > 8 else 5) + 8 * 1024 * 1024
    return 0


def _unidentified_message(label: str, head: bytes) -> str:
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif"):
        if "HEIF" not in Image.OPEN:
            return f"{label} is HEIC/AVIF, which this installation cannot read (pillow-heif)."
        return f"{label} is a HEIC/AVIF file we cannot read (damaged, or AVIF); send a JPEG."
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
    """Rescale grey levels to 0-255 by the range the container implies, not by clipping.

    Works in place on one 32-bit copy: a 60-megapixel scan must not need several 64-bit ones.
    """
    if arr.dtype.kind == "f":
        data = arr.astype(np.float32)
        np.nan_to_num(data, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(data.min()), float(data.max())
        if lo >= 0.0 and hi <= 1.0:  # normalised float data
            data *= 255.0
        elif hi > lo:
            data -= lo
            data *= 255.0 / (hi - lo)
        else:
            data[...] = 0.0
        np.rint(data, out=data)
        np.clip(data, 0, 255, out=data)
        return data.astype(np.uint8)
    lo, hi = int(arr.min()), int(arr.max())
    if arr.dtype.itemsize == 2 or (lo >= 0 and 255 < hi <= 65535):
        # 16-bit samples (I;16*, or 16-bit data Pillow widened to mode I): 65535 -> 255.
        wide = arr.astype(np.uint32)
        wide *= 255
        wide += 32767
        wide //= 65535
        return wide.astype(np.uint8)
    if lo >= 0 and hi <= 255:  # 8-bit values held in a 32-bit image
        return arr.astype(np.uint8)
    if hi == lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    scaled = arr.astype(np.int64)  # rare (negative or > 16-bit values): exact integer scaling
    scaled -= lo
    scaled *= 255
    scaled //= hi - lo
    return scaled.astype(np.uint8)
