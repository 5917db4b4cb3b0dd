"""Measure kontrol against the issue's performance targets and write BENCHMARKS.md.

    python scripts/benchmark.py                 # full run (~10 min on 2 cores)
    python scripts/benchmark.py --quick         # small, fast smoke run (numbers not meaningful)
    python scripts/benchmark.py --only engine --only bot --repeat 300

Sections: engine (find_similar latency at 100k vectors in a FaissStore, per index type and per
stage), indexing (`Engine.reindex` vs a naive loop), models (Lite0/Lite2/V2M on ONNX Runtime and
PyTorch), bot (many chats through the fake Bot API server). Each section of BENCHMARKS.md sits between
`<!-- bench-<name>:start -->` and `<!-- bench-<name>:end -->` markers; a run replaces only the
sections it measured (and the summary), and keeps everything else in the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import (  # noqa: E402
    DEFAULT_KIND,
    DEFAULT_KINDS,
    INDEX_KINDS,
    Section,
    Target,
    bench_indexing,
    bench_models,
    bench_queries,
    build_synthetic,
    machine_info,
    real_embeddings,
    settings,
)

SECTIONS = ("engine", "indexing", "models", "bot")
ORDER = ("summary", *SECTIONS)
TITLE = "# Benchmarks"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- BENCHMARKS.md ---------------------------------------------------------------------------------


def _markers(key: str) -> tuple[str, str]:
    return f"<!-- bench-{key}:start -->", f"<!-- bench-{key}:end -->"


def _block(key: str, text: str) -> str:
    start, end = _markers(key)
    return f"{start}\n{text.strip()}\n{end}"


def _find(doc: str, key: str) -> re.Match[str] | None:
    start, end = _markers(key)
    return re.search(re.escape(start) + r".*?" + re.escape(end), doc, flags=re.S)


def _targets_of(doc: str, key: str) -> list[dict[str, object]]:
    """Target rows stored (as a JSON comment) inside a section already in the file."""
    match = _find(doc, key)
    if match is None:
        return []
    data = re.search(r"<!-- targets: (.*?) -->", match.group(0), flags=re.S)
    try:
        return json.loads(data.group(1)) if data else []
    except ValueError:
        return []


def render_section(sec: Section, command: str, date: str) -> str:
    rows = [
        {"name": t.name, "target": t.target, "value": t.value, "passed": t.passed, "date": date}
        for t in sec.targets
    ]
    lines = [
        f"## {sec.title}",
        "",
        f"_Measured {date} with `{command}`._",
        "",
        *sec.body,
        "",
        f"<!-- targets: {json.dumps(rows)} -->",
    ]
    return "\n".join(lines)


def render_summary(doc: str, info: dict[str, str], command: str) -> str:
    rows: list[dict[str, object]] = []
    for key in SECTIONS:
        rows.extend(_targets_of(doc, key))
    lines = [
        "## Summary",
        "",
        f"Last run: {info['date']}, `{command}`.",
        "",
        f"Machine: {info['cpu']}, {info['nproc']} cores (`nproc`), {info['memory']} RAM; "
        f"{info['os']}. Python {info['python']}, torch {info['torch']}, onnxruntime "
        f"{info['onnxruntime']}, faiss {info['faiss']}, numpy {info['numpy']}, Pillow "
        f"{info['pillow']}. Default model efficientnet_lite0 on ONNX Runtime, default index "
        f"`{DEFAULT_KIND}`.",
        "",
        "The machine is shared (other jobs run tests at the same time), so absolute timings are "
        "noisy: variants are always compared side by side within one run, and each section "
        "states the load average it ran under.",
        "",
        "| figure | target | measured | result | date |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['target']} | {row['value']} | "
            f"{'PASS' if row['passed'] else 'FAIL'} | {row.get('date', '')} |"
        )
    if not rows:
        lines.append("| (nothing measured yet) | | | | |")
    return "\n".join(lines)


def update_document(
    path: Path, sections: list[Section], info: dict[str, str], command: str
) -> None:
    """Replace our sections (and the summary) in `path`, keeping any other content."""
    doc = path.read_text(encoding="utf-8") if path.exists() else f"{TITLE}\n"
    if not doc.lstrip().startswith("#"):
        doc = f"{TITLE}\n\n{doc}"
    for sec in sections:
        doc = _put(doc, sec.key, render_section(sec, command, info["date"]))
    doc = _put(doc, "summary", render_summary(doc, info, command))
    path.write_text(doc.rstrip() + "\n", encoding="utf-8")


def _put(doc: str, key: str, text: str) -> str:
    block = _block(key, text)
    match = _find(doc, key)
    if match is not None:
        return doc[: match.start()] + block + doc[match.end() :]
    # Insert after the nearest earlier section of ours, else after the title line.
    for prev in reversed(ORDER[: ORDER.index(key)]):
        found = _find(doc, prev)
        if found is not None:
            return doc[: found.end()] + "\n\n" + block + doc[found.end() :]
    first_nl = doc.find("\n")
    head, rest = (doc, "") if first_nl < 0 else (doc[:first_nl], doc[first_nl:])
    return f"{head}\n\n{block}\n{rest}"


# --- runner ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small run to check the script works")
    p.add_argument("--only", action="append", choices=SECTIONS, help="run only these sections")
    p.add_argument("--repeat", type=int, help="queries per backend (default 255, quick 30)")
    p.add_argument("--vectors", type=int, help="indexed vectors (default 100000, quick 10000)")
    p.add_argument("--copies", type=int, help="demo copies to index (default 4, quick 1)")
    p.add_argument("--rounds", type=int, help="indexing rounds (default 2, quick 1)")
    p.add_argument("--model-reps", type=int, help="repetitions per model config (default 5)")
    p.add_argument(
        "--index-types",
        default=",".join(DEFAULT_KINDS),
        help=f"FaissStore index types to compare, of {','.join(INDEX_KINDS)} "
        f"(default {','.join(DEFAULT_KINDS)})",
    )
    p.add_argument("--bot-photos", type=int, help="photos per bot phase (default 200, quick 30)")
    p.add_argument("--bot-chats", type=int, default=20, help="chats sending photos (default 20)")
    p.add_argument("--bot-rate", type=float, default=10.0, help="offered photos/s (default 10)")
    p.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--no-write", action="store_true", help="print, do not update BENCHMARKS.md")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    q = args.quick
    args.repeat = args.repeat or (30 if q else 255)
    args.vectors = args.vectors or (10_000 if q else 100_000)
    args.copies = args.copies or (1 if q else 4)
    args.rounds = args.rounds or (1 if q else 2)
    args.model_reps = args.model_reps or (1 if q else 5)
    args.bot_photos = args.bot_photos or (30 if q else 200)
    args.only = args.only or list(SECTIONS)
    args.index_types = tuple(k.strip() for k in args.index_types.split(",") if k.strip())
    bad = [k for k in args.index_types if k not in INDEX_KINDS]
    if bad:
        p.error(f"unknown index types: {bad}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    command = "python scripts/benchmark.py" + (
        " " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
        if (sys.argv[1:] if argv is None else argv)
        else ""
    )
    info = machine_info()
    log(f"kontrol benchmarks: {', '.join(args.only)} on {info['cpu']} ({info['nproc']} cores)")
    tmp = Path(tempfile.mkdtemp(prefix="kontrol-bench-"))
    sections: list[Section] = []
    started = time.perf_counter()
    try:
        from core.embedders import create_embedder

        embedder = create_embedder(settings())
        embedder.load()
        synthetic = None

        def need_synthetic(kinds: tuple[str, ...]) -> object:
            nonlocal synthetic
            if synthetic is None:
                log("Indexing the demo collection for real embeddings")
                demo = real_embeddings(tmp, embedder)
                log(f"Building {args.vectors:,}-vector indexes: {', '.join(kinds)}")
                synthetic = build_synthetic(tmp, demo, args.vectors, kinds, log)
            return synthetic

        steps: list[tuple[str, Callable[[], Section]]] = []
        if "engine" in args.only:
            steps.append(
                (
                    "engine",
                    lambda: bench_queries(
                        need_synthetic(args.index_types),  # type: ignore[arg-type]
                        embedder,
                        args.repeat,
                        log,
                    ),
                )
            )
        if "indexing" in args.only:
            steps.append(
                ("indexing", lambda: bench_indexing(tmp, embedder, args.copies, args.rounds, log))
            )
        if "models" in args.only:
            steps.append(("models", lambda: bench_models(tmp, args.model_reps, log, args.quick)))
        if "bot" in args.only:

            def bot_step() -> Section:
                from bench_bot import bench_bot

                kinds = args.index_types if "engine" in args.only else (DEFAULT_KIND,)
                return bench_bot(
                    need_synthetic(kinds),  # type: ignore[arg-type]
                    embedder,
                    tmp,
                    photos=args.bot_photos,
                    chats=args.bot_chats,
                    rate=args.bot_rate,
                    log=log,
                )

            steps.append(("bot", bot_step))
        for name, step in steps:
            log(f"== {name}")
            t0 = time.perf_counter()
            try:
                sec = step()
            except Exception as exc:  # report the failure instead of losing the other sections
                logging.exception("section %s failed", name)
                sec = Section(name, f"{name} (failed)")
                sec.body.append(f"The benchmark failed: `{type(exc).__name__}: {exc}`.")
                sec.targets.append(Target(f"{name} benchmark ran", "no error", "error", False))
            sections.append(sec)
            log(f"   {name} done in {time.perf_counter() - t0:.0f} s")
            for t in sec.targets:
                log(f"   {'PASS' if t.passed else 'FAIL'} {t.name}: {t.value} ({t.target})")
    finally:
        if args.keep_tmp:
            log(f"Temporary files kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"All done in {time.perf_counter() - started:.0f} s")
    if args.no_write:
        for sec in sections:
            print(render_section(sec, command, info["date"]))
    else:
        update_document(args.output, sections, info, command)
        log(f"Wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
