"""Engine benchmarks: query latency at 100k vectors, indexing throughput, model speed.

Every comparison runs its variants side by side in one process, interleaved query by query (or
round by round), so they share whatever load the machine has at that moment; figures are medians
and percentiles over many repetitions, never a single run.
"""

from __future__ import annotations

import gc
import os
import platform
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from core.embedders import create_backbone, create_embedder
from core.embedders.base import Embedder
from core.engine import Engine
from core.imageio import load_image
from core.settings import Settings, load_settings
from core.vectorstore import StoreInfo
from core.vectorstore.faiss_store import FaissStore, Tuning

ROOT = Path(__file__).resolve().parents[1]
#: Where benchmarks keep their ONNX exports: KONTROL_MODELS_DIR, or a scratch folder that lasts
#: between runs; never the repository's (the user's) models/.
BENCH_MODELS = Path(
    os.environ.get("KONTROL_MODELS_DIR", Path(tempfile.gettempdir()) / "kontrol-bench-models")
)
DEMO = ROOT / "data" / "demo"
#: `index_type` of the FaissStore: auto (exact scan up to 20k photos, IVF past it), flat (always
#: an exact scan), ivf (always IVF; the same as auto at 100k).
DEFAULT_KIND = "auto"
INDEX_KINDS = ("flat", "auto", "ivf")
#: Backends measured unless --index-types says otherwise (ivf would repeat auto at 100k).
DEFAULT_KINDS = ("flat", "auto")
#: Rows upserted into a store at a time.
CHUNK = 20_000
#: Per-vector noise level range of the synthetic vectors (see `synthesize`).
NOISE_SIGMA = (0.02, 0.06)


# --- results -------------------------------------------------------------------------------------


@dataclass
class Target:
    """One figure checked against a target from the issue."""

    name: str
    target: str
    value: str
    passed: bool


@dataclass
class Section:
    """One block of BENCHMARKS.md."""

    key: str
    title: str
    body: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)


def ms(values: list[float], q: float) -> float:
    """q-th percentile of durations in seconds, in milliseconds."""
    return float(np.percentile(np.asarray(values) * 1000.0, q)) if values else float("nan")


def median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def loadavg() -> str:
    """1/5/15-minute load averages (other processes share the CPU while we measure)."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine_info() -> dict[str, str]:
    """CPU, core count and library versions for the report header."""
    import faiss
    import onnxruntime
    import PIL
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except (OSError, ValueError):
        pass
    return {
        "cpu": cpu,
        "nproc": str(os.cpu_count()),
        "memory": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


# --- shared setup ----------------------------------------------------------------------------------


def settings(**overrides: Any) -> Settings:
    """Default settings (no .env) with the repo's model cache (or KONTROL_MODELS_DIR), plus
    overrides."""
    overrides.setdefault("models_dir", BENCH_MODELS)
    return load_settings(_env_file=None, **overrides)


def demo_photos() -> list[Path]:
    """The demo collection's photos, sorted."""
    photos = sorted(p for p in DEMO.glob("*/*.jpg") if p.is_file())
    if not photos:
        raise SystemExit(f"No demo photos under {DEMO}: run `kontrol demo-data` first.")
    return photos


@dataclass
class DemoData:
    """The demo collection as the engine stored it: ids, vectors, payloads, store info."""

    ids: list[str]
    vectors: np.ndarray
    payloads: list[dict[str, Any]]
    info: StoreInfo


def real_embeddings(tmp: Path, embedder: Embedder) -> DemoData:
    """Index the demo collection with the product's engine and return what it stored."""
    index_dir = tmp / "demo-index"
    engine = Engine(settings(images_dir=DEMO, index_dir=index_dir), embedder=embedder)
    engine.reindex(full=True, train="skip")  # no species head (it would go to the models dir)
    ids: list[str] = []
    vectors: list[np.ndarray] = []
    payloads: list[dict[str, Any]] = []
    for batch in engine.store.iterate():
        ids += batch.ids
        vectors.append(np.asarray(batch.vectors, dtype=np.float32))
        payloads += batch.payloads
    info = engine.store.info()
    engine.close()
    assert info is not None
    return DemoData(ids, np.concatenate(vectors), payloads, info)


@dataclass
class SyntheticIndex:
    """A 100k-row FaissStore on disk per `index_type`, built from the demo embeddings."""

    root: Path
    dirs: dict[str, Path]
    rows: list[dict[str, Any]]
    sources: np.ndarray  # demo row each row derives from (itself for real rows)
    n_real: int
    build_s: dict[str, float]  # upserts + maintain (IVF training where the mode builds one)
    maintain_s: dict[str, float]
    cos_to_source: tuple[float, float, float]

    def description(self) -> str:
        lo, hi = NOISE_SIGMA
        p5, p50, p95 = self.cos_to_source
        return (
            f"{len(self.rows):,} vectors: the {self.n_real} real demo embeddings (EfficientNet-Lite0, "
            f"ONNX) plus {len(self.rows) - self.n_real:,} synthetic ones. Each synthetic vector is "
            f"a randomly chosen real embedding e plus Gaussian noise, clipped at 0 like the real "
            f"(ReLU6-pooled, ~50 % zero) features and L2-normalised: v = norm(max(e + s*n, 0)), "
            f"n ~ N(0, I), s ~ U({lo}, {hi}) per vector (seed 0). Cosine to its source: p5 {p5:.2f}, "
            f"median {p50:.2f}, p95 {p95:.2f} (real demo photos' nearest other demo photo: "
            f"median ~0.45). Each synthetic row has its own uuid and path "
            f"`<Species>/<uuid>.jpg` and its source's payload (species, lineage); upserted into "
            f"a `FaissStore` in chunks of {CHUNK:,} and then `maintain()`ed (which builds the "
            f"IVF tier where the mode wants one), one store directory per `index_type`."
        )

    def materialize(self) -> None:
        """Create every row's file under `root` as a hard link to its source demo photo."""
        real_paths = [DEMO / self.rows[i]["path"] for i in range(self.n_real)]
        made: set[Path] = set()
        for row, src in zip(self.rows, self.sources.tolist(), strict=True):
            dst = self.root / row["path"]
            if dst.parent not in made:
                dst.parent.mkdir(parents=True, exist_ok=True)
                made.add(dst.parent)
            if not dst.exists():
                try:
                    os.link(real_paths[src], dst)
                except OSError:
                    shutil.copyfile(real_paths[src], dst)


def synthesize(
    demo: DemoData, n: int, seed: int = 0
) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray, tuple[float, float, float]]:
    """(n, dim) matrix, rows ({"uuid", **payload}) and source ids: the real rows first, then
    synthetic ones."""
    real = np.asarray(demo.vectors, dtype=np.float32)
    n_real, dim = real.shape
    n = max(n, n_real)
    rng = np.random.default_rng(seed)
    matrix = np.empty((n, dim), dtype=np.float32)
    matrix[:n_real] = real
    sources = np.concatenate([np.arange(n_real), rng.integers(0, n_real, n - n_real)])
    cos: list[np.ndarray] = []
    for start in range(n_real, n, 10_000):
        stop = min(n, start + 10_000)
        src = real[sources[start:stop]]
        sigma = rng.uniform(*NOISE_SIGMA, (stop - start, 1)).astype(np.float32)
        block = src + sigma * rng.standard_normal((stop - start, dim), dtype=np.float32)
        np.maximum(block, 0.0, out=block)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        matrix[start:stop] = block
        cos.append(np.einsum("ij,ij->i", block, src))
    allcos = np.concatenate(cos) if cos else np.ones(1)
    pcts = tuple(float(x) for x in np.percentile(allcos, [5, 50, 95]))
    rows: list[dict[str, Any]] = []
    for i in range(n):
        src = int(sources[i])
        if i < n_real:
            rows.append({"uuid": demo.ids[i], **demo.payloads[i]})
            continue
        uid = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        folder = demo.payloads[src]["path"].split("/", 1)[0]
        rows.append({"uuid": uid, **demo.payloads[src], "path": f"{folder}/{uid}.jpg"})
    return matrix, rows, sources, pcts  # type: ignore[return-value]


def build_synthetic(
    tmp: Path, demo: DemoData, n: int, kinds: tuple[str, ...], log: Callable[[str], None]
) -> SyntheticIndex:
    """Synthesize `n` vectors and build one `FaissStore` per `index_type` in `kinds`."""
    matrix, rows, sources, pcts = synthesize(demo, n)
    root = tmp / "collection-100k"
    root.mkdir(parents=True, exist_ok=True)
    dirs: dict[str, Path] = {}
    build_s: dict[str, float] = {}
    maintain_s: dict[str, float] = {}
    ids = [row["uuid"] for row in rows]
    payloads = [{k: v for k, v in row.items() if k != "uuid"} for row in rows]
    info = StoreInfo(
        demo.info.fingerprint,
        demo.info.dim,
        demo.info.model,
        extra={
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "collection_root": str(root),
            "synthetic": True,
        },
    )
    for kind in kinds:
        dirs[kind] = tmp / f"index-{kind}"
        t0 = time.perf_counter()
        store = FaissStore(dirs[kind], tuning=Tuning(mode=kind))
        store.initialise(info, reset=True)
        for start in range(0, len(rows), CHUNK):
            stop = min(len(rows), start + CHUNK)
            store.upsert(ids[start:stop], matrix[start:stop], payloads[start:stop])
        t1 = time.perf_counter()
        report = store.maintain()
        maintain_s[kind] = time.perf_counter() - t1
        build_s[kind] = time.perf_counter() - t0
        store.close()
        log(
            f"  {kind}: built in {build_s[kind]:.1f} s (upserts {t1 - t0:.1f} s, maintain "
            f"{maintain_s[kind]:.1f} s: {report})"
        )
        gc.collect()
    return SyntheticIndex(root, dirs, rows, sources, len(demo.ids), build_s, maintain_s, pcts)


# --- 1. query latency ------------------------------------------------------------------------------


def _rotated(items: tuple[str, ...], i: int) -> Iterator[str]:
    k = i % len(items)
    yield from items[k:] + items[:k]


def bench_queries(
    synthetic: SyntheticIndex,
    embedder: Embedder,
    queries: int,
    log: Callable[[str], None],
) -> Section:
    """find_similar latency per backend (interleaved) plus per-stage times, at `n` vectors."""
    kinds = tuple(synthetic.dirs)
    photos = demo_photos()
    size = embedder.input_size
    engines: dict[str, Engine] = {}
    load_s: dict[str, float] = {}
    for kind, index_dir in synthetic.dirs.items():
        engine = Engine(
            settings(images_dir=synthetic.root, index_dir=index_dir, index_type=kind),
            embedder=embedder,
        )
        t0 = time.perf_counter()
        engine.warmup()
        load_s[kind] = time.perf_counter() - t0
        engines[kind] = engine
    default = DEFAULT_KIND if DEFAULT_KIND in engines else kinds[0]
    for p in photos[:5]:  # warm-up (ORT arenas, page cache), not recorded
        for engine in engines.values():
            engine.find_similar(load_image(p, target_size=size))

    e2e: dict[str, list[float]] = {k: [] for k in kinds}
    search: dict[str, list[float]] = {k: [] for k in kinds}
    overlap: dict[str, list[float]] = {k: [] for k in kinds}
    stages: dict[str, list[float]] = {
        "decode": [],
        "decode_full": [],
        "preprocess": [],
        "model": [],
        "embed": [],
        "analyze": [],
    }
    read_bytes: list[float] = []
    t_start = time.perf_counter()
    for i in range(queries):
        path = photos[i % len(photos)]
        # end to end, backends in rotating order
        for kind in _rotated(kinds, i):
            t0 = time.perf_counter()
            engines[kind].find_similar(load_image(path, target_size=size), top_k=10)
            e2e[kind].append(time.perf_counter() - t0)
        # stages
        t0 = time.perf_counter()
        data = path.read_bytes()
        t1 = time.perf_counter()
        image = load_image(data, target_size=size)
        t2 = time.perf_counter()
        arr = embedder.preprocess(image)
        t3 = time.perf_counter()
        embedder.embed_batch(arr[None])
        t4 = time.perf_counter()
        vector = engines[default].embed(image)
        t5 = time.perf_counter()
        read_bytes.append(t1 - t0)
        stages["decode"].append(t2 - t1)
        stages["preprocess"].append(t3 - t2)
        stages["model"].append(t4 - t3)
        stages["embed"].append(t5 - t4)
        exact: set[str] | None = None
        for kind in ("flat", *[k for k in kinds if k != "flat"]):
            if kind not in engines:
                continue
            t0 = time.perf_counter()
            hits = engines[kind].search_vector(vector, top_k=10)
            search[kind].append(time.perf_counter() - t0)
            ids = {h["uuid"] for h in hits}
            if exact is None:
                exact = ids
            overlap[kind].append(len(ids & exact) / max(1, len(exact)))
        t0 = time.perf_counter()
        load_image(path)
        stages["decode_full"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        engines[default].analyze(load_image(path, target_size=size), top_k=10)
        stages["analyze"].append(time.perf_counter() - t0)
        if (i + 1) % 50 == 0:
            log(f"  {i + 1}/{queries} queries ({time.perf_counter() - t_start:.0f} s)")

    n = len(synthetic.rows)
    sec = Section("engine", f"1. find_similar at {n:,} indexed vectors")
    sec.body += [
        f"Query: `engine.find_similar(load_image(path, target_size={size}), top_k=10)` on the "
        f"{len(photos)} real demo photos (JPEG files, OS page cache warm), cycled to {queries} "
        f"queries per backend after 5 warm-up queries. The backends are loaded side by side "
        f"(one shared ONNX embedder) and queried in rotating order within each query, so they "
        f"see the same machine load. Load average during the run: {loadavg()}.",
        "",
        f"Index: {synthetic.description()}",
        "",
        "| backend | end-to-end p50 | p95 | search p50 | search p95 | top-10 vs flat | "
        "build (upserts + maintain) | load | target p50<=50 / p95<=100 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in kinds:
        p50, p95 = ms(e2e[kind], 50), ms(e2e[kind], 95)
        ok = p50 <= 50 and p95 <= 100
        mark = " (default)" if kind == default else ""
        sec.body.append(
            f"| {kind}{mark} | {p50:.1f} ms | {p95:.1f} ms | {ms(search[kind], 50):.1f} ms | "
            f"{ms(search[kind], 95):.1f} ms | {100 * median(overlap[kind]):.0f} % "
            f"(mean {100 * float(np.mean(overlap[kind])):.1f} %) | "
            f"{synthetic.build_s[kind]:.1f} s | {load_s[kind]:.1f} s | "
            f"{'PASS' if ok else 'FAIL'} |"
        )
        sec.targets.append(
            Target(
                f"find_similar @ {n // 1000}k, {kind}{mark}",
                "p50 <= 50 ms, p95 <= 100 ms",
                f"p50 {p50:.1f} ms, p95 {p95:.1f} ms",
                ok,
            )
        )
    sec.body += [
        "",
        f"Stages of one query (default backend `{default}`):",
        "",
        "| stage | p50 | p95 |",
        "|---|---|---|",
        f"| read file bytes | {ms(read_bytes, 50):.2f} ms | {ms(read_bytes, 95):.2f} ms |",
        f"| decode (`load_image`, JPEG draft for {size} px) | {ms(stages['decode'], 50):.1f} ms | "
        f"{ms(stages['decode'], 95):.1f} ms |",
        f"| preprocess (resize + crop + normalise) | {ms(stages['preprocess'], 50):.1f} ms | "
        f"{ms(stages['preprocess'], 95):.1f} ms |",
        f"| model (ONNX Runtime, batch 1) | {ms(stages['model'], 50):.1f} ms | "
        f"{ms(stages['model'], 95):.1f} ms |",
        f"| embed (`engine.embed` = preprocess + model) | {ms(stages['embed'], 50):.1f} ms | "
        f"{ms(stages['embed'], 95):.1f} ms |",
        f"| search (`engine.search_vector`, top 10 + float32 rescoring + result rows) | "
        f"{ms(search[default], 50):.1f} ms | {ms(search[default], 95):.1f} ms |",
        "",
        "For reference, not part of the target:",
        "",
        "| | p50 | p95 |",
        "|---|---|---|",
        f"| decode at full size (`load_image(path)`, no draft; what the bot does today) | "
        f"{ms(stages['decode_full'], 50):.1f} ms | {ms(stages['decode_full'], 95):.1f} ms |",
        f"| `engine.analyze` end to end (classification + similar, what a chat photo gets; "
        f"`{default}`) | {ms(stages['analyze'], 50):.1f} ms | {ms(stages['analyze'], 95):.1f} ms |",
    ]
    for engine in engines.values():
        engine.close()
    engines.clear()
    gc.collect()
    return sec


# --- 2. indexing throughput -------------------------------------------------------------------------


def make_collection(dst: Path, copies: int) -> list[Path]:
    """The demo photos copied `copies` times under distinct names; returns the copies."""
    out: list[Path] = []
    for c in range(copies):
        for photo in demo_photos():
            target = dst / photo.parent.name / f"{photo.stem}-copy{c}{photo.suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(photo, target)
            out.append(target)
    return out


def naive_index(files: list[Path], backbone: Any, threads: int) -> tuple[int, float]:
    """The design's naive loop: PyTorch eager, one photo at a time, full-size PIL decode,
    `IndexFlatL2.add` per photo. Returns (vectors added, seconds)."""
    import faiss
    import torch
    from PIL import Image

    torch.set_num_threads(threads)
    module = backbone.module
    index = faiss.IndexFlatL2(backbone.dim)
    t0 = time.perf_counter()
    for path in files:
        with Image.open(path) as im:
            image = im.convert("RGB")
        x = torch.from_numpy(backbone.preprocess(image)).unsqueeze(0)
        with torch.no_grad():
            pooled, _ = module(x)
        vec = pooled.numpy().astype(np.float32)
        vec /= np.linalg.norm(vec, axis=1, keepdims=True)
        index.add(vec)
    return int(index.ntotal), time.perf_counter() - t0


def bench_indexing(
    tmp: Path, embedder: Embedder, copies: int, rounds: int, log: Callable[[str], None]
) -> Section:
    """`Engine.reindex(full=True)` vs the naive loop on the same photos, alternating rounds."""
    import torch
    from PIL import Image

    coll = tmp / "collection-index"
    files = make_collection(coll, copies)
    n = len(files)
    # torch's default (2 OpenMP threads here) can be 20-100x slower than 1 thread on this
    # shared VM, so the design's loop runs on an evenly spread subset, and the same loop with
    # 1 thread (the tuned baseline) runs on all files.
    subset = files[:: max(1, n // 24)]
    backbone = create_backbone(settings(runtime="torch"))
    backbone.load()
    default_threads = torch.get_num_threads()
    # The design's own model in the same loop (random weights: speed does not depend on them).
    v2m = create_backbone(settings(runtime="torch", model="efficientnet_v2_m"), random_weights=True)
    v2m.load()
    v2m_subset = files[:: max(1, n // 12)]
    variants = {
        "fast": [],
        f"naive, torch default ({default_threads} threads)": [],
        "naive, 1 torch thread": [],
        "naive, design's model V2-M (random weights)": [],
    }
    names = list(variants)
    report_rates: list[float] = []
    timings: list[dict[str, float]] = []
    for r in range(rounds):
        for which in names if r % 2 == 0 else names[::-1]:
            if which == "fast":
                engine = Engine(
                    settings(images_dir=coll, index_dir=tmp / f"index-fast-{r}"), embedder=embedder
                )
                t0 = time.perf_counter()
                report = engine.reindex(full=True, train="skip")
                wall = time.perf_counter() - t0
                if report.added != n or report.skipped:
                    raise RuntimeError(f"reindex indexed {report.added}/{n}: {report.skipped}")
                variants[which].append(n / wall)
                report_rates.append(report.images_per_s)
                timings.append(report.timings)
                shutil.rmtree(tmp / f"index-fast-{r}", ignore_errors=True)
            elif which == names[3]:
                added, seconds = naive_index(v2m_subset, v2m, default_threads)
                if added != len(v2m_subset):
                    raise RuntimeError(f"naive V2-M loop added {added}/{len(v2m_subset)}")
                variants[which].append(len(v2m_subset) / seconds)
            else:
                batch = files if which == names[2] else subset
                threads = 1 if which == names[2] else default_threads
                added, seconds = naive_index(batch, backbone, threads)
                if added != len(batch):
                    raise RuntimeError(f"naive loop added {added}/{len(batch)}")
                variants[which].append(len(batch) / seconds)
        log(
            f"  round {r + 1}: "
            + ", ".join(f"{k} {v[-1]:.1f} photos/s" for k, v in variants.items())
        )
    backbone.unload()
    v2m.unload()
    torch.set_num_threads(default_threads)

    fast = variants["fast"]
    design = [f / d for f, d in zip(fast, variants[names[1]], strict=True)]
    tuned = [f / d for f, d in zip(fast, variants[names[2]], strict=True)]
    as_designed = [f / d for f, d in zip(fast, variants[names[3]], strict=True)]
    fast_med, design_med, tuned_med = median(fast), median(design), median(tuned)
    as_designed_med = median(as_designed)
    sizes: dict[str, int] = {}
    for photo in demo_photos():
        with Image.open(photo) as im:
            key = f"{im.width}x{im.height}"
        sizes[key] = sizes.get(key, 0) + 1
    common = ", ".join(f"{k} ({v})" for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:4])

    def per_round(xs: list[float], suffix: str = "") -> str:
        return ", ".join(f"{x:.1f}{suffix}" if suffix else f"{x:.1f}" for x in xs)

    sec = Section("indexing", "2. Indexing throughput")
    sec.body += [
        f"Collection: the {len(demo_photos())} demo photos copied {copies}x under distinct names "
        f"= {n} JPEGs (most common sizes: {common}). {rounds} rounds; in each the product's "
        f"`Engine.reindex(full=True)` (scan, threaded JPEG-draft decode + preprocess, ONNX "
        f"batches of {settings().batch_size}, index build, atomic save) and the naive loops run "
        "one after the other, the order reversed every round. Models already loaded "
        f"(start-up excluded). Load average during the run: {loadavg()}.",
        "",
        "Naive loop (written in `scripts/bench_engine.py`, the design's baseline): PyTorch eager, "
        "one image at a time, `PIL.Image.open` full-size decode, the same resize/crop/normalise, "
        "`torch.no_grad()`, `IndexFlatL2.add` per image. As designed it runs with torch's default "
        f"thread count ({default_threads}); on this shared 2-core VM that makes every Lite0 forward "
        "pass wait on OpenMP barriers (0.5-2 s instead of ~25 ms when other processes hold a "
        f"core), so it runs on an evenly spread subset of {len(subset)} of the photos. The same "
        "loop with `torch.set_num_threads(1)` (a tuned baseline) runs on all photos.",
        "",
        "| | photos/s (median) | per round | target |",
        "|---|---|---|---|",
        f"| `Engine.reindex(full=True)`, wall clock | {fast_med:.1f} | {per_round(fast)} | "
        f">= 40 photos/s: {'PASS' if fast_med >= 40 else 'FAIL'} |",
        f"| same, embedding stage only (`IndexReport.images_per_s`) | {median(report_rates):.1f} "
        f"| {per_round(report_rates)} | |",
        f"| {names[1]} (design) | {median(variants[names[1]]):.1f} | "
        f"{per_round(variants[names[1]])} | |",
        f"| {names[2]} (tuned) | {median(variants[names[2]]):.1f} | "
        f"{per_round(variants[names[2]])} | |",
        f"| speed-up vs the design's loop | {design_med:.1f}x | {per_round(design, 'x')} | "
        f">= 5x: {'PASS' if design_med >= 5 else 'FAIL'} |",
        f"| speed-up vs the tuned loop | {tuned_med:.2f}x | {per_round(tuned, 'x')} | "
        "(no target) |",
        f"| {names[3]}, {len(v2m_subset)} photos | {median(variants[names[3]]):.2f} | "
        f"{per_round(variants[names[3]])} | |",
        f"| speed-up vs the design's loop with the design's model | {as_designed_med:.0f}x | "
        f"{per_round(as_designed, 'x')} | >= 5x: {'PASS' if as_designed_med >= 5 else 'FAIL'} |",
    ]
    if timings:
        keys = ("scan_s", "read_s", "embed_s", "build_index_s", "write_s")
        sec.body += [
            "",
            "Where `reindex` spends its time (median over rounds; `read_s` is time the embed loop "
            "waited for decoded batches, decoding itself overlaps with inference in threads):",
            "",
            "| " + " | ".join(keys) + " |",
            "|" + "---|" * len(keys),
            "| "
            + " | ".join(f"{median([t.get(k, 0.0) for t in timings]):.2f} s" for k in keys)
            + " |",
        ]
    sec.targets += [
        Target(
            "Indexing throughput (`reindex(full=True)`)",
            ">= 40 photos/s",
            f"{fast_med:.1f} photos/s",
            fast_med >= 40,
        ),
        Target(
            "Indexing vs the design's naive loop as designed (V2-M eager, one at a time)",
            ">= 5x",
            f"{as_designed_med:.0f}x",
            as_designed_med >= 5,
        ),
        Target(
            "Indexing vs the same naive loop run with our model (Lite0 eager)",
            ">= 5x",
            f"{design_med:.1f}x (vs 1-thread torch: {tuned_med:.2f}x)",
            design_med >= 5,
        ),
    ]
    shutil.rmtree(coll, ignore_errors=True)
    return sec


# --- 3. model speed -----------------------------------------------------------------------------------


@dataclass
class ModelRun:
    model: str
    runtime: str
    batch: int
    load_s: float
    seconds: list[float]

    @property
    def ms_per_image(self) -> float:
        return 1000.0 * median(self.seconds) / self.batch


def bench_models(tmp: Path, reps: int, log: Callable[[str], None], quick: bool = False) -> Section:
    """Forward-pass speed per model, runtime and batch size, on random input tensors."""
    import torch

    plan = [
        ("efficientnet_lite0", (1, 32), False),
        ("efficientnet_lite2", (1, 32), False),
        ("efficientnet_v2_m", (1, 2 if quick else 4), True),
    ]
    slow_reps = min(reps, 3)  # V2M is ~50x the work of Lite0
    runs: list[ModelRun] = []
    rng = np.random.default_rng(0)
    for model, batches, random_weights in plan:
        models_dir = tmp / "models-random" if random_weights else BENCH_MODELS
        embedders: dict[str, Embedder] = {}
        load_s: dict[str, float] = {}
        for runtime in ("onnx", "torch"):
            s = settings(model=model, runtime=runtime, models_dir=models_dir)
            emb = create_embedder(s, random_weights=random_weights)
            t0 = time.perf_counter()
            emb.load()
            load_s[runtime] = time.perf_counter() - t0
            embedders[runtime] = emb
        size = embedders["onnx"].input_size
        inputs = {b: rng.standard_normal((b, 3, size, size), dtype=np.float32) for b in batches}
        for emb in embedders.values():  # warm-up
            emb.embed_batch(inputs[1])
        runtimes = {"onnx": ("onnx", 0), "torch": ("torch", 0), "torch 1 thread": ("torch", 1)}
        model_runs = {
            (rt, b): ModelRun(model, rt, b, load_s[runtimes[rt][0]], [])
            for rt in runtimes
            for b in batches
        }
        default_threads = torch.get_num_threads()
        for r in range(slow_reps if random_weights else reps):
            for (rt, b), run in model_runs.items() if r % 2 == 0 else reversed(model_runs.items()):
                engine_rt, threads = runtimes[rt]
                torch.set_num_threads(threads or default_threads)
                t0 = time.perf_counter()
                embedders[engine_rt].embed_batch(inputs[b])
                run.seconds.append(time.perf_counter() - t0)
        torch.set_num_threads(default_threads)
        runs.extend(model_runs.values())
        log(
            f"  {model}: "
            + ", ".join(
                f"{k[0]} b{k[1]} {v.ms_per_image:.0f} ms/img" for k, v in model_runs.items()
            )
        )
        del embedders
        gc.collect()

    sec = Section("models", "3. Model speed")
    sec.body += [
        f"Forward pass only (preprocessed random input tensors; no decoding), median of {reps} "
        f"repetitions ({slow_reps} for V2M) after one warm-up, runtimes and batch sizes "
        "interleaved. ONNX Runtime: the "
        "product's `OnnxEmbedder` (intra-op threads = all cores); PyTorch eager: the product's "
        "torch embedder (`torch.inference_mode`) with torch's default thread count and with "
        "`torch.set_num_threads(1)`. Load = first `load()` in this process (for "
        "ONNX it includes the one-time export when the cached `.onnx` is missing). "
        "**efficientnet_v2_m runs with random weights** "
        "(`create_embedder(settings, random_weights=True)`): its ImageNet weights cannot be "
        "downloaded offline; speed does not depend on weight values, but its embeddings are "
        f"meaningless. Load average during the run: {loadavg()}.",
        "",
        "| model | input | runtime | batch | ms/image | images/s | load |",
        "|---|---|---|---|---|---|---|",
    ]
    sizes = {"efficientnet_lite0": 224, "efficientnet_lite2": 260, "efficientnet_v2_m": 480}
    for run in runs:
        name = run.model + (" (random weights)" if run.model == "efficientnet_v2_m" else "")
        sec.body.append(
            f"| {name} | {sizes[run.model]} px | {run.runtime} | {run.batch} | "
            f"{run.ms_per_image:.1f} | {1000.0 / run.ms_per_image:.1f} | {run.load_s:.1f} s |"
        )
    by = {(r.model, r.runtime, r.batch): r.ms_per_image for r in runs}
    ratios = []
    for model, batches, _ in plan:
        for b in batches:
            if (model, "torch", b) in by and (model, "onnx", b) in by:
                best = min(by[(model, "torch", b)], by[(model, "torch 1 thread", b)])
                ratios.append(f"{model} b{b}: {best / by[(model, 'onnx', b)]:.1f}x")
    sec.body += [
        "",
        "ONNX Runtime speed-up over the faster PyTorch eager setting: " + "; ".join(ratios) + ".",
    ]
    return sec
