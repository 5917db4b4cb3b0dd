"""The vector store backends side by side: faiss, milvus, qdrant (local mode), chroma (issue 8).

Every backend gets the same synthetic fused vectors (1680-d, derived from the real demo
embeddings exactly as `scripts/bench_store.py` does, reusing its cache and synthesis) and the same
held-out queries (another seed, not in any store). A backend that runs at a smaller size gets the
first n rows of the same set, and its recall is measured against brute force over those n rows.

Each backend runs in its own child process (this script with --child), so the RSS is that of one
backend only: ingest (upsert in batches + maintain()), search k=10 one query at a time (2 reps),
filtered search on a small and a large species, disk size, RSS. Milvus runs as the real standalone
server (`tests/milvus_server.py`) started by the child; its server's RSS is read from /proc, and a
raw `MilvusClient.search` with the backend's own parameters is timed interleaved with the backend's
`search` to give the client-side overhead. Usage:

    .venv/bin/python scripts/bench_backends.py --workdir /tmp/bench_backends
    .venv/bin/python scripts/bench_backends.py --workdir /tmp/bench_backends --report-only
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_store as bs

K = 10
BATCH = 5_000  # rows per upsert call
FILTER_Q = 50  # queries per filtered search run
TOKEN = "root:Milvus"


def tree_bytes(path: Path, skip: tuple[str, ...] = ()) -> int:
    total = 0
    for p in Path(path).rglob("*"):
        if any(part in skip for part in p.relative_to(path).parts):
            continue
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def pid_status(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return -1


def descendants(pid: int) -> list[int]:
    """pid and every process below it (from /proc/*/stat)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += [c for c, pp in parent.items() if pp == p]
    return out


def timed(fn, *a, **kw):
    t = time.perf_counter()
    res = fn(*a, **kw)
    return res, time.perf_counter() - t


def summary(times: list[float]) -> dict[str, Any]:
    return {"p50": bs.pct(times, 50), "p95": bs.pct(times, 95), "load": bs.loadavg()}


# --- child: one backend ----------------------------------------------------------------------------


def open_backend(name: str, work: Path, url: str | None = None):
    from core.vectorstore import open_store

    kw: dict[str, Any] = {"store": name, "index_dir": work / f"{name}-index"}
    if name == "milvus":
        kw.update(store_url=url, store_api_key=TOKEN, store_collection="bench")
    return open_store(bs.settings(work, **kw)), kw["index_dir"]


def child(args) -> dict[str, Any]:
    from core.vectorstore.base import StoreInfo

    work, name, n = Path(args.workdir), args.child, args.n
    demo = bs.demo_embeddings(work)
    real, species = demo["vectors"], demo["species"]
    sources = bs.sources_for(args.full_n, len(real), bs.STORE_SEED)
    queries = np.load(work / "queries.npy")
    filters = json.loads((work / "filters.json").read_text())
    out: dict[str, Any] = {"backend": name, "target_n": n, "load_start": bs.loadavg()}

    server = None
    if name == "milvus":
        sys.path.insert(0, str(bs.ROOT / "tests"))
        from milvus_server import MilvusTestServer

        mdir = work / "milvus-server"
        shutil.rmtree(mdir / "data", ignore_errors=True)
        shutil.rmtree(mdir / "logs", ignore_errors=True)
        server = MilvusTestServer(mdir)
        _, out["server_start_s"] = timed(server.start)
    try:
        shutil.rmtree(work / f"{name}-index", ignore_errors=True)
        store, data_dir = open_backend(name, work, server.url if server else None)
        if name == "milvus":
            data_dir = work / "milvus-server" / "data"
        info = demo["info"]
        store.initialise(StoreInfo(info["fingerprint"], info["dim"], info["model"]), reset=True)

        # ingest
        t0 = time.perf_counter()
        done, capped, batch_s = 0, False, []
        with store.writer():
            for start in range(0, n, bs.CHUNK):
                stop = min(n, start + bs.CHUNK)
                # synthesized whole CHUNK-aligned blocks, so a smaller n is a prefix of the set
                block_stop = min(args.full_n, start + bs.CHUNK)
                block = bs.synth(real, sources, start, block_stop, bs.STORE_SEED)
                for s in range(start, stop, BATCH):
                    e = min(stop, s + BATCH)
                    elapsed = time.perf_counter() - t0
                    est = max(batch_s) if batch_s else 0.0
                    if args.ingest_cap and done and elapsed + est > args.ingest_cap:
                        capped = True
                        break
                    tb = time.perf_counter()
                    store.upsert(
                        [bs.row_id(i) for i in range(s, e)],
                        block[s - start : e - start],
                        [bs.payload(species[sources[i]], i) for i in range(s, e)],
                    )
                    batch_s.append(time.perf_counter() - tb)
                    done = e
                if capped:
                    break
            upsert_s = time.perf_counter() - t0
            report, maintain_s = timed(store.maintain)
        out.update(
            n=done,
            capped=capped,
            upsert_s=upsert_s,
            maintain_s=maintain_s,
            maintain=report,
            batch_s_first_last=[batch_s[0], batch_s[-1]],
            ingest_load=bs.loadavg(),
            count=store.count(),
        )
        if name == "milvus":
            out["index_after_ingest"] = milvus_index_state(store)
            if args.index_wait:  # let the server finish its HNSW before searching
                t = time.perf_counter()
                while time.perf_counter() - t < args.index_wait:
                    state = milvus_index_state(store)
                    if state.get("pending_index_rows") == 0 and state.get("indexed_rows"):
                        break
                    time.sleep(2)
                out["index_wait_s"] = time.perf_counter() - t
                out["index_after_wait"] = milvus_index_state(store)

        # unfiltered search, one query at a time
        for q in queries[:5]:
            store.search(q, K)
        reps, found, raw_reps = [], [], []
        for rep in range(2):
            times, raw_times = [], []
            for q in queries:
                if name == "milvus":
                    _, dt = timed(raw_milvus_search, store, q)
                    raw_times.append(dt)
                hits, dt = timed(store.search, q, K)
                times.append(dt)
                if rep == 0:
                    found.append([bs.id_row(h.id) for h in hits[0]])
            reps.append(summary(times))
            if raw_times:
                raw_reps.append(summary(raw_times))
        out["reps"], out["found"] = reps, found
        if raw_reps:
            out["raw_reps"] = raw_reps
            out["dim_rpcs"] = timed(store._dim)[1]  # search() reads info() from the server

        # filtered search
        out["filtered"] = {}
        for fname, spec in filters.items():
            res: dict[str, Any] = {"times": [], "counts": [], "found": [], "species_ok": True}
            for rep in range(2):
                times = []
                for q in queries[:FILTER_Q]:
                    hits, dt = timed(store.search, q, K, where={"species": spec["species"]})
                    times.append(dt)
                    if rep == 0:
                        res["counts"].append(len(hits[0]))
                        res["found"].append([bs.id_row(h.id) for h in hits[0]])
                        res["species_ok"] &= all(
                            h.payload["species"] == spec["species"] for h in hits[0]
                        )
                res["times"].append(summary(times))
            res["store_count"] = store.count({"species": spec["species"]})
            out["filtered"][fname] = res
        if name == "milvus":
            out["index_after_search"] = milvus_index_state(store)
        out["rss"], out["vmhwm"] = bs.proc_status("VmRSS"), bs.proc_status("VmHWM")
        if server is not None:
            pids = descendants(server._server.server_proc.pid)
            out["server_pids"] = pids
            out["server_rss"] = sum(max(0, pid_status(p, "VmRSS")) for p in pids)
            out["server_hwm"] = sum(max(0, pid_status(p, "VmHWM")) for p in pids)
        store.close()
        out["disk"] = tree_bytes(data_dir)
        out["data_dir"] = str(data_dir)
        out["load_end"] = bs.loadavg()
    finally:
        if server is not None:
            server.stop()
    return out


def raw_milvus_search(store, q: np.ndarray):
    """The server call `MilvusStore.search` makes, with its parameters, and nothing around it."""
    from core.vectorstore import milvus_store as ms

    return store.client.search(
        store.collection,
        data=q[None, :].tolist(),
        limit=K,
        filter="",
        output_fields=["payload"],
        search_params={"metric_type": "IP", "params": {"ef": max(ms.EF_MIN, K)}},
        consistency_level=ms.SESSION,
        timeout=store.timeout,
    )


def milvus_index_state(store) -> dict[str, Any]:
    try:
        d = store.client.describe_index(store.collection, index_name="vector")
        keep = ("index_type", "indexed_rows", "total_rows", "pending_index_rows", "state")
        return {k: d.get(k) for k in keep if k in d}
    except Exception as exc:
        return {"error": str(exc)[:200]}


# --- parent -------------------------------------------------------------------------------------


def exact_top(matrix: np.ndarray, rows: np.ndarray, queries: np.ndarray) -> list[list[int]]:
    scores = queries @ matrix[rows].T
    out = []
    for s in scores:
        top = np.argpartition(-s, min(K, len(s) - 1))[:K] if len(s) > K else np.arange(len(s))
        top = top[np.argsort(-s[top], kind="stable")]
        out.append(rows[top].tolist())
    return out


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / max(1, len(t)) for f, t in zip(found, truth, strict=True)])
    )


def run(args) -> None:
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "demo-embeddings.npz"
    if not cache.exists() and Path("/tmp/bench_store/demo-embeddings.npz").exists():
        shutil.copy("/tmp/bench_store/demo-embeddings.npz", cache)
    demo = bs.demo_embeddings(work)
    real, species = demo["vectors"], demo["species"]
    sources = bs.sources_for(args.full_n, len(real), bs.STORE_SEED)
    queries = bs.synth(real, bs.sources_for(args.nq, len(real), bs.QUERY_SEED), 0, args.nq, 1)
    np.save(work / "queries.npy", queries)
    row_species = np.array(species, dtype=object)[sources]
    names, counts = np.unique(row_species, return_counts=True)
    order = np.lexsort((names, counts))
    small, large = str(names[order[0]]), str(names[order[-1]])
    (work / "filters.json").write_text(
        json.dumps({"small": {"species": small}, "large": {"species": large}})
    )
    results_file = work / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    sizes = {"faiss": args.full_n, "milvus": args.full_n, "qdrant": args.qdrant_n}
    sizes["chroma"] = args.chroma_n
    for name in args.backends:
        print(f"[{name}] n={sizes[name]} load {bs.loadavg()}", flush=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name]
        cmd += ["--workdir", str(work), "--n", str(sizes[name]), "--full-n", str(args.full_n)]
        cmd += ["--result", str(work / f"{name}.json")]
        if name == "chroma" and args.chroma_cap:
            cmd += ["--ingest-cap", str(args.chroma_cap)]
        key = name
        if name == "milvus" and args.milvus_index_wait:
            cmd += ["--index-wait", str(args.milvus_index_wait)]
            key = "milvus (HNSW built)"
        t = time.perf_counter()
        rc = subprocess.call(cmd, cwd=bs.ROOT)
        if rc:
            print(f"[{name}] child failed rc={rc}", flush=True)
            continue
        res = json.loads((work / f"{name}.json").read_text())
        res["wall_s"] = time.perf_counter() - t
        results[key] = res
        results_file.write_text(json.dumps(results))
        print(f"[{name}] done in {res['wall_s']:.0f} s", flush=True)

    # recall against brute force over the rows each backend holds
    n_max = args.full_n
    matrix = np.empty((n_max, queries.shape[1]), np.float32)
    for start in range(0, n_max, bs.CHUNK):
        stop = min(n_max, start + bs.CHUNK)
        matrix[start:stop] = bs.synth(real, sources, start, stop, bs.STORE_SEED)
    for res in results.values():
        n = res["n"]
        truth = exact_top(matrix, np.arange(n), queries)
        res["recall"] = recall(res["found"], truth)
        for fname, fr in res["filtered"].items():
            sp = small if fname == "small" else large
            rows = np.flatnonzero(row_species[:n] == sp)
            fr["species"], fr["matches"] = sp, len(rows)
            fr["exact_k"] = all(c == min(K, len(rows)) for c in fr["counts"])
            fr["recall"] = recall(fr["found"], exact_top(matrix, rows, queries[:FILTER_Q]))
    cmd = " ".join(["scripts/bench_backends.py", *sys.argv[1:]])
    md = report(results, f".venv/bin/python {cmd}")
    (work / "section.md").write_text(md)
    print(md)


def verdict(value: float, target: float, noise: float, higher_better: bool) -> str:
    ok = value >= target if higher_better else value <= target
    if not ok:
        return "MISS"
    return "MISS (within noise)" if abs(value - target) <= noise else "PASS"


def report(results: dict[str, Any], cmd: str) -> str:
    L = ["## Store backends side by side (issue 8)", ""]
    L.append(f"Command: `{cmd}`  ")
    L.append(
        f"Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; 2 shared CPU cores, 24 GB."
    )
    L.append("")
    L.append(
        "Data: the synthetic fused vectors of `bench_store.py` (1680-d, from the 85 real demo "
        "embeddings, v = norm(max(e + s*n, 0))), payload {path, species, genus}; the same 200 "
        "held-out queries (another seed, not in any store) for every backend. A backend run at "
        "a smaller n holds the first n rows of the same set and its recall is against brute "
        f"force over those n rows. Ingest = upsert in calls of {BATCH:,} rows + `maintain()`. "
        "Latency: k=10, one query at a time, 200 queries, rep1 / rep2, with the 1/5/15-min load "
        f"average after each rep. Filtered: where={{species: X}}, {FILTER_Q} queries. Each "
        "backend runs in its own child process; RSS is that process (VmRSS at the end / VmHWM)."
    )
    L.append("")
    L.append(
        "| backend | n | ingest s (upsert + maintain) | search p50 ms | search p95 ms | "
        "recall@10 (>= 0.95) | disk | RSS / peak | load after reps |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        p50 = " / ".join(f"{x['p50']:.2f}" for x in r["reps"])
        p95 = " / ".join(f"{x['p95']:.2f}" for x in r["reps"])
        noise = 2 * np.sqrt(max(r["recall"] * (1 - r["recall"]), 1e-9) / (K * len(r["found"])))
        v = verdict(r["recall"], 0.95, noise, True)
        cap = " (time cap hit)" if r.get("capped") else ""
        rss = f"{bs.gb(r['rss'])} / {bs.gb(r['vmhwm'])}"
        if "server_rss" in r:
            rss += f"; server {bs.gb(r['server_rss'])} / {bs.gb(r['server_hwm'])}"
        loads = " ; ".join(x["load"] for x in r["reps"])
        L.append(
            f"| {name} | {r['n']:,}{cap} | {r['upsert_s'] + r['maintain_s']:.0f} "
            f"({r['upsert_s']:.0f} + {r['maintain_s']:.1f}); load {r['ingest_load']} | {p50} | "
            f"{p95} | {r['recall']:.3f} {v} | {bs.gb(r['disk'])} | {rss} | {loads} |"
        )
    L.append("")
    L.append(
        "| backend | species (matches) | exactly min(k, matches) | species all match | "
        "recall@10 | p50 ms | p95 ms | load |"
    )
    L.append("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        for fname, fr in r["filtered"].items():
            p50 = " / ".join(f"{x['p50']:.2f}" for x in fr["times"])
            p95 = " / ".join(f"{x['p95']:.2f}" for x in fr["times"])
            loads = " ; ".join(x["load"] for x in fr["times"])
            L.append(
                f"| {name} | {fname}: {fr['species']} ({fr['matches']:,}) | "
                f"{'yes' if fr['exact_k'] else 'NO'} | {'yes' if fr['species_ok'] else 'NO'} | "
                f"{fr['recall']:.3f} | {p50} | {p95} | {loads} |"
            )
    for key, m in results.items():
        if "raw_reps" not in m:
            continue
        L.append("")
        deltas = [b["p50"] - a["p50"] for a, b in zip(m["raw_reps"], m["reps"], strict=True)]
        raw = " / ".join(f"{x['p50']:.2f}" for x in m["raw_reps"])
        back = " / ".join(f"{x['p50']:.2f}" for x in m["reps"])
        noise = abs(deltas[0] - deltas[1])
        worst = max(deltas)
        L.append(
            f"{key}: client overhead (raw `MilvusClient.search` with the backend's parameters, "
            f"timed interleaved query by query with `MilvusStore.search`): raw p50 {raw} ms, "
            f"backend p50 {back} ms, overhead {' / '.join(f'{d:.2f}' for d in deltas)} ms "
            f"(target <= 5 ms: {verdict(worst, 5.0, noise, False)}). One `_dim()` call (the "
            f"`info()` the backend reads from the server on every search) took "
            f"{m['dim_rpcs'] * 1000:.2f} ms. Server start {m['server_start_s']:.0f} s; "
            f"index after ingest {m['index_after_ingest']}, after the searches "
            f"{m['index_after_search']}."
        )
        if "index_wait_s" in m:
            L[-1] += (
                f" Searched after waiting {m['index_wait_s']:.0f} s for the server's index "
                f"build: {m['index_after_wait']}."
            )
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/bench_backends")
    ap.add_argument("--full-n", type=int, default=100_000)
    ap.add_argument("--qdrant-n", type=int, default=20_000)
    ap.add_argument("--chroma-n", type=int, default=100_000)
    ap.add_argument("--chroma-cap", type=float, default=300.0, help="chroma ingest time cap (s)")
    ap.add_argument("--nq", type=int, default=200)
    ap.add_argument("--backends", nargs="+", default=["faiss", "qdrant", "milvus", "chroma"])
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--child")
    ap.add_argument("--n", type=int)
    ap.add_argument("--ingest-cap", type=float, default=0.0)
    ap.add_argument("--index-wait", type=float, default=0.0)
    ap.add_argument(
        "--milvus-index-wait",
        type=float,
        default=0.0,
        help="run milvus again, searching only once the server's HNSW is built (up to S s)",
    )
    ap.add_argument("--result")
    args = ap.parse_args()
    if args.child:
        Path(args.result).write_text(json.dumps(child(args)))
    elif args.report_only:
        args.backends = []
        run(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
