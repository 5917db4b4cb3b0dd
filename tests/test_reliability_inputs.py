"""Issue 10: odd and oversized inputs. A 59-megapixel PNG of 187 KB, eight at once, HEIC photos.

The decode budget is checked by instrumenting Pillow's `ImageFile.load` (the step that allocates
the pixels): it must run inside a reservation at least as large as the image, and never while
reservations exceed the budget. Resident memory itself is measured by
`scripts/bench_upload_memory.py` (RELIABILITY.md), not here, as it depends on the allocator.
"""

from __future__ import annotations

import io
import struct
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import core.decode_budget as decode_budget
from core.decode_budget import DecodeBudget, get_decode_budget, set_decode_budget
from core.errors import ImageTooLargeError
from core.imageio import decode_cost, load_image

MB = 1024 * 1024
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _black_png(width: int, height: int) -> bytes:
    """An all-black RGB PNG written row by row: 59 megapixels in ~170 KB without the pixels."""
    row = b"\x00" * (1 + 3 * width)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def png_59mp() -> bytes:
    """The image of the report: 7700 x 7700 = 59.3 megapixels, under the 60 MP limit."""
    return _black_png(7700, 7700)


class LoadSpy:
    """Records (pixels, bytes reserved, budget total) whenever Pillow allocates and decodes."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.budget: DecodeBudget | None = None

    def watch(self, budget: DecodeBudget) -> DecodeBudget:
        self.budget = budget
        return budget


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> LoadSpy:
    spy = LoadSpy()
    real = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile):  # type: ignore[no-untyped-def]
        if self.tile and spy.budget is not None:
            spy.calls.append((self.size[0] * self.size[1], spy.budget.in_use, spy.budget.total))
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return spy


# --- the 59-megapixel PNG ------------------------------------------------------------------------


def test_59mp_png_is_decoded_inside_the_budget_and_comes_back_small(
    png_59mp: bytes, loads: LoadSpy
) -> None:
    assert len(png_59mp) < 200_000
    budget = loads.watch(DecodeBudget(1024 * MB))
    im = load_image(png_59mp, target_size=224, budget=budget)
    # Shrunk right after decoding (factor 30): the caller keeps 0.2 MB, not 237 MB.
    assert im.mode == "RGB" and im.size == (257, 257) and min(im.size) >= 224 / 0.875
    pixels, reserved, _ = loads.calls[0]
    assert pixels == 7700 * 7700
    assert reserved >= pixels * 4  # Pillow holds RGB as 4 bytes per pixel
    assert budget.in_use == 0 and budget.peak == reserved


def test_59mp_png_over_the_budget_is_refused_before_decoding(
    png_59mp: bytes, loads: LoadSpy
) -> None:
    budget = loads.watch(DecodeBudget(200 * MB))
    with pytest.raises(ImageTooLargeError) as info:
        load_image(png_59mp, target_size=224, budget=budget)
    message = str(info.value)
    assert message.startswith("The image is too large to decode: it needs about 2")
    assert "KONTROL_DECODE_BUDGET_MB" in message and message.endswith(".")
    assert loads.calls == []  # not a pixel decoded


def _eight_at_once(data: bytes, side: int, loads: LoadSpy) -> None:
    """What the bot does when 8 such documents arrive together (one thread each)."""
    factor = side // 256
    total = 2 * decode_cost("RGB", (side, side), factor) + MB  # room for two at a time
    budget = loads.watch(DecodeBudget(total))
    uploads = [bytes(data) for _ in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        images = pool.map(lambda d: load_image(d, target_size=224, budget=budget), uploads)
        sizes = [im.size for im in images]
    assert sizes == [(-(-side // factor),) * 2] * 8
    assert len(loads.calls) == 8
    assert all(reserved <= total for _, reserved, _ in loads.calls)
    assert budget.peak <= total and budget.in_use == 0


def test_eight_large_pngs_at_once_stay_within_the_budget(loads: LoadSpy) -> None:
    _eight_at_once(_black_png(3000, 3000), 3000, loads)


@pytest.mark.slow
def test_eight_59mp_pngs_at_once_stay_within_the_budget(png_59mp: bytes, loads: LoadSpy) -> None:
    _eight_at_once(png_59mp, 7700, loads)


def test_png_exif_is_read_after_decoding_not_before_the_budget(
    tmp_path: Path, loads: LoadSpy
) -> None:
    # Pillow's PNG `getexif` decodes the whole image to find an eXIf chunk after the pixels; the
    # orientation must therefore be read inside the reservation. Also: shrink keeps rotation.
    im = Image.new("RGB", (3000, 2000), RED)
    im.paste(BLUE, (1500, 0, 3000, 2000))
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    path = tmp_path / "rotated.png"
    im.save(path, "PNG", exif=exif)
    budget = loads.watch(DecodeBudget(1024 * MB))
    out = load_image(path, target_size=224, budget=budget)
    assert [reserved > 0 for _, reserved, _ in loads.calls] == [True]
    assert out.size == (286, 429)  # 2000 / 7 and 3000 / 7, then upright (portrait)
    assert out.getpixel((143, 20)) == RED and out.getpixel((143, 400)) == BLUE


# --- shrinking keeps colours right in every mode ----------------------------------------------


def _two_tone(mode: str) -> tuple[Image.Image, dict[str, object]]:
    size = (2200, 2000)  # 4.4 MP: above the 4 MP shrink threshold
    if mode == "P+alpha":
        im = Image.new("P", size, 0)
        im.putpalette([*RED, *BLUE] + [0] * (256 * 3 - 6))
        im.paste(1, (1100, 0, 2200, 2000))
        return im, {"transparency": 0}
    if mode == "I;16":
        values = np.full(size[::-1], 65535, dtype=np.uint16)
        values[:, 1100:] = 0
        return Image.fromarray(values), {}
    colour = {"RGBA": (*RED, 0), "1": 1, "L": 255, "RGB": RED}[mode]
    im = Image.new(mode, size, colour)  # type: ignore[arg-type]
    im.paste({"RGBA": (*BLUE, 255), "1": 0, "L": 0, "RGB": BLUE}[mode], (1100, 0, 2200, 2000))
    return im, {}


@pytest.mark.parametrize(
    ("mode", "left", "right"),
    [
        ("RGB", RED, BLUE),
        ("RGBA", WHITE, BLUE),  # transparent left half goes on white
        ("P+alpha", WHITE, BLUE),
        ("I;16", WHITE, (0, 0, 0)),
        ("1", WHITE, (0, 0, 0)),
        ("L", WHITE, (0, 0, 0)),
    ],
)
def test_shrunk_images_keep_their_colours(
    tmp_path: Path, mode: str, left: tuple[int, ...], right: tuple[int, ...]
) -> None:
    im, kw = _two_tone(mode)
    path = tmp_path / "two.png"
    im.save(path, "PNG", **kw)
    out = load_image(path, target_size=224, budget=DecodeBudget(512 * MB))
    assert out.mode == "RGB" and out.size == (315, 286)  # factor 2000 // 256 = 7
    assert out.getpixel((20, 100)) == left and out.getpixel((300, 100)) == right


def test_images_up_to_4mp_are_not_shrunk(tmp_path: Path) -> None:
    # Ordinary photos decode exactly as before, so existing index embeddings stay valid.
    path = tmp_path / "four.png"
    Image.new("RGB", (2000, 2000), RED).save(path)
    assert load_image(path, target_size=224).size == (2000, 2000)


# --- the budget itself ---------------------------------------------------------------------------


def test_budget_refuses_more_than_it_has_at_once() -> None:
    budget = DecodeBudget(100 * MB)
    with (
        pytest.raises(ImageTooLargeError, match=r"needs about 101 MB .* 100 MB allowed"),
        budget.reserve(101 * MB),
    ):
        pass
    with budget.reserve(100 * MB):
        assert budget.in_use == 100 * MB
    assert budget.in_use == 0


def test_budget_waits_first_come_first_served_and_releases_on_error() -> None:
    budget = DecodeBudget(100, trim=False)
    order: list[str] = []
    release_a = threading.Event()

    def hold(name: str, n: int, until: threading.Event | None = None) -> None:
        with budget.reserve(n):
            order.append(name)
            if until is not None:
                assert until.wait(5)

    a = threading.Thread(target=hold, args=("a", 90, release_a))
    a.start()
    _wait_for(lambda: budget.in_use == 90)
    b = threading.Thread(target=hold, args=("b", 50))
    b.start()
    _wait_for(lambda: len(budget._queue) == 1)
    c = threading.Thread(target=hold, args=("c", 5))  # would fit now, but b came first
    c.start()
    _wait_for(lambda: len(budget._queue) == 2)  # c is queued behind b, not admitted
    assert order == ["a"]
    release_a.set()
    for t in (a, b, c):
        t.join(5)
    assert order == ["a", "b", "c"] and budget.in_use == 0 and budget.peak == 90

    with pytest.raises(RuntimeError), budget.reserve(60):
        raise RuntimeError("decoder crashed")
    assert budget.in_use == 0


def _wait_for(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_large_decodes_are_followed_by_malloc_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(decode_budget, "release_free_memory", lambda: calls.append(1) or True)
    budget = DecodeBudget(1024 * MB)
    with budget.reserve(decode_budget.TRIM_ABOVE - 1):
        pass
    assert calls == []
    with budget.reserve(decode_budget.TRIM_ABOVE):
        pass
    assert calls == [1]
    with DecodeBudget(1024 * MB, trim=False).reserve(512 * MB):
        pass
    assert calls == [1]


def test_pixels_are_freed_before_the_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow's `with image:` only closes the file; the decoded pixels must be freed (`close`)
    # before the budget trims, or the trim finds nothing to give back.
    events: list[str] = []
    real_close = Image.Image.close
    monkeypatch.setattr(decode_budget, "release_free_memory", lambda: events.append("trim"))

    def close(self: Image.Image) -> None:
        if self.size == (3000, 3000):
            events.append("close")
        real_close(self)

    monkeypatch.setattr(Image.Image, "close", close)
    out = load_image(_black_png(3000, 3000), target_size=224, budget=DecodeBudget(512 * MB))
    assert out.size == (273, 273)
    assert events == ["close", "trim"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_malloc_trim_is_reachable_on_linux() -> None:
    assert decode_budget.release_free_memory() is True


@pytest.fixture
def fresh_default_budget() -> Iterator[None]:
    set_decode_budget(None)
    yield
    set_decode_budget(None)


def test_budget_size_comes_from_settings(
    monkeypatch: pytest.MonkeyPatch, fresh_default_budget: None
) -> None:
    monkeypatch.setenv("KONTROL_DECODE_BUDGET_MB", "300")
    assert get_decode_budget().total == 300 * MB
    assert get_decode_budget() is get_decode_budget()


def test_auto_budget_is_a_share_of_memory_at_most_1gb(fresh_default_budget: None) -> None:
    total = get_decode_budget().total
    assert 64 * MB <= total <= 1024 * MB
    assert total == decode_budget.auto_budget_bytes()


def test_default_budget_is_used_by_load_image(
    monkeypatch: pytest.MonkeyPatch, fresh_default_budget: None
) -> None:
    monkeypatch.setenv("KONTROL_DECODE_BUDGET_MB", "1")
    buffer = io.BytesIO()
    Image.new("RGB", (1000, 1000), RED).save(buffer, "PNG")  # 4 MB decoded: over 1 MB
    with pytest.raises(ImageTooLargeError, match="KONTROL_DECODE_BUDGET_MB"):
        load_image(buffer.getvalue())


# --- HEIC --------------------------------------------------------------------------------------


def test_heic_from_an_iphone_is_read(tmp_path: Path) -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    im = Image.new("RGB", (96, 64), RED)
    im.paste(BLUE, (48, 0, 96, 64))
    path = tmp_path / "IMG_0001.HEIC"
    pillow_heif.from_pillow(im).save(path, quality=90)
    assert path.read_bytes()[4:12] == b"ftypheic"
    for source in (path, path.read_bytes()):
        out = load_image(source)
        assert out.mode == "RGB" and out.size == (96, 64)
        left, right = out.getpixel((10, 32)), out.getpixel((86, 32))
        assert all(abs(a - b) <= 24 for a, b in zip(left, RED, strict=True)), left
        assert all(abs(a - b) <= 24 for a, b in zip(right, BLUE, strict=True)), right


# --- the estimates against real memory (slow: one fresh process per mode and format) ---------


@pytest.mark.slow
def test_decode_cost_never_underestimates_a_measured_peak() -> None:
    import subprocess

    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_upload_memory.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--calibrate", "--calibrate-side", "2400"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
