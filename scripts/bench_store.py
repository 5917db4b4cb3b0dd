"""Benchmark of the embedded vector store (FaissStore) at 100k and 1M photos (issue 7).

Vectors are synthesized as in `scripts/bench_engine.py`: the real fused embeddings of the demo
collection (default embedder), v = norm(max(e + s*n, 0)), n ~ N(0, I), s ~ U(0.02, 0.06) per
vector; each synthetic vector keeps its source photo's species. Held-out queries come from the
same recipe with another seed and are not in the store.

Build, serving, a second serving process and "add one photo" each run in their own child process
(this script re-invoked with --child), so peak RSS, start-up and USS/PSS are those of a fresh
process. Usage:

    .venv/bin/python scripts/bench_store.py --sizes 100000 1000000 --workdir /tmp/bench_store
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEMO = ROOT / "data" / "demo"
NOISE_SIGMA = (0.02, 0.06)  # as scripts/bench_engine.py
CHUNK = 20_000  # rows synthesized and upserted at a time (20k x 1680 x 4 B = 134 MB)
K = 10
STORE_SEED, QUERY_SEED = 0, 1


# --- helpers -------------------------------------------------------------------------------------


def loadavg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def proc_status(key: str) -> int:
    """A kB field of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return -1


def smaps_rollup() -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "kB":
            out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    out["USS"] = out.get("Private_Clean", 0) + out.get("Private_Dirty", 0)
    return out


def meminfo(key: str = "MemAvailable") -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return -1


def proc_io() -> dict[str, int]:
    return {
        k: int(v)
        for k, v in (line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    }


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())


def gb(b: float) -> str:
    return f"{b / 1024**3:.2f} GB"


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def row_id(i: int) -> str:
    return str(uuid.UUID(int=int(i)))


def id_row(s: str) -> int:
    return uuid.UUID(s).int


def settings(work: Path, **kw):
    from core.settings import load_settings

    kw.setdefault("models_dir", work / "models")  # never write into the repo's models/
    return load_settings(_env_file=None, **kw)


# --- synthetic data --------------------------------------------------------------------------------


def demo_embeddings(work: Path) -> dict[str, Any]:
    """The demo collection's fused embeddings with the default embedder (cached in work)."""
    cache = work / "demo-embeddings.npz"
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        return {
            "vectors": z["vectors"],
            "species": [str(s) for s in z["species"]],
            "info": json.loads(str(z["info"])),
        }
    from core.engine import Engine
    from core.vectorstore.faiss_store import FaissStore

    onnx = work / "models" / "onnx"
    probe = Path("/tmp/probe_models/onnx")  # a ready ONNX export saves a minute of CPU
    if not onnx.exists() and probe.exists():
        shutil.copytree(probe, onnx)
    index_dir = work / "demo-index"
    engine = Engine(settings(work, images_dir=DEMO, index_dir=index_dir))
    engine.reindex(full=True, train="skip")
    engine.close()
    store = FaissStore(index_dir, read_only=True)
    info = store.info()
    vecs, species = [], []
    for batch in store.iterate():
        vecs.append(batch.vectors)
        species += [p["species"] for p in batch.payloads]
    store.close()
    out = {
        "vectors": np.concatenate(vecs).astype(np.float32),
        "species": species,
        "info": {"fingerprint": info.fingerprint, "dim": info.dim, "model": info.model},
    }
    np.savez(cache, vectors=out["vectors"], species=np.array(species), info=json.dumps(out["info"]))
    return out


def sources_for(n: int, n_real: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 0]).integers(0, n_real, n)


def synth(real: np.ndarray, sources: np.ndarray, start: int, stop: int, seed: int) -> np.ndarray:
    """Rows start..stop of the synthetic set `seed` (deterministic per CHUNK-aligned chunk)."""
    rng = np.random.default_rng([seed, 1, start])
    src = real[sources[start:stop]]
    sigma = rng.uniform(*NOISE_SIGMA, (stop - start, 1)).astype(np.float32)
    block = src + sigma * rng.standard_normal(src.shape, dtype=np.float32)
    np.maximum(block, 0.0, out=block)
    block /= np.linalg.norm(block, axis=1, keepdims=True)
    return block


def payload(species: str, i: int) -> dict[str, str]:
    return {"path": f"{species}/{row_id(i)}.jpg", "species": species, "genus": species.split()[0]}


# --- children ----------------------------------------------------------------------------------


def child_build(args) -> dict[str, Any]:
    from core.vectorstore.base import StoreInfo
    from core.vectorstore.faiss_store import FaissStore

    work, n = Path(args.workdir), args.n
    demo = demo_embeddings(work)
    real, species = demo["vectors"], demo["species"]
    sources = sources_for(n, len(real), STORE_SEED)
    store_dir = Path(args.store)
    t0 = time.perf_counter()
    store = FaissStore(store_dir)
    info = demo["info"]
    store.initialise(StoreInfo(info["fingerprint"], info["dim"], info["model"]), reset=True)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        block = synth(real, sources, start, stop, STORE_SEED)
        store.upsert(
            [row_id(i) for i in range(start, stop)],
            block,
            [payload(species[sources[i]], i) for i in range(start, stop)],
        )
    upsert_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    report = store.maintain()
    maintain_s = time.perf_counter() - t1
    total = time.perf_counter() - t0
    store.close()
    return {
        "upsert_s": upsert_s,
        "maintain_s": maintain_s,
        "build_s": total,
        "maintain": report,
        "disk": dir_bytes(store_dir),
        "files": {p.name: p.stat().st_size for p in store_dir.iterdir()},
        "vmhwm": proc_status("VmHWM"),
        "rss_anon": proc_status("RssAnon"),
        "rss_file": proc_status("RssFile"),
        "load": loadavg(),
    }


def wait_parent(args) -> None:
    Path(args.ready).write_text("ready")
    sys.stdin.read()  # the parent closes our stdin when it is done measuring


def child_serve(args) -> dict[str, Any]:
    t_import = time.perf_counter()
    from core.vectorstore.faiss_store import FaissStore

    work, store_dir = Path(args.workdir), Path(args.store)
    queries = np.load(work / "queries.npy")
    t_open = time.perf_counter()
    store = FaissStore(store_dir, read_only=True)
    first = store.search(queries[0], K)
    t_first = time.perf_counter()
    out: dict[str, Any] = {
        "first_query_wall": time.time(),
        "open_first_s": t_first - t_open,
        "imports_s": t_open - t_import,
        "nprobe": store._state.nprobe,
        "first_hits": len(first[0]),
    }
    reps, found = [], []
    for rep in range(2):
        times = []
        for q in queries:
            t = time.perf_counter()
            hits = store.search(q, K)[0]
            times.append(time.perf_counter() - t)
            if rep == 0:
                found.append([id_row(h.id) for h in hits])
        reps.append({"p50": pct(times, 50), "p95": pct(times, 95), "load": loadavg()})
    out["reps"], out["found"] = reps, found
    out["rss"], out["smaps"] = proc_status("VmRSS"), smaps_rollup()
    if args.role == "second":
        return out
    # filtered search
    flt = json.loads((work / "filters.json").read_text())
    out["filtered"] = {}
    for name, spec in flt.items():
        res = {"times": [], "counts": [], "found": []}
        for rep in range(2):
            times = []
            for i in range(spec["nq"]):
                t = time.perf_counter()
                hits = store.search(queries[i], K, where={"species": spec["species"]})[0]
                times.append(time.perf_counter() - t)
                if rep == 0:
                    res["counts"].append(len(hits))
                    res["found"].append([id_row(h.id) for h in hits])
                    res["species_ok"] = res.get("species_ok", True) and all(
                        h.payload["species"] == spec["species"] for h in hits
                    )
            res["times"].append({"p50": pct(times, 50), "p95": pct(times, 95), "load": loadavg()})
        out["filtered"][name] = res
    # find_similar from a JPEG through the engine with default settings
    from core.engine import Engine

    photo = sorted(DEMO.glob("*/*.jpg"))[0]
    engine = Engine(settings(work, index_dir=store_dir))
    image = engine.read_image(photo)
    for _ in range(5):
        res = engine.find_similar(image, K)
    fs = []
    for _rep in range(2):
        times = []
        for _ in range(50):
            t = time.perf_counter()
            res = engine.find_similar(engine.read_image(photo), K)
            times.append(time.perf_counter() - t)
        fs.append({"p50": pct(times, 50), "p95": pct(times, 95), "load": loadavg()})
    parts = {"read_image": [], "embed": [], "search": []}
    for _ in range(30):
        t = time.perf_counter()
        img = engine.read_image(photo)
        t1 = time.perf_counter()
        vec = engine.embed(img)
        t2 = time.perf_counter()
        engine.neighbours(vec, K)
        t3 = time.perf_counter()
        parts["read_image"].append(t1 - t)
        parts["embed"].append(t2 - t1)
        parts["search"].append(t3 - t2)
    out["find_similar"] = {
        "photo": str(photo.relative_to(DEMO)),
        "reps": fs,
        "n": len(res),
        "parts_p50": {k: pct(v, 50) for k, v in parts.items()},
        "parts_load": loadavg(),
    }
    out["rss_engine"], out["smaps_engine"] = proc_status("VmRSS"), smaps_rollup()
    return out


def child_add(args) -> dict[str, Any]:
    from core.vectorstore.faiss_store import FaissStore

    work, store_dir = Path(args.workdir), Path(args.store)
    q = np.load(work / "queries.npy")
    store = FaissStore(store_dir)
    store.search(q[0], K)  # the writer process is up and serving
    out: dict[str, Any] = {"reps": []}
    for rep in range(2):
        vec = q[-1 - rep]
        before_io, before_disk = proc_io(), dir_bytes(store_dir)
        t = time.perf_counter()
        store.upsert(
            [f"added-{rep}"],
            vec[None, :],
            [{"path": f"Added/{rep}.jpg", "species": "Added x", "genus": "Added"}],
        )
        dt = time.perf_counter() - t
        after_io, after_disk = proc_io(), dir_bytes(store_dir)
        t = time.perf_counter()
        m = store.maintain()
        mt = time.perf_counter() - t
        hit = store.search(vec, 1)[0][0]
        out["reps"].append(
            {
                "upsert_s": dt,
                "write_bytes": after_io["write_bytes"] - before_io["write_bytes"],
                "wchar": after_io["wchar"] - before_io["wchar"],
                "dir_growth": after_disk - before_disk,
                "maintain_s": mt,
                "maintain": m,
                "found_itself": hit.id == f"added-{rep}",
                "load": loadavg(),
            }
        )
    store.delete(["added-0", "added-1"])
    store.close()
    return out


def run_child(work: Path, mode: str, extra: list[str], stdin=None) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--workdir", str(work)]
    return subprocess.Popen(cmd + extra, stdin=stdin, cwd=ROOT)


def child_result(work: Path, name: str) -> dict[str, Any]:
    return json.loads((work / f"{name}.json").read_text())


# --- legacy (seed format) at 100k --------------------------------------------------------------------


def legacy(work: Path, n: int, demo: dict, sources: np.ndarray, queries: np.ndarray, truth):
    from core import seed_format
    from core.index import create_index

    real, species = demo["vectors"], demo["species"]
    dim = real.shape[1]
    matrix = np.empty((n, dim), np.float32)
    for start in range(0, n, CHUNK):
        matrix[start : min(n, start + CHUNK)] = synth(
            real, sources, start, min(n, start + CHUNK), STORE_SEED
        )
    rows = [
        {
            "id": i,
            "uuid": row_id(i),
            "path": f"{species[sources[i]]}/{row_id(i)}.jpg",
            "scientific_name": species[sources[i]],
            "embedding_index": i,
            "mtime_ns": 0,
            "size": 0,
        }
        for i in range(n)
    ]
    meta = {"model": demo["info"]["model"], "model_fingerprint": demo["info"]["fingerprint"]}
    t = time.perf_counter()
    index = create_index("flat_fp16", dim)
    index.add(matrix)
    build_s = time.perf_counter() - t
    d = work / "legacy"
    shutil.rmtree(d, ignore_errors=True)
    t = time.perf_counter()
    seed_format.save(d, seed_format.IndexData(rows, matrix, index, dict(meta)))
    save_s = time.perf_counter() - t
    size = dir_bytes(d)
    t = time.perf_counter()
    data = seed_format.load(d)
    load_s = time.perf_counter() - t
    reps, found = [], []
    for rep in range(2):
        times = []
        for q in queries:
            t = time.perf_counter()
            _, ids = data.index.search(q[None, :], 50)
            ids = np.sort(ids[0][ids[0] >= 0])
            sims = np.asarray(data.embeddings[ids], dtype=np.float32) @ q
            top = ids[np.argsort(-sims, kind="stable")[:K]]
            times.append(time.perf_counter() - t)
            if rep == 0:
                found.append(top.tolist())
        reps.append({"p50": pct(times, 50), "p95": pct(times, 95), "load": loadavg()})
    recall = float(
        np.mean([len(set(f) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)])
    )
    # add one photo = rewrite the whole generation with N+1 rows
    extra = queries[-1][None, :]
    matrix2 = np.concatenate([matrix, extra])
    rows.append({**rows[-1], "id": n, "uuid": row_id(n), "embedding_index": n})
    index.add(extra)
    del data
    io0 = proc_io()
    t = time.perf_counter()
    seed_format.save(d, seed_format.IndexData(rows, matrix2, index, dict(meta)))
    add_s = time.perf_counter() - t
    io1 = proc_io()
    out = {
        "build_s": build_s,
        "save_s": save_s,
        "size": size,
        "load_s": load_s,
        "reps": reps,
        "recall": recall,
        "add_s": add_s,
        "add_write_bytes": io1["write_bytes"] - io0["write_bytes"],
        "add_wchar": io1["wchar"] - io0["wchar"],
        "load": loadavg(),
    }
    shutil.rmtree(d, ignore_errors=True)
    return out


# --- parent ----------------------------------------------------------------------------------------


def recall_of(found, truth) -> float:
    return float(
        np.mean(
            [
                len(set(f) & set(t.tolist())) / max(1, len(t))
                for f, t in zip(found, truth, strict=True)
            ]
        )
    )


def bench_size(work: Path, n: int, nq: int, log) -> dict[str, Any]:
    from core.vectorstore import faiss_ann
    from core.vectorstore.faiss_store import FaissStore

    demo = demo_embeddings(work)
    real, species = demo["vectors"], demo["species"]
    store_dir = work / f"store-{n}"
    shutil.rmtree(store_dir, ignore_errors=True)
    qsrc = sources_for(nq, len(real), QUERY_SEED)
    queries = synth(real, qsrc, 0, nq, QUERY_SEED)
    np.save(work / "queries.npy", queries)
    res: dict[str, Any] = {"n": n, "nq": nq, "load_start": loadavg()}

    log(f"[{n}] build ...")
    t = time.perf_counter()
    p = run_child(
        work,
        "build",
        ["--n", str(n), "--store", str(store_dir), "--result", str(work / "build.json")],
    )
    p.wait()
    res["build"] = child_result(work, "build")
    res["build"]["wall_s"] = time.perf_counter() - t
    log(f"[{n}] build {res['build']['build_s']:.0f} s, {res['build']['maintain']}")

    # ground truth (exact, over all live rows) and filter specs
    t = time.perf_counter()
    ro = FaissStore(store_dir, read_only=True)
    state = ro._current()
    vectors = state.vectors
    live = np.arange(state.rows, dtype=np.int64)
    truth = faiss_ann.exact_neighbours(vectors, live, queries, K)
    sources = sources_for(n, len(real), STORE_SEED)
    row_species = np.array(species, dtype=object)[sources]
    counts = ro.values("species")
    smallest = min(counts, key=lambda s: (counts[s], s))
    largest = max(counts, key=lambda s: (counts[s], s))
    filters, ftruth = {}, {}
    for name, sp in (("smallest", smallest), ("largest", largest)):
        rows = np.flatnonzero(row_species == sp).astype(np.int64)
        assert len(rows) == counts[sp], (sp, len(rows), counts[sp])
        filters[name] = {"species": sp, "count": counts[sp], "nq": 50}
        ftruth[name] = faiss_ann.exact_neighbours(vectors, rows, queries[:50], K)
    (work / "filters.json").write_text(json.dumps(filters))
    res["truth_s"] = time.perf_counter() - t
    ro.close()
    del vectors, state, ro

    log(f"[{n}] serving ...")
    ready1, ready2 = work / "ready1", work / "ready2"
    for r in (ready1, ready2):
        r.unlink(missing_ok=True)
    spawn = time.time()
    p1 = run_child(
        work,
        "serve",
        [
            "--store",
            str(store_dir),
            "--role",
            "first",
            "--ready",
            str(ready1),
            "--result",
            str(work / "serve1.json"),
        ],
        stdin=subprocess.PIPE,
    )
    while not ready1.exists():
        if p1.poll() is not None:
            raise SystemExit("serving child failed")
        time.sleep(0.2)
    s1 = child_result(work, "serve1")
    s1["startup_s"] = s1["first_query_wall"] - spawn
    mem_before = meminfo()
    p2 = run_child(
        work,
        "serve",
        [
            "--store",
            str(store_dir),
            "--role",
            "second",
            "--ready",
            str(ready2),
            "--result",
            str(work / "serve2.json"),
        ],
        stdin=subprocess.PIPE,
    )
    while not ready2.exists():
        if p2.poll() is not None:
            raise SystemExit("second serving child failed")
        time.sleep(0.2)
    mem_after = meminfo()
    s2 = child_result(work, "serve2")
    p1.stdin.close(), p2.stdin.close()
    p1.wait(), p2.wait()
    s1["recall"] = recall_of(s1.pop("found"), truth)
    s2["recall"] = recall_of(s2.pop("found"), truth)
    for name, fr in s1["filtered"].items():
        nmatch = filters[name]["count"]
        fr["exact_k"] = all(c == min(K, nmatch) for c in fr["counts"])
        fr["recall"] = recall_of(fr.pop("found"), ftruth[name])
        fr["species"], fr["count"] = filters[name]["species"], nmatch
        fr.pop("counts_list", None)
    res["serve1"], res["serve2"] = s1, s2
    res["second_mem_available_drop"] = mem_before - mem_after
    log(f"[{n}] serve p50 {[r['p50'] for r in s1['reps']]} recall {s1['recall']:.3f}")

    log(f"[{n}] add one photo ...")
    p = run_child(work, "add", ["--store", str(store_dir), "--result", str(work / "add.json")])
    p.wait()
    res["add"] = child_result(work, "add")

    if n <= 200_000:
        log(f"[{n}] legacy seed format ...")
        res["legacy"] = legacy(work, n, demo, sources, queries, truth)
    else:
        res["legacy"] = None
    res["load_end"] = loadavg()
    return res


# --- report ----------------------------------------------------------------------------------------


def verdict(value: float, limit: float, spread: float = 0.0, higher_better: bool = False) -> str:
    """PASS / MISS; 'PASS (within noise)' when the spread straddles the limit."""
    ok = value >= limit if higher_better else value <= limit
    if spread and abs(value - limit) <= spread:
        return ("PASS" if ok else "MISS") + " (within noise)"
    return "PASS" if ok else "MISS"


def report(results: list[dict], cmd: str, machine: str) -> str:
    L: list[str] = []
    L.append("## Store at scale (issue 7)")
    L.append("")
    L.append(f"Command: `{cmd}`  ")
    L.append(f"Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; {machine}  ")
    L.append(
        "Data: synthetic fused vectors (1680-d, the default embedder's) derived from the 85 real "
        "demo embeddings as in `bench_engine.py`: v = norm(max(e + s*n, 0)), s ~ U(0.02, 0.06); "
        "each keeps its source's species; payload {path, species, genus}. 200 held-out queries "
        "from another seed, not in the store. Recall@10 is against exact brute force "
        "(`faiss_ann.exact_neighbours`) over all rows. Build, serving, the second serving process "
        "and the add run each in a fresh child process; every latency figure is given per "
        "repetition (rep1 / rep2) with the 1/5/15-min load averages at that moment: other jobs "
        "shared the 2 cores, so single figures move by tens of percent."
    )
    L.append("")
    for r in results:
        n = r["n"]
        b, s1, s2, add = r["build"], r["serve1"], r["serve2"], r["add"]
        m = b["maintain"].get("ann", {})
        L.append(f"### {n:,} photos")
        L.append("")
        L.append(f"Load at start {r['load_start']}, at end {r['load_end']}.")
        L.append("")
        L.append("| measure | value | load (1/5/15) |")
        L.append("|---|---|---|")
        L.append(
            f"| build: initialise + upsert ({n // CHUNK} x {CHUNK:,}) + maintain | {b['build_s']:.0f} s "
            f"(upsert {b['upsert_s']:.0f} s, maintain {b['maintain_s']:.0f} s) | {b['load']} |"
        )
        L.append(
            f"| maintain report | nlist {m.get('nlist')}, nprobe {m.get('nprobe')}, tuned "
            f"recall@10 {m.get('tuned_recall_at_10')}, train {m.get('train_s')} s, IVF total "
            f"{m.get('seconds')} s | |"
        )
        end = (
            f" (at its end: anonymous {gb(b['rss_anon'])}, file-backed {gb(b['rss_file'])})"
            if "rss_anon" in b
            else ""
        )
        peak = gb(b["vmhwm"])
        L.append(f"| build peak RSS (VmHWM of the build process) | {peak}{end} | |")
        files = ", ".join(
            f"{k.split('-')[0]} {gb(v)}" for k, v in sorted(b["files"].items()) if v > 1e6
        )
        L.append(f"| disk | {gb(b['disk'])} ({files}) | |")
        L.append(
            f"| start-up: spawn -> store open + first query answered | {s1['startup_s']:.2f} s "
            f"(imports {s1['imports_s']:.2f} s, open + first query {s1['open_first_s']:.2f} s) | |"
        )
        for name, s in (
            ("search k=10, 1 query at a time", s1),
            ("same, second serving process", s2),
        ):
            reps = " / ".join(f"{x['p50']:.2f}" for x in s["reps"])
            reps95 = " / ".join(f"{x['p95']:.2f}" for x in s["reps"])
            loads = " ; ".join(x["load"] for x in s["reps"])
            L.append(
                f"| {name}: p50 / p95 ms (rep1 / rep2) | p50 {reps}; p95 {reps95}; "
                f"recall@10 {s['recall']:.3f} | {loads} |"
            )
        sm = s1["smaps"]
        L.append(
            f"| serving process after the queries | RSS {gb(s1['rss'])}, PSS {gb(sm['Pss'])}, "
            f"USS {gb(sm['USS'])}; of the RSS, anonymous {gb(sm.get('Anonymous', 0))}, the rest "
            f"memory-mapped store files (page cache) | |"
        )
        sm2 = s2["smaps"]
        L.append(
            f"| second serving process (first still alive) | USS {gb(sm2['USS'])}, RSS "
            f"{gb(s2['rss'])}, PSS {gb(sm2['Pss'])}, anonymous {gb(sm2.get('Anonymous', 0))}; "
            f"system MemAvailable dropped "
            f"{gb(r['second_mem_available_drop'])} while it ran | |"
        )
        se = s1["smaps_engine"]
        L.append(
            f"| serving process after loading the engine (ONNX embedder) | RSS "
            f"{gb(s1['rss_engine'])}, USS {gb(se['USS'])} | |"
        )
        for name, fr in s1["filtered"].items():
            reps = " / ".join(f"{x['p50']:.2f}" for x in fr["times"])
            loads = " ; ".join(x["load"] for x in fr["times"])
            L.append(
                f"| filtered, {name} species ({fr['species']}, {fr['count']:,} photos), 50 "
                f"queries | exactly min(10, matches): {'yes' if fr['exact_k'] else 'NO'}; "
                f"species all match: {'yes' if fr['species_ok'] else 'NO'}; recall@10 "
                f"{fr['recall']:.3f}; p50 ms {reps} | {loads} |"
            )
        fs = s1["find_similar"]
        reps = " / ".join(f"{x['p50']:.1f}" for x in fs["reps"])
        reps95 = " / ".join(f"{x['p95']:.1f}" for x in fs["reps"])
        loads = " ; ".join(x["load"] for x in fs["reps"])
        L.append(
            f"| find_similar from a JPEG (`{fs['photo']}`, read + embed + search), 50 x | p50 ms "
            f"{reps}; p95 ms {reps95} | {loads} |"
        )
        if "parts_p50" in fs:
            pp = fs["parts_p50"]
            L.append(
                f"| find_similar split (30 x, p50 ms) | read_image {pp['read_image']:.1f}, embed "
                f"(ONNX) {pp['embed']:.1f}, store search {pp['search']:.2f} | {fs['parts_load']} |"
            )
        for i, a in enumerate(add["reps"]):
            L.append(
                f"| add one photo #{i + 1} (writer already open): upsert | {a['upsert_s'] * 1000:.0f} "
                f"ms; write_bytes {a['write_bytes'] / 1024:.0f} KiB (wchar "
                f"{a['wchar'] / 1024:.0f} KiB), directory grew {a['dir_growth'] / 1024:.0f} KiB; "
                f"maintain() after {a['maintain_s'] * 1000:.0f} ms, did {a['maintain'] or 'nothing'}; "
                f"found itself {a['found_itself']} | {a['load']} |"
            )
        lg = r.get("legacy")
        if lg:
            reps = " / ".join(f"{x['p50']:.2f}" for x in lg["reps"])
            reps95 = " / ".join(f"{x['p95']:.2f}" for x in lg["reps"])
            L.append("")
            L.append(
                f"Side by side, the previous seed format (`core.seed_format`, flat_fp16) at {n:,}:"
            )
            L.append("")
            L.append("| measure | previous (seed_format, flat_fp16) | store (FaissStore) |")
            L.append("|---|---|---|")
            L.append(
                f"| build | index.add {lg['build_s']:.1f} s + save {lg['save_s']:.1f} s | "
                f"{b['build_s']:.0f} s (incl. synthesis) |"
            )
            L.append(f"| on disk | {gb(lg['size'])} | {gb(b['disk'])} |")
            L.append(
                f"| start-up | load {lg['load_s']:.2f} s (in process) | open + first query "
                f"{s1['open_first_s']:.2f} s |"
            )
            s_reps = " / ".join(f"{x['p50']:.2f}" for x in s1["reps"])
            L.append(
                f"| search p50 ms (rep1 / rep2) | {reps} (p95 {reps95}), recall@10 "
                f"{lg['recall']:.3f} | {s_reps}, recall@10 {s1['recall']:.3f} |"
            )
            a = add["reps"][0]
            L.append(
                f"| add one photo | full save of N+1: {lg['add_s']:.1f} s, write_bytes "
                f"{lg['add_write_bytes'] / 1024**2:.0f} MiB | {a['upsert_s'] * 1000:.0f} ms, "
                f"{a['write_bytes'] / 1024:.0f} KiB |"
            )
            L.append(f"| load during this part | {lg['load']} | |")
        L.append("")
        L.append(targets(r))
        L.append("")
    return "\n".join(L) + "\n"


def targets(r: dict) -> str:
    n, b, s1, s2, add = r["n"], r["build"], r["serve1"], r["serve2"], r["add"]
    p50s = [x["p50"] for x in s1["reps"]]
    p95s = [x["p95"] for x in s1["reps"]]
    spread50 = max(p50s) - min(p50s)
    spread95 = max(p95s) - min(p95s)
    rows = ["| target | figure (spread over reps) | verdict |", "|---|---|---|"]

    def add_row(name, fig, v):
        rows.append(f"| {name} | {fig} | {v} |")

    rec = s1["recall"]
    if n >= 1_000_000:
        add_row(
            "search p50 <= 5 ms",
            f"{np.mean(p50s):.2f} ms ({min(p50s):.2f}-{max(p50s):.2f})",
            verdict(max(p50s), 5, spread50),
        )
        add_row(
            "search p95 <= 20 ms",
            f"{np.mean(p95s):.2f} ms ({min(p95s):.2f}-{max(p95s):.2f})",
            verdict(max(p95s), 20, spread95),
        )
        add_row("recall@10 >= 0.95", f"{rec:.3f}", verdict(rec, 0.95, 0.01, True))
        fs = [x["p50"] for x in s1["find_similar"]["reps"]]
        add_row(
            "find_similar JPEG p50 <= 50 ms",
            f"{np.mean(fs):.1f} ms ({min(fs):.1f}-{max(fs):.1f})",
            verdict(max(fs), 50, max(fs) - min(fs)),
        )
        add_row(
            "serving RSS <= 3 GB",
            gb(s1["rss"]) + f" (with engine {gb(s1['rss_engine'])})",
            verdict(s1["rss_engine"], 3 * 1024**3),
        )
        add_row("start-up <= 5 s", f"{s1['startup_s']:.2f} s", verdict(s1["startup_s"], 5))
        # What a second process costs the machine: its own (anonymous) memory, and whatever it
        # made the kernel hold on top (MemAvailable drop). Its USS also counts the pages of the
        # memory-mapped IVF file that both processes share in the page cache, so USS is shown
        # but not judged.
        anon2 = s2["smaps"].get("Anonymous", 0)
        extra = max(anon2, r["second_mem_available_drop"])
        add_row(
            "second serving process adds <= 0.5 GB",
            f"anonymous {gb(anon2)}, MemAvailable drop {gb(r['second_mem_available_drop'])} "
            f"(USS {gb(s2['smaps']['USS'])}: includes the shared mmap'd IVF file)",
            verdict(extra, 0.5 * 1024**3),
        )
        add_row("full build <= 10 min", f"{b['build_s'] / 60:.1f} min", verdict(b["build_s"], 600))
        add_row("build peak RSS <= 12 GB", gb(b["vmhwm"]), verdict(b["vmhwm"], 12 * 1024**3))
        worst = max(add["reps"], key=lambda a: a["upsert_s"])
        add_row(
            "add one photo <= 2 s",
            f"{worst['upsert_s'] * 1000:.0f} ms (worst of 2)",
            verdict(worst["upsert_s"], 2),
        )
        wb = max(max(a["write_bytes"], a["dir_growth"]) for a in add["reps"])
        add_row("add one photo <= 50 MB written", f"{wb / 1024:.0f} KiB", verdict(wb, 50 * 1024**2))
        for name, fr in s1["filtered"].items():
            add_row(
                f"filtered ({name} species): exactly k",
                "yes" if fr["exact_k"] else "no",
                "PASS" if fr["exact_k"] else "MISS",
            )
            add_row(
                f"filtered ({name} species): recall@10 >= 0.99",
                f"{fr['recall']:.3f}",
                verdict(fr["recall"], 0.99, 0.005, True),
            )
    else:
        add_row(
            "search p50 <= 2 ms",
            f"{np.mean(p50s):.2f} ms ({min(p50s):.2f}-{max(p50s):.2f})",
            verdict(max(p50s), 2, spread50),
        )
        add_row("recall@10 >= 0.95", f"{rec:.3f}", verdict(rec, 0.95, 0.01, True))
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_store"))
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--keep", action="store_true", help="keep the store directories")
    ap.add_argument(
        "--report-only", action="store_true", help="write the section from saved result-<n>.json"
    )
    ap.add_argument("--child", choices=["build", "serve", "add"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("--ready", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        fn = {"build": child_build, "serve": child_serve, "add": child_add}[args.child]
        out = fn(args)
        Path(args.result).write_text(json.dumps(out, default=str))
        if args.child == "serve":
            wait_parent(args)
        return
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(f"{datetime.now().strftime('%H:%M:%S')} load {loadavg()} {m}", flush=True)  # noqa: E731
    log("demo embeddings ...")
    demo_embeddings(work)
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    import faiss

    machine = (
        f"{cpu}, {os.cpu_count()} cores, {gb(meminfo('MemTotal'))} RAM, "
        f"faiss {faiss.__version__}, numpy {np.__version__}"
    )
    results = []
    for n in args.sizes:
        if args.report_only:
            results.append(json.loads((work / f"result-{n}.json").read_text()))
            continue
        r = bench_size(work, n, args.queries, log)
        (work / f"result-{n}.json").write_text(json.dumps(r, default=str, indent=1))
        results.append(r)
        if not args.keep:
            shutil.rmtree(work / f"store-{n}", ignore_errors=True)
    cmd = ".venv/bin/python scripts/bench_store.py " + " ".join(sys.argv[1:])
    text = report(results, cmd, machine)
    (work / f"section-{'-'.join(map(str, args.sizes))}.md").write_text(text)
    print(text)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
