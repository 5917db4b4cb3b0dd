"""Memory of a burst of huge uploads: 8 tiny PNGs of 59 megapixels decoded at once.

The bot decodes each upload in a thread (`asyncio.to_thread`) through `core.imageio.load_image`;
this script does the same from a thread pool, each variant in a fresh process, and samples the
process's resident memory (VmRSS) every 10 ms: before, at the peak, and after the burst (after a
wait, then again after an explicit `malloc_trim`). Variants:

* old       - `core/imageio.py` as it was before the decode budget (read from git),
* no-budget - today's code with an unlimited budget and no trim (shrink-after-decode only),
* no-trim   - today's code with the default budget but no `malloc_trim`,
* budget    - today's code as shipped (default budget, trim after large decodes).

`--calibrate` instead checks `decode_cost` against the measured peak of one decode per mode and
format, so the budget's estimates stay above what decoding really takes.

    python scripts/bench_upload_memory.py [--settle 30] [--write RELIABILITY.md]
    python scripts/bench_upload_memory.py --calibrate
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report_blocks import replace_block  # noqa: E402  (scripts/)

MB = 1024 * 1024
VARIANTS = ("old", "no-budget", "no-trim", "budget")
# Calibration passes while no measured peak exceeds its estimate by more than this (RSS noise).
TOLERANCE = 1.05


# --- memory sampling ----------------------------------------------------------------------------


def rss() -> int:
    """Resident memory of this process in bytes (VmRSS)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def hwm() -> int:
    """Peak resident memory since start or the last `reset_hwm` (VmHWM)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


class Sampler(threading.Thread):
    """Records the highest VmRSS seen, every `interval` seconds."""

    def __init__(self, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = rss()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, rss())


# --- one variant, in a fresh process ------------------------------------------------------------


def _old_imageio(ref: str) -> ModuleType:
    """`core/imageio.py` at git `ref`, imported under another name."""
    source = subprocess.run(
        ["git", "show", f"{ref}:core/imageio.py"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    folder = Path(tempfile.mkdtemp())
    path = folder / "imageio_old.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("imageio_old", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_variant(
    variant: str, image: Path, count: int, target: int, settle: float, ref: str, budget_mb: int
) -> dict[str, Any]:
    from core.decode_budget import DecodeBudget, get_decode_budget, release_free_memory
    from core.settings import load_settings

    settings = load_settings()
    limits = {
        "max_pixels": settings.max_image_pixels,
        "max_bytes": settings.max_image_bytes,
        "min_side": settings.min_image_side,
        "target_size": target,
    }
    if variant == "old":
        load = _old_imageio(ref).load_image
    else:
        from core.imageio import load_image

        budget = DecodeBudget(budget_mb * MB) if budget_mb else get_decode_budget()
        if variant == "no-budget":
            budget = DecodeBudget(1 << 50, trim=False)
        elif variant == "no-trim":
            budget = DecodeBudget(budget.total, trim=False)
        limits["budget"] = budget
        load = load_image
    uploads = [image.read_bytes() for _ in range(count)]  # the bot holds each download's bytes
    gc.collect()
    time.sleep(0.5)
    before = rss()
    sampler = Sampler()
    sampler.start()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=count) as pool:
        results = list(pool.map(lambda data: load(data, **limits), uploads))
    seconds = time.perf_counter() - start
    peak = sampler.stop()
    sizes = sorted({im.size for im in results})
    del results
    gc.collect()
    time.sleep(settle)
    after = rss()
    release_free_memory()
    after_trim = rss()
    return {
        "variant": variant,
        "before_mb": before / MB,
        "peak_increase_mb": (peak - before) / MB,
        "retained_mb": (after - before) / MB,
        "retained_after_trim_mb": (after_trim - before) / MB,
        "seconds": seconds,
        "result_size": sizes,
        "budget_mb": (limits["budget"].total / MB) if "budget" in limits else None,
        "reserved_peak_mb": (limits["budget"].peak / MB) if "budget" in limits else None,
    }


# --- calibration: estimate vs measured for one decode -------------------------------------------


def calibration_cases(folder: Path, side: int) -> list[tuple[str, Path]]:
    """(name, file) pairs: one per colour mode and format the estimate must cover."""
    import numpy as np
    from PIL import Image

    w, h = side * 4 // 3, side
    grad = np.linspace(0, 255, w * h, dtype=np.float64).reshape(h, w)
    rgb = Image.fromarray(np.stack([grad, grad[::-1], 255 - grad], -1).astype(np.uint8))
    cases: list[tuple[str, Path]] = []

    def add(name: str, im: Image.Image, fmt: str, suffix: str, **kw: Any) -> None:
        path = folder / f"{name}.{suffix}"
        im.save(path, fmt, **kw)
        cases.append((name, path))

    add("RGB png", rgb, "PNG", "png")
    add("RGBA png", rgb.convert("RGBA"), "PNG", "png")
    add("L png", rgb.convert("L"), "PNG", "png")
    add("LA png", rgb.convert("LA"), "PNG", "png")
    add("P png", rgb.convert("P"), "PNG", "png")
    add("P+alpha png", rgb.convert("P"), "PNG", "png", transparency=0)
    add("1 png", rgb.convert("1"), "PNG", "png")
    add("I;16 png", Image.fromarray((grad * 257).astype(np.uint16)), "PNG", "png")
    add("I tiff", Image.fromarray((grad * 257).astype(np.int32)), "TIFF", "tif")
    add("F tiff", Image.fromarray((grad / 255).astype(np.float32)), "TIFF", "tif")
    add("RGB tiff lzw", rgb, "TIFF", "tif", compression="tiff_lzw")
    add("CMYK jpeg", rgb.convert("CMYK"), "JPEG", "jpg", quality=90)
    add("RGB jpeg", rgb, "JPEG", "jpg", quality=90)
    add("RGB jpeg 444", rgb, "JPEG", "jpg", quality=90, subsampling=0)
    add("RGB jpeg progressive", rgb, "JPEG", "jpg", quality=90, progressive=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    add("RGB jpeg rotated", rgb, "JPEG", "jpg", quality=90, exif=exif)
    add("RGB webp", rgb, "WEBP", "webp", lossless=True, quality=0)
    add("P gif", rgb.convert("P"), "GIF", "gif")
    add("RGB bmp", rgb, "BMP", "bmp")
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        add("RGB heic", rgb, "HEIF", "heic", quality=50)
    except ImportError:
        pass
    return cases


def calibrate_one(path: Path, target: int | None) -> dict[str, Any]:
    from PIL import Image

    from core.decode_budget import DecodeBudget
    from core.imageio import load_image

    warm = io.BytesIO()
    Image.new("RGB", (64, 64)).save(warm, "PNG")
    load_image(warm.getvalue())  # imports and first-use allocations stay out of the figure
    data = path.read_bytes()
    budget = DecodeBudget(1 << 50, trim=False)
    gc.collect()
    before = rss()
    reset_hwm()
    load_image(data, max_pixels=10**9, target_size=target, budget=budget)
    return {"measured_mb": (hwm() - before) / MB, "estimate_mb": budget.peak / MB}


def calibrate(side: int) -> tuple[str, bool]:
    """A markdown table of measured and estimated peaks, and whether no estimate fell short."""
    worst = 0.0
    lines = [
        f"| image ({side * 4 // 3}x{side}) | target | measured | estimate | estimate/measured |",
        "|---|---|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in calibration_cases(Path(tmp), side):
            for target in (None, 224):
                out = _child(["--calibrate-one", str(path), str(target or 0)])
                measured, estimate = out["measured_mb"], out["estimate_mb"]
                worst = max(worst, measured / max(estimate, 0.1))
                lines.append(
                    f"| {name} | {target or 'full size'} | {measured:.0f} MB | {estimate:.0f} MB | "
                    f"{estimate / max(measured, 0.1):.2f} |"
                )
                print(lines[-1], flush=True)
    load = tuple(round(x, 2) for x in os.getloadavg())
    lines += [
        "",
        f"Worst measured/estimate: {worst:.2f}. Command: "
        f"`{' '.join(['python scripts/bench_upload_memory.py', *sys.argv[1:]])}`; "
        f"load average after: {load}.",
    ]
    return "\n".join(lines) + "\n", worst <= TOLERANCE


# --- driver -------------------------------------------------------------------------------------


def _child(args: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _old_ref() -> str:
    """The commit before the decode budget was added (HEAD if it is not committed yet)."""
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", "core/decode_budget.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    return f"{added[-1]}^" if added else "HEAD"


def make_image(path: Path, side: int) -> Path:
    from PIL import Image

    if not path.exists():
        Image.new("RGB", (side, side)).save(path, optimize=True)
    return path


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace, load: tuple, size: int) -> str:
    mp = args.side * args.side / 1e6
    lines = [
        f"{args.images} PNGs of {args.side}x{args.side} ({mp:.1f} megapixels, {size / 1000:.0f} KB "
        f"each, all black) decoded at once from {args.images} threads through `load_image` "
        f"(`target_size={args.target}`, as `Engine.read_image` does for the default model, and "
        "the default settings' limits); VmRSS sampled every 10 ms, each variant in a fresh process. "
        f"Retained: after {args.settle:.0f} s with the results dropped, then after one explicit "
        "`malloc_trim(0)`.",
        "",
        "| variant | peak increase | retained | retained after malloc_trim | wall time | "
        "budget (reserved peak) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        budget = (
            f"{r['budget_mb']:,.0f} MB ({r['reserved_peak_mb']:,.0f} MB)"
            if r["budget_mb"] and r["budget_mb"] < 1 << 30
            else "none"
        )
        lines.append(
            f"| {r['variant']} | {r['peak_increase_mb']:,.0f} MB | {r['retained_mb']:,.0f} MB | "
            f"{r['retained_after_trim_mb']:,.0f} MB | {r['seconds']:.1f} s | {budget} |"
        )
    lines += [
        "",
        f"Command: `{' '.join(['python scripts/bench_upload_memory.py', *sys.argv[1:]])}`; "
        f"load average (1, 5, 15 min) before: {load[0]}, after: {load[1]}; "
        f"{os.cpu_count()} CPUs.",
    ]
    return "\n".join(lines) + "\n"


def write_block(path: Path, name: str, table: str) -> None:
    """Replace the block `name` of `path` (between its markers), or append it as a section."""
    start, end = (f"<!-- bench_upload_memory {name}: {edge} -->" for edge in ("start", "end"))
    text = path.read_text(encoding="utf-8") if path.exists() else "# Reliability\n"
    if start not in text:
        path.write_text(text.rstrip("\n") + "\n\n## Upload memory\n", encoding="utf-8")
    replace_block(path, start, end, table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--side", type=int, default=7700)
    parser.add_argument("--target", type=int, default=224)
    parser.add_argument("--settle", type=float, default=30.0)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--old-ref", default=None, help="git ref of the old imageio")
    parser.add_argument("--budget-mb", type=int, default=0, help="0: the settings' budget")
    parser.add_argument("--write", type=Path, help="update the block in this markdown file")
    parser.add_argument("--block", default="burst", help="name of the block in --write")
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--calibrate-side", type=int, default=3000)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--calibrate-one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.calibrate_one:
        path, target = args.calibrate_one
        print(json.dumps(calibrate_one(Path(path), int(target) or None)))
        return 0
    if args.variant:
        result = run_variant(
            args.variant,
            args.image,
            args.images,
            args.target,
            args.settle,
            args.old_ref,
            args.budget_mb,
        )
        print(json.dumps(result))
        return 0
    if args.calibrate:
        table, ok = calibrate(args.calibrate_side)
        print(table)
        if args.write:
            write_block(args.write, "calibration", table)
        return 0 if ok else 1

    ref = args.old_ref or _old_ref()
    load_before = tuple(round(x, 2) for x in os.getloadavg())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        image = make_image(Path(tmp) / "x.png", args.side)
        for variant in args.variants.split(","):
            common = ["--image", str(image), "--images", str(args.images)]
            common += ["--target", str(args.target), "--settle", str(args.settle)]
            common += ["--budget-mb", str(args.budget_mb)]
            row = _child(["--variant", variant, "--old-ref", ref, *common])
            print(json.dumps(row), flush=True)
            rows.append(row)
        size = image.stat().st_size
    load_after = tuple(round(x, 2) for x in os.getloadavg())
    section = markdown(rows, args, (load_before, load_after), size)
    print(section)
    if args.write:
        write_block(args.write, args.block, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
