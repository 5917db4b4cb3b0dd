"""Collection insight (issue 12): does `kontrol clusters` find planted errors, and what does it cost?

    python scripts/bench_clusters.py quality [--seeds 5] [--work /tmp/kontrol-insight]
    python scripts/bench_clusters.py scale [--n 100000] [--work /tmp/kontrol-insight]

quality: copies of the demo collection in --work, each indexed with the product's Engine:
  - wrong labels: per seed, 8 photos moved into another (random) species' folder; precision and
    recall of the suspicious list against the planted photos, at several score thresholds;
  - duplicates: 20 photos get the six altered copies of `kontrol.evaluation.augment` saved beside
    them (new uuids); recall of (original, copy) pairs grouped together, per alteration, and the
    share of groups mixing two source photos, at several similarity thresholds.
scale: N vectors synthesised from the real demo embeddings (a random real vector plus Gaussian
  noise, clipped at 0 and re-normalised), written to a FaissStore (IVF tier built as in
  production), then `analyse` timed in a fresh process with its peak RSS (ru_maxrss).

Nothing is written outside --work; the model cache goes to <work>/models.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.engine import Engine  # noqa: E402
from core.insight import Options, analyse  # noqa: E402
from core.settings import load_settings  # noqa: E402
from kontrol.evaluation.augment import ALTERATIONS  # noqa: E402

DEMO = ROOT / "data" / "demo"
PLANTED = 8
DUP_SOURCES = 20
SCORE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
DUP_THRESHOLDS = (0.75, 0.78, 0.8, 0.82, 0.85, 0.88)


def loadavg() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def copy_demo(dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(DEMO, dst, ignore=shutil.ignore_patterns("*.csv", "*.md"))
    return dst


def index(collection: Path, work: Path, name: str) -> Engine:
    settings = load_settings(
        _env_file=None,
        images_dir=collection,
        index_dir=work / "index" / name,
        models_dir=work / "models",
        index_type="flat",
    )
    engine = Engine(settings)
    engine.reindex(full=True, train="skip")
    return engine


def plant_wrong_labels(collection: Path, seed: int) -> set[str]:
    """Move PLANTED photos (distinct source species) into other species' folders; their paths."""
    rng = random.Random(seed)
    folders = sorted(p for p in collection.iterdir() if p.is_dir())
    photos = sorted(collection.glob("*/*.jpg"))
    rng.shuffle(photos)
    moved: set[str] = set()
    used: set[str] = set()
    for photo in photos:
        if len(moved) == PLANTED:
            break
        if photo.parent.name in used:
            continue
        target = rng.choice([f for f in folders if f != photo.parent])
        used.update({photo.parent.name, target.name})
        dst = target / photo.name
        photo.rename(dst)
        side = photo.with_suffix(".json")
        if side.exists():
            side.rename(dst.with_suffix(".json"))
        moved.add(f"{target.name}/{photo.name}")
    return moved


def quality_labels(work: Path, seeds: int) -> dict[str, Any]:
    per_threshold: dict[float, dict[str, int]] = {
        t: {"tp": 0, "fp": 0, "planted": 0} for t in SCORE_THRESHOLDS
    }
    split_hits = split_total = 0
    detail = []
    aps: list[float] = []
    top8: list[float] = []
    engine = index(copy_demo(work / "clean"), work, "clean")
    clean = analyse(engine.store, Options(suspicious_min_score=-1.0))
    clean_by_t = {t: sum(1 for s in clean.suspicious if s["score"] >= t) for t in SCORE_THRESHOLDS}
    engine.close()
    for seed in range(seeds):
        coll = copy_demo(work / f"planted-{seed}")
        planted = plant_wrong_labels(coll, seed)
        engine = index(coll, work, f"planted-{seed}")
        found = analyse(engine.store, Options(suspicious_min_score=-1.0))
        engine.close()
        ranked = [s["path"] in planted for s in found.suspicious]  # sorted by score, best first
        hits = np.cumsum(ranked)
        aps.append(sum(hits[i] / (i + 1) for i, ok in enumerate(ranked) if ok) / len(planted))
        top8.append(sum(ranked[:PLANTED]) / PLANTED)
        for t in SCORE_THRESHOLDS:
            flagged = {s["path"] for s in found.suspicious if s["score"] >= t}
            per_threshold[t]["tp"] += len(flagged & planted)
            per_threshold[t]["fp"] += len(flagged - planted)
            per_threshold[t]["planted"] += len(planted)
        split_members = {
            m["path"] for sp in found.split_species for part in sp["parts"] for m in part["members"]
        }
        split_hits += len(split_members & planted)
        split_total += len(planted)
        detail.append(
            {
                "seed": seed,
                "planted": sorted(planted),
                "flagged@0.4": sorted(s["path"] for s in found.suspicious if s["score"] >= 0.4),
            }
        )
    table = {}
    for t, c in per_threshold.items():
        flagged = c["tp"] + c["fp"]
        table[t] = {
            "precision": c["tp"] / flagged if flagged else float("nan"),
            "recall": c["tp"] / c["planted"],
            "tp": c["tp"],
            "fp": c["fp"],
            "planted": c["planted"],
            "clean_collection_flags": clean_by_t[t],
        }
    return {
        "seeds": seeds,
        "by_threshold": table,
        "average_precision": float(np.mean(aps)),
        "precision_at_planted": float(np.mean(top8)),
        "split_species_cover": split_hits / split_total if split_total else float("nan"),
        "detail": detail,
    }


def quality_duplicates(work: Path) -> dict[str, Any]:
    from PIL import Image

    coll = copy_demo(work / "duplicates")
    rng = random.Random(0)
    sources = sorted(coll.glob("*/*.jpg"))
    rng.shuffle(sources)
    copy_of: dict[str, tuple[str, str]] = {}  # copy path -> (source path, alteration)
    for n, src in enumerate(sources[:DUP_SOURCES]):
        with Image.open(src) as img:
            image = img.convert("RGB")
        arng = random.Random(n)
        for kind, fn in ALTERATIONS.items():
            altered = fn(image, arng)
            name = f"{uuid.UUID(int=rng.getrandbits(128), version=4)}.jpg"
            altered.save(src.parent / name, quality=90)
            copy_of[f"{src.parent.name}/{name}"] = (f"{src.parent.name}/{src.name}", kind)
    engine = index(coll, work, "duplicates")
    out: dict[float, dict[str, Any]] = {}
    for t in DUP_THRESHOLDS:
        found = analyse(engine.store, Options(dup_threshold=t))
        group_of = {}
        for gi, g in enumerate(found.duplicate_groups):
            for m in g["members"]:
                group_of[m["path"]] = gi
        per_kind: dict[str, list[bool]] = defaultdict(list)
        for cp, (src, kind) in copy_of.items():
            per_kind[kind].append(cp in group_of and group_of.get(src) == group_of[cp])
        mixed = 0
        for g in found.duplicate_groups:
            roots = {copy_of.get(m["path"], (m["path"], ""))[0] for m in g["members"]}
            mixed += len(roots) > 1
        complete = sum(
            1
            for src in {s for s, _ in copy_of.values()}
            if src in group_of
            and all(group_of.get(cp) == group_of[src] for cp, (s, _) in copy_of.items() if s == src)
        )
        pairs = [ok for oks in per_kind.values() for ok in oks]
        out[t] = {
            "pair_recall": float(np.mean(pairs)),
            "by_alteration": {k: float(np.mean(v)) for k, v in sorted(per_kind.items())},
            "groups": len(found.duplicate_groups),
            "mixed_groups": mixed,
            "complete_groups": complete,
            "sources": DUP_SOURCES,
        }
    engine.close()
    return {"by_threshold": out, "photos": len(copy_of) + len(sources)}


# --- scale ------------------------------------------------------------------------------------


def synthesize(real: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) vectors: the real rows, then noisy copies of random real rows; and their sources."""
    rng = np.random.default_rng(seed)
    n_real = len(real)
    sources = np.concatenate([np.arange(n_real), rng.integers(0, n_real, max(0, n - n_real))])
    out = np.empty((len(sources), real.shape[1]), np.float32)
    out[:n_real] = real
    for start in range(n_real, len(sources), 10_000):
        stop = min(len(sources), start + 10_000)
        sigma = rng.uniform(0.02, 0.06, (stop - start, 1)).astype(np.float32)
        block = real[sources[start:stop]] + sigma * rng.standard_normal(
            (stop - start, real.shape[1]), dtype=np.float32
        )
        np.maximum(block, 0.0, out=block)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:stop] = block
    return out, sources


def scale(work: Path, n: int, k: int | None) -> dict[str, Any]:
    from core.vectorstore.faiss_store import FaissStore, Tuning

    engine = index(copy_demo(work / "clean"), work, "clean")
    batch = next(engine.store.iterate(batch_size=10_000))
    info = engine.store.info()
    engine.close()
    real = np.asarray(batch.vectors, np.float32)
    vectors, sources = synthesize(real, n)
    directory = work / "index" / f"synthetic-{n}"
    build_s = None
    reuse = False
    if directory.exists():
        with FaissStore(directory, read_only=True) as existing:
            reuse = existing.count() == len(vectors)
    if not reuse:
        if directory.exists():
            shutil.rmtree(directory)
        t0 = time.perf_counter()
        store = FaissStore(directory, tuning=Tuning(mode="auto"))
        store.initialise(info)
        with store.writer():
            for start in range(0, len(vectors), 20_000):
                stop = min(len(vectors), start + 20_000)
                ids = [str(uuid.UUID(int=int(i) + 1, version=4)) for i in range(start, stop)]
                payloads = []
                for i in range(start, stop):
                    p = dict(batch.payloads[int(sources[i])])
                    p["path"] = f"{p['path'].split('/', 1)[0]}/{ids[i - start]}.jpg"
                    payloads.append(p)
                store.upsert(ids, vectors[start:stop], payloads)
            store.maintain(force=True)
        build_s = round(time.perf_counter() - t0, 1)
        store.close()
    del vectors
    # The analysis runs in a fresh process, so its peak RSS is its own (not the build's).
    child = subprocess.run(
        [sys.executable, __file__, "_analyse", str(directory), str(k or 0)],
        check=True,
        capture_output=True,
        text=True,
    )
    return {"store_build_s": build_s, **json.loads(child.stdout)}


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    """Reset the process's peak RSS (VmHWM) so the peak measured next is the analysis' own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def analyse_child(directory: Path, k: int) -> dict[str, Any]:
    from core.vectorstore.faiss_store import FaissStore, Tuning

    reader = FaissStore(directory, read_only=True, tuning=Tuning(mode="auto"))
    reader.search(np.zeros((1, reader.info().dim), np.float32), 1)  # the store's own footprint
    baseline = _status_mib("VmRSS")
    reset = _reset_peak()
    load_before = loadavg()
    t0 = time.perf_counter()
    insight = analyse(reader, Options(clusters=k or None))
    total_s = time.perf_counter() - t0
    peak = (
        _status_mib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    reader.close()
    sizes = [g["size"] for g in insight.duplicate_groups]
    return {
        "n": insight.count,
        "total_s": round(total_s, 1),
        "timings_s": {k: round(v, 1) for k, v in insight.timings.items()},
        "params": insight.params,
        "clusters": len(insight.clusters),
        "duplicate_groups": len(insight.duplicate_groups),
        "photos_in_groups": sum(sizes),
        "largest_group": max(sizes) if sizes else 0,
        "suspicious": len(insight.suspicious),
        "split_species": len(insight.split_species),
        "rss_mib_after_open": round(baseline),
        "peak_rss_mib": round(peak),
        "peak_is_analysis_only": reset,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "cpus": os.cpu_count(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["quality", "scale"])
    parser.add_argument("--work", default="/tmp/kontrol-insight")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--k", type=int, help="clusters at scale (default sqrt(N))")
    parser.add_argument("--json", help="write the results here")
    if len(sys.argv) == 4 and sys.argv[1] == "_analyse":
        print(json.dumps(analyse_child(Path(sys.argv[2]), int(sys.argv[3]))))
        return 0
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if not (DEMO / "manifest.csv").exists():
        raise SystemExit(f"No demo collection at {DEMO}: run `kontrol demo-data` first.")
    with open(DEMO / "manifest.csv", newline="") as fh:
        n_demo = sum(1 for _ in csv.DictReader(fh))
    if args.what == "quality":
        result = {
            "demo_photos": n_demo,
            "labels": quality_labels(work, args.seeds),
            "duplicates": quality_duplicates(work),
            "loadavg": loadavg(),
        }
    else:
        result = scale(work, args.n, args.k)
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
