"""core.imageio: every colour mode ends as correct 8-bit RGB; bad input ends as a readable error."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import ImageError, ImageTooLargeError, ImageTooSmallError, KontrolError
from core.imageio import is_image_file, load_image

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _save(im: Image.Image, path: Path, fmt: str, **kw: object) -> Path:
    im.save(path, fmt, **kw)
    return path


def _px(im: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = im.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def _close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 6) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def _stored_mode(path: Path) -> str:
    with Image.open(path) as im:
        return im.mode


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, bit_depth: int, colour_type: int, raw_rows: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw_rows))
        + _png_chunk(b"IEND", b"")
    )


# --- sources ------------------------------------------------------------------------------------


@pytest.fixture
def rgb_jpeg(tmp_path: Path) -> Path:
    return _save(Image.new("RGB", (80, 60), RED), tmp_path / "red.jpg", "JPEG", quality=95)


def test_all_source_kinds(rgb_jpeg: Path) -> None:
    data = rgb_jpeg.read_bytes()
    for source in (rgb_jpeg, str(rgb_jpeg), data, io.BytesIO(data)):
        im = load_image(source)
        assert im.mode == "RGB" and im.size == (80, 60)
        assert _close(_px(im, (40, 30)), RED)


def test_result_is_detached_from_the_file(rgb_jpeg: Path) -> None:
    im = load_image(rgb_jpeg)
    rgb_jpeg.unlink()
    assert im.copy().size == (80, 60)
    assert im.info == {}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.jpg", True),
        ("a.JPEG", True),
        ("dir/b.Png", True),
        ("c.webp", True),
        ("d.gif", True),
        ("e.BMP", True),
        ("f.tif", True),
        ("g.TIFF", True),
        ("h.txt", False),
        ("i.heic", True),
        ("i.HEIF", True),
        ("jpg", False),
        ("k.jpg.json", False),
    ],
)
def test_is_image_file(name: str, expected: bool) -> None:
    assert is_image_file(name) is expected
    assert is_image_file(Path(name)) is expected


# --- colour modes -------------------------------------------------------------------------------


def test_palette_without_transparency(tmp_path: Path) -> None:
    im = Image.new("RGB", (64, 64), BLUE).convert("P", palette=Image.Palette.ADAPTIVE)
    out = load_image(_save(im, tmp_path / "p.png", "PNG"))
    assert out.mode == "RGB" and _px(out, (5, 5)) == BLUE


def test_palette_with_transparency_goes_on_white(tmp_path: Path) -> None:
    im = Image.new("P", (64, 64), 0)
    im.putpalette([*RED, *GREEN] + [0] * (256 * 3 - 6))
    im.paste(1, (32, 0, 64, 64))
    path = _save(im, tmp_path / "pt.png", "PNG", transparency=0)
    out = load_image(path)
    assert _px(out, (5, 5)) == WHITE  # transparent index
    assert _px(out, (50, 5)) == GREEN


def test_gif_with_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (40, 40), 0)
    im.putpalette([*RED, *BLUE] + [0] * (256 * 3 - 6))
    im.paste(1, (20, 0, 40, 40))
    out = load_image(_save(im, tmp_path / "t.gif", "GIF", transparency=0))
    assert _px(out, (2, 2)) == WHITE and _px(out, (30, 2)) == BLUE


def test_rgba_and_la_composited_on_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (40, 40), (*RED, 0))
    rgba.paste((*GREEN, 255), (20, 0, 40, 40))
    out = load_image(_save(rgba, tmp_path / "a.png", "PNG"))
    assert _px(out, (5, 5)) == WHITE and _px(out, (30, 5)) == GREEN

    half = Image.new("RGBA", (40, 40), (0, 0, 0, 128))
    out = load_image(_save(half, tmp_path / "half.png", "PNG"))
    assert _close(_px(out, (5, 5)), (127, 127, 127), tol=2)

    la = Image.new("LA", (40, 40), (0, 0))
    la.paste((100, 255), (20, 0, 40, 40))
    out = load_image(_save(la, tmp_path / "la.png", "PNG"))
    assert _px(out, (5, 5)) == WHITE and _px(out, (30, 5)) == (100, 100, 100)


def test_grey_and_bilevel(tmp_path: Path) -> None:
    out = load_image(_save(Image.new("L", (40, 40), 77), tmp_path / "l.png", "PNG"))
    assert _px(out, (1, 1)) == (77, 77, 77)
    out = load_image(_save(Image.new("1", (40, 40), 1), tmp_path / "b.bmp", "BMP"))
    assert _px(out, (1, 1)) == WHITE


def test_16bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 4096, 32768, 65535]], dtype=np.uint16).repeat(40, 0).repeat(10, 1)
    path = _save(Image.fromarray(values), tmp_path / "g16.png", "PNG")
    assert _stored_mode(path).startswith("I")  # really stored as 16-bit
    out = load_image(path)
    got = [_px(out, (x, 0))[0] for x in (0, 10, 20, 30)]
    assert got == [0, 16, 128, 255]


def test_16bit_grey_tiff(tmp_path: Path) -> None:
    values = np.full((40, 40), 32768, dtype=np.uint16)
    out = load_image(_save(Image.fromarray(values), tmp_path / "g16.tif", "TIFF"))
    assert _px(out, (1, 1)) == (128, 128, 128)


def test_16bit_rgb_png(tmp_path: Path) -> None:
    width, height = 40, 40
    pixel = struct.pack(">HHH", 65535, 32768, 4096)
    rows = b"".join(b"\x00" + pixel * width for _ in range(height))
    path = tmp_path / "rgb16.png"
    path.write_bytes(_png(width, height, 16, 2, rows))
    out = load_image(path)
    assert out.mode == "RGB"
    assert _close(_px(out, (3, 3)), (255, 128, 16), tol=1)


def test_32bit_int_and_float_images(tmp_path: Path) -> None:
    ints = np.full((40, 40), 65535, dtype=np.int32)
    ints[:, 20:] = 0
    out = load_image(_save(Image.fromarray(ints), tmp_path / "i.tif", "TIFF"))
    assert _px(out, (1, 1)) == WHITE and _px(out, (30, 1)) == (0, 0, 0)

    floats = np.full((40, 40), 0.5, dtype=np.float32)
    out = load_image(_save(Image.fromarray(floats), tmp_path / "f.tif", "TIFF"))
    assert _close(_px(out, (1, 1)), (128, 128, 128), tol=1)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (48, 48), (255, 0, 0, 0))  # pure cyan
    path = _save(cmyk, tmp_path / "cmyk.jpg", "JPEG", quality=95)
    assert _stored_mode(path) == "CMYK"
    out = load_image(path)
    assert out.mode == "RGB" and _close(_px(out, (20, 20)), (0, 255, 255), tol=8)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (100, 50), RED)
    im.paste(BLUE, (50, 0, 100, 50))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to display
    path = _save(im, tmp_path / "rot.jpg", "JPEG", exif=exif, quality=95)
    out = load_image(path)
    assert out.size == (50, 100)
    assert _close(_px(out, (25, 10)), RED) and _close(_px(out, (25, 90)), BLUE)


def test_broken_exif_is_ignored(tmp_path: Path) -> None:
    path = _save(
        Image.new("RGB", (60, 60), GREEN), tmp_path / "e.jpg", "JPEG", exif=b"Exif\0\0junk"
    )
    assert load_image(path).size == (60, 60)


def _frames(*colours: tuple[int, int, int]) -> list[Image.Image]:
    return [Image.new("RGB", (40, 40), c) for c in colours]


@pytest.mark.parametrize(("fmt", "suffix"), [("GIF", "gif"), ("WEBP", "webp"), ("PNG", "png")])
def test_animation_uses_first_frame(tmp_path: Path, fmt: str, suffix: str) -> None:
    first, *rest = _frames(RED, GREEN, BLUE)
    kw: dict[str, object] = {"save_all": True, "append_images": rest, "duration": 100}
    if fmt == "WEBP":
        kw["lossless"] = True
    path = _save(first, tmp_path / f"anim.{suffix}", fmt, **kw)
    with Image.open(path) as stored:
        assert getattr(stored, "n_frames", 1) == 3
    out = load_image(path)
    assert out.size == (40, 40) and _close(_px(out, (20, 20)), RED)


# --- JPEG draft -----------------------------------------------------------------------------------


def test_draft_decodes_big_jpeg_smaller_but_not_too_small(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (4000, 3000), GREEN), tmp_path / "big.jpg", "JPEG")
    full = load_image(path)
    assert full.size == (4000, 3000)
    small = load_image(path, target_size=224)
    assert small.size == (500, 375)  # 1/8 scale; shorter side 375 >= 224 / 0.875 = 256
    assert min(load_image(path, target_size=512).size) >= 512 / 0.875


def test_draft_never_goes_below_target(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (600, 520), GREEN), tmp_path / "m.jpg", "JPEG")
    out = load_image(path, target_size=224)
    assert out.size == (300, 260) and min(out.size) >= 256
    # PNGs have no draft mode: left at full size.
    png = _save(Image.new("RGB", (600, 520), GREEN), tmp_path / "m.png", "PNG")
    assert load_image(png, target_size=224).size == (600, 520)


# --- bad input ----------------------------------------------------------------------------------


def test_png_bomb_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png(100_000, 100_000, 8, 2, b"\x00" * 16))
    with pytest.raises(ImageTooLargeError, match="megapixels"):
        load_image(path)


def test_max_pixels_is_checked_per_call(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (200, 100), RED), tmp_path / "x.png", "PNG")
    with pytest.raises(ImageTooLargeError, match="the limit is"):
        load_image(path, max_pixels=19_999)
    assert load_image(path, max_pixels=20_000).size == (200, 100)


def test_pillows_global_limit_is_left_alone(tmp_path: Path) -> None:
    # It used to be set to None on every call, switching off Pillow's guard for the whole process.
    before = Image.MAX_IMAGE_PIXELS
    assert before is not None
    load_image(_save(Image.new("RGB", (40, 40), RED), tmp_path / "x.png", "PNG"))
    assert before == Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize("warnings_as_errors", [False, True])
def test_a_stricter_global_limit_set_elsewhere_is_a_readable_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warnings_as_errors: bool
) -> None:
    path = _save(Image.new("RGB", (200, 100), RED), tmp_path / "x.png", "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 20000 px > 2 x 1000: Pillow's error
    with warnings.catch_warnings():
        if warnings_as_errors:
            warnings.simplefilter("error")
        with pytest.raises(ImageTooLargeError, match=r"more than 0\.001 megapixels\.$"):
            load_image(path, max_pixels=20_000)


def test_too_many_bytes(tmp_path: Path, rgb_jpeg: Path) -> None:
    size = rgb_jpeg.stat().st_size
    for source in (rgb_jpeg, rgb_jpeg.read_bytes(), io.BytesIO(rgb_jpeg.read_bytes())):
        with pytest.raises(ImageTooLargeError, match="too large"):
            load_image(source, max_bytes=size - 1)
    assert load_image(rgb_jpeg, max_bytes=size).size == (80, 60)


def test_truncated_jpeg(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    full = tmp_path / "full.jpg"
    Image.fromarray(noise).save(full, "JPEG", quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_image(cut)


def test_truncated_png(tmp_path: Path) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    data = io.BytesIO()
    Image.fromarray(noise).save(data, "PNG")
    with pytest.raises(ImageError) as info:
        load_image(data.getvalue()[: len(data.getvalue()) // 2])
    assert "truncated" in str(info.value) or "damaged" in str(info.value)


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("Just some text, not a photo.\n")
    with pytest.raises(ImageError, match="not an image") as info:
        load_image(path)
    assert "notes.jpg" in str(info.value)


def test_random_bytes() -> None:
    with pytest.raises(ImageError, match="not an image"):
        load_image(bytes(range(256)) * 4)


def test_heic_gets_a_specific_message() -> None:
    head = struct.pack(">I", 24) + b"ftypheic" + b"\x00" * 200
    with pytest.raises(ImageError, match="HEIC"):
        load_image(head)


def test_unsupported_format_refused(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (40, 40)), tmp_path / "x.ico", "ICO")
    with pytest.raises(ImageError, match="supported format"):
        load_image(path)


def test_empty_missing_and_directory(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(empty)
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(tmp_path)


@pytest.mark.parametrize("size", [(1, 1), (31, 500), (500, 20)])
def test_too_small(tmp_path: Path, size: tuple[int, int]) -> None:
    path = _save(Image.new("RGB", size, RED), tmp_path / "tiny.png", "PNG")
    with pytest.raises(ImageTooSmallError, match="too small"):
        load_image(path)


def test_min_side_is_configurable(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (8, 8), RED), tmp_path / "eight.png", "PNG")
    assert load_image(path, min_side=8).size == (8, 8)
    with pytest.raises(ImageTooSmallError):
        load_image(path, min_side=9)


def test_error_hierarchy_and_messages(tmp_path: Path) -> None:
    assert issubclass(ImageTooLargeError, ImageError)
    assert issubclass(ImageTooSmallError, ImageError)
    assert issubclass(ImageError, KontrolError)
    path = tmp_path / "bad.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    with pytest.raises(ImageError) as info:
        load_image(path)
    message = str(info.value)
    assert message.endswith(".")
    for internal in ("Traceback", "PIL", "SyntaxError", "OSError", "struct", "Errno"):
        assert internal not in message
