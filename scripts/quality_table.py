"""Compare retrieval descriptors through the real `kontrol eval` and write BENCHMARKS.md's table.

    python scripts/quality_table.py                       # all variants on data/demo
    python scripts/quality_table.py --only pooled --only flip_fusion_w0.35 --no-write

Each variant is one `Settings` (descriptor, fusion weight, model): `kontrol eval`'s own code path
(`kontrol.evaluation.cli.run_eval`) indexes the collection with the engine and measures it. Timings
are then taken side by side, interleaved query by query and round by round over all variants, so
they share the machine's load: find_similar on the demo index, a full re-index (photos/s), and
the search step alone on a synthetic 100k-vector index of each variant's width, to estimate
find_similar at 100k. Secondary diagnostics (coarse groups with a lower size threshold) are computed
on the engine's stored vectors and labelled as such. Only the `quality` section is rewritten.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from report_blocks import replace_block  # noqa: E402  (scripts/)

from core.cli import build_parser  # noqa: E402
from core.engine import Engine  # noqa: E402
from core.settings import Settings, load_settings  # noqa: E402
from core.vectorstore import StoreInfo  # noqa: E402
from core.vectorstore.faiss_store import FaissStore  # noqa: E402
from kontrol.cli import register  # noqa: E402
from kontrol.evaluation import metrics  # noqa: E402
from kontrol.evaluation.cli import run_eval  # noqa: E402
from kontrol.evaluation.labels import load_labels  # noqa: E402

START, END = "<!-- quality:start -->", "<!-- quality:end -->"
OUT = ROOT / "BENCHMARKS.md"
#: name -> Settings overrides. Fusion weights 0.2-0.5: the range that helped in an offline sweep.
VARIANTS: dict[str, dict[str, Any]] = {
    "pooled": {"descriptor": "pooled"},
    "flip": {"descriptor": "flip"},
    "imagenet_fusion_w0.2": {"descriptor": "imagenet_fusion", "fusion_weight": 0.2},
    "imagenet_fusion_w0.35": {"descriptor": "imagenet_fusion", "fusion_weight": 0.35},
    "imagenet_fusion_w0.5": {"descriptor": "imagenet_fusion", "fusion_weight": 0.5},
    "flip_fusion_w0.35": {"descriptor": "flip_fusion", "fusion_weight": 0.35},
    "flip_fusion_w0.5": {"descriptor": "flip_fusion", "fusion_weight": 0.5},
    "lite2_pooled": {"model": "efficientnet_lite2", "descriptor": "pooled"},
    "lite2_flip_fusion_w0.35": {
        "model": "efficientnet_lite2",
        "descriptor": "flip_fusion",
        "fusion_weight": 0.35,
    },
}
METRICS = (
    "species_recall_at_1",
    "species_map",
    "coarse_precision_at_10",
    "species_top1_accuracy",
    "open_set_not_sure_rate",
    "near_duplicate_recall_at_1",
)
SHORT = {
    "species_recall_at_1": "species R@1",
    "species_map": "species mAP",
    "coarse_precision_at_10": "coarse P@10",
    "species_top1_accuracy": "top-1 acc",
    "open_set_not_sure_rate": "open-set not-sure",
    "near_duplicate_recall_at_1": "near-dup R@1",
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def settings_for(name: str, work: Path) -> Settings:
    return load_settings(
        images_dir=ROOT / "data" / "demo",
        index_dir=work / name / "index",
        models_dir=work / "models",
        **VARIANTS[name],
    )


# --- measurements --------------------------------------------------------------------------------


def run_kontrol_eval(name: str, work: Path, images: Path, manifest: Path) -> dict[str, Any]:
    """`kontrol eval --images ... --manifest ... --out <work>/<name>` with the variant's settings."""
    out = work / name
    argv = ["eval", "--images", str(images), "--manifest", str(manifest), "--out", str(out)]
    run_eval(build_parser([register]).parse_args(argv), settings_for(name, work))
    return json.loads((out / "eval.json").read_text(encoding="utf-8"))


def diagnostics(engine: Engine, coarse_of: dict[str, str | None]) -> dict[str, tuple[float, int]]:
    """Secondary coarse-group figures on the engine's stored vectors (not the official metrics)."""
    vectors, coarse = [], []
    for batch in engine.store.iterate():
        vectors.append(np.asarray(batch.vectors, dtype=np.float32))
        coarse += [coarse_of.get(payload["path"]) for payload in batch.payloads]
    emb = np.concatenate(vectors)
    sim = metrics.similarity_matrix(emb)
    p5 = metrics.coarse_precision_at_k(sim, coarse, k=5, min_group=5)
    # Coarse mAP over every group with 2+ photos (a photo without a group never matches).
    filled = [c if c is not None else f"__none_{i}" for i, c in enumerate(coarse)]
    cmap = metrics.species_map(sim, filled)
    idx, _ = metrics.top_k(sim, 5)
    codes = metrics._codes(coarse)
    queries = np.flatnonzero(metrics.eligible(coarse, 2))
    hits = []
    for q in queries:
        nb = codes[idx[q]]
        votes = np.bincount(nb[nb >= 0], minlength=codes.max() + 1)
        hits.append(bool(votes.argmax() == codes[q]))
    knn = metrics.Score.of(np.array(hits))
    return {
        "coarse P@5 (groups>=5)": (p5.value or 0.0, p5.n),
        "coarse mAP (groups>=2)": (cmap.value or 0.0, cmap.n),
        "5-NN coarse acc": (knn.value or 0.0, knn.n),
    }


def interleaved_queries(
    engines: dict[str, Engine], paths: list[Path], rounds: int
) -> dict[str, list[float]]:
    """find_similar ms per variant, alternating variants query by query (decode included)."""
    timings: dict[str, list[float]] = {name: [] for name in engines}
    for engine in engines.values():
        engine.find_similar(engine.read_image(paths[0]), top_k=10)  # warm-up
    for _ in range(rounds):
        for path in paths:
            for name, engine in engines.items():
                start = time.perf_counter()
                engine.find_similar(engine.read_image(path), top_k=10)
                timings[name].append((time.perf_counter() - start) * 1000)
    return timings


def interleaved_indexing(engines: dict[str, Engine], rounds: int) -> dict[str, float]:
    """Median photos/s of a full `Engine.reindex` per variant, alternating variants each round."""
    rates: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(rounds):
        for name, engine in engines.items():
            rates[name].append(engine.reindex(full=True).images_per_s)
    return {name: float(np.median(r)) for name, r in rates.items()}


def search_100k(dims: list[int], n: int, queries: int, work: Path) -> dict[int, list[float]]:
    """ms of the engine's search step (`FaissStore.search`, default `auto` index type: IVF past
    20k photos) at n vectors per width."""
    rng = np.random.default_rng(0)
    stores: dict[int, tuple[FaissStore, np.ndarray]] = {}
    for dim in dims:
        vecs = rng.standard_normal((n, dim), dtype=np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        store = FaissStore(work / f"search-{dim}")
        store.initialise(StoreInfo(f"synthetic-{dim}", dim, "synthetic"), reset=True)
        for start in range(0, n, 20_000):
            stop = min(n, start + 20_000)
            store.upsert(
                [str(i) for i in range(start, stop)],
                vecs[start:stop],
                [{"species": f"S{i % 500}", "path": f"{i}.jpg"} for i in range(start, stop)],
            )
        store.maintain()
        stores[dim] = (store, vecs)
    timings: dict[int, list[float]] = {dim: [] for dim in dims}
    for i in range(queries + 3):
        for dim, (store, vecs) in stores.items():
            q = vecs[(i * 7919) % n] + 0.05 * rng.standard_normal(dim)
            q = (q / np.linalg.norm(q)).astype(np.float32)
            start = time.perf_counter()
            store.search(q, 10)
            if i >= 3:  # the first calls warm caches
                timings[dim].append((time.perf_counter() - start) * 1000)
    for store, _ in stores.values():
        store.close()
    return timings


# --- BENCHMARKS.md -------------------------------------------------------------------------------


def _fmt(value: float | None, n: int | None = None) -> str:
    text = "-" if value is None else f"{value:.3f}"
    return f"{text} (n={n})" if n is not None else text


def render(results: dict[str, dict[str, Any]], command: str, extra: dict[str, Any]) -> str:
    lines = [
        "## Retrieval quality per descriptor",
        "",
        f"_Measured {time.strftime('%Y-%m-%d')} with `{command}` on data/demo "
        f"({extra['photos']} photos, {extra['species']} taxa), seed 0, load average "
        f"{extra['load']} on {extra['cores']} cores._ Each row is `kontrol eval --images data/demo "
        "--manifest data/demo/manifest.csv` with the variant's settings "
        "(`KONTROL_DESCRIPTOR`, `KONTROL_FUSION_WEIGHT`, `KONTROL_MODEL`).",
        "",
        "| variant | dim | " + " | ".join(SHORT[m] for m in METRICS) + " | find_similar p50 / p95 "
        "(demo) | est. p50 / p95 at 100k | indexing photos/s |",
        "|---|---|" + "---|" * len(METRICS) + "---|---|---|",
    ]
    for name, r in results.items():
        ev = r["eval"]
        cells = [_fmt(ev[m], ev["queries"][m]) for m in METRICS]
        lat, est = r["latency"], r["estimate_100k"]
        lines.append(
            f"| {name} | {r['dim']} | "
            + " | ".join(cells)
            + f" | {lat[0]:.1f} / {lat[1]:.1f} ms | {est[0]:.1f} / {est[1]:.1f} ms"
            f" | {r['indexing']:.1f} |"
        )
    diag_names = list(next(iter(results.values()))["diagnostics"])
    lines += [
        "",
        "Secondary diagnostics (not the official metrics: coarse groups with a lower size "
        "threshold, so more of the demo's photos are queries):",
        "",
        "| variant | " + " | ".join(diag_names) + " |",
        "|---|" + "---|" * len(diag_names),
    ]
    for name, r in results.items():
        d = r["diagnostics"]
        lines.append(f"| {name} | " + " | ".join(_fmt(*d[k]) for k in diag_names) + " |")
    lines += ["", *extra["notes"]]
    return "\n".join(lines)


NOTES = [
    "How the timing columns are measured: all variants side by side in one process, alternating "
    "query by query (find_similar = decode + descriptor + search on the 85-photo index) and round "
    "by round (indexing = the median of full `Engine.reindex` runs over the demo, decode in "
    "threads + embedding). The 100k estimate adds the search step alone, timed on a synthetic "
    "100k-vector `FaissStore` (default `auto` index type: IVF at that size) of the variant's "
    "width, to the demo's find_similar time.",
    "",
    "What the demo can and cannot show. It has 85 photos of 78 taxa: only 7 species have two "
    "photos, so species R@1 and mAP average over 14 queries (one query moves R@1 by 0.07), and only "
    "one coarse group (Actinopterygii, 28 photos) reaches the official coarse P@10 threshold of 15. "
    "The near-duplicate test (510 altered queries) and the lower-threshold coarse diagnostics are "
    "the figures with more queries. Species-level differences of one or two queries are noise. "
    "The issue's targets (species R@1 >= 0.65, mAP >= 0.65, coarse P@10 >= 0.85, near-dup >= 0.995) "
    "refer to a 202-photo, 157-taxon set that is kept outside the project; it was not available "
    "here, so whether a descriptor meets them is not checked by this table.",
]


def write_section(text: str, path: Path = OUT) -> None:
    """Replace (or append) only the quality block, keeping every other section of the file."""
    replace_block(path, START, END, text)


# --- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--manifest", type=Path, default=ROOT / "data" / "demo" / "manifest.csv")
    parser.add_argument("--only", action="append", choices=list(VARIANTS))
    parser.add_argument("--query-rounds", type=int, default=2)
    parser.add_argument("--index-rounds", type=int, default=3)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    names = args.only or list(VARIANTS)
    command = "python scripts/quality_table.py " + shlex.join(argv or sys.argv[1:])
    work = Path(tempfile.mkdtemp(prefix="kontrol-quality-"))
    # Share the ONNX export cache; heads trained on the demo stay in the scratch dir.
    (work / "models").mkdir()
    default_cache = Path(tempfile.gettempdir()) / "kontrol-bench-models"
    onnx_cache = Path(os.environ.get("KONTROL_MODELS_DIR", default_cache)) / "onnx"
    onnx_cache.mkdir(parents=True, exist_ok=True)
    (work / "models" / "onnx").symlink_to(onnx_cache)
    try:
        evals = {}
        for name in names:
            log(f"kontrol eval: {name}")
            evals[name] = run_kontrol_eval(name, work, args.images, args.manifest)
        engines = {name: Engine(settings_for(name, work)) for name in names}
        for engine in engines.values():
            engine.warmup()
        photos = load_labels(args.images, args.manifest)
        coarse_of = {p.rel: p.coarse for p in photos}
        diag = {name: diagnostics(engine, coarse_of) for name, engine in engines.items()}
        sample = [p.path for p in random.Random(0).sample(photos, min(30, len(photos)))]
        log("interleaved find_similar")
        lat = interleaved_queries(engines, sample, args.query_rounds)
        log("interleaved indexing")
        rates = interleaved_indexing(engines, args.index_rounds)
        dims = {name: engine.embedder.dim for name, engine in engines.items()}
        log(f"search step at {args.vectors} vectors")
        search = search_100k(sorted(set(dims.values())), args.vectors, 200, work)
        results = {}
        for name in names:
            demo = (np.percentile(lat[name], 50), np.percentile(lat[name], 95))
            s = search[dims[name]]
            est = (demo[0] + np.percentile(s, 50), demo[1] + np.percentile(s, 95))
            results[name] = {
                "eval": evals[name],
                "dim": dims[name],
                "latency": demo,
                "estimate_100k": est,
                "indexing": rates[name],
                "diagnostics": diag[name],
            }
        extra = {
            "photos": len(photos),
            "species": len({p.label for p in photos}),
            "load": f"{os.getloadavg()[0]:.1f}",
            "cores": os.cpu_count(),
            "notes": NOTES,
        }
        text = render(results, command.strip(), extra)
        print(text)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
        if not args.no_write:
            write_section(text)
            log(f"wrote the quality section of {OUT}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
