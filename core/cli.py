"""The `kontrol` command line: demo-data, index, search, classify, eval, train, bot, run.

Errors a user can cause are printed to stderr as one sentence with a non-zero exit code; a
traceback only appears with --debug.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from core.errors import KontrolError
from core.settings import Settings, load_settings

log = logging.getLogger("kontrol")
DEFAULT_DEMO_DIR = Path("data/demo")


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for arg, field in (
        ("images", "images_dir"),
        ("index_dir", "index_dir"),
        ("model", "model"),
        ("runtime", "runtime"),
    ):
        value = getattr(args, arg, None)
        if value is not None:
            overrides[field] = value
    return load_settings(**overrides)


def _engine(settings: Settings):
    from core.engine import Engine

    return Engine(settings)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2))


def _load_query(path: str, settings: Settings):
    from core.imageio import load_image

    return load_image(
        Path(path),
        max_pixels=settings.max_image_pixels,
        max_bytes=settings.max_image_bytes,
        min_side=settings.min_image_side,
    )


def format_classification(result: dict[str, Any]) -> str:
    """Human-readable classification (shared by `classify`, `run` and `search`)."""
    lines = []
    if result.get("species"):
        lines.append(f"Species: {result['species']} ({result['confidence'] * 100:.0f}% confidence)")
    else:
        lines.append("Species: not sure - closest candidates below")
    for name, p in result.get("probabilities", {}).items():
        lines.append(f"  {p * 100:5.1f}%  {name}")
    fallback = result.get("fallback")
    if fallback:
        lines.append(
            f"ImageNet guess (not from your collection): {fallback.get('species')} "
            f"({fallback.get('confidence', 0) * 100:.0f}%)"
        )
    return "\n".join(lines)


def format_hits(hits: list[dict[str, Any]]) -> str:
    """Human-readable search results."""
    return "\n".join(
        f"{i:2d}. {h['similarity'] * 100:5.1f}%  {h['class']:<32} {h['image_path']}"
        for i, h in enumerate(hits, 1)
    )


# --- commands --------------------------------------------------------------------------------------
def cmd_demo_data(args: argparse.Namespace) -> int:
    from core.demo_data import build_demo_collection

    report = build_demo_collection(Path(args.dest), deb=args.deb, force=args.force)
    print(f"Demo collection ready: {report}")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    settings = _settings(args)
    engine = _engine(settings)
    report = engine.reindex(full=args.full, show_bar=not args.quiet)
    mode = f"full rebuild ({report.reason})" if report.full_rebuild else "incremental"
    print(
        f"Indexed {report.total} photos in {settings.index_dir} [{mode}]: {report.added} embedded, "
        f"{report.unchanged} unchanged, {report.removed} removed, {len(report.skipped)} skipped; "
        f"{report.seconds:.1f} s, {report.images_per_s:.1f} photos/s."
    )
    if report.skipped:
        print("Skipped (unreadable):", file=sys.stderr)
        for path, why in report.skipped:
            print(f"  {path}: {why}", file=sys.stderr)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    settings = _settings(args)
    engine = _engine(settings)
    hits = engine.find_similar(engine.read_image(Path(args.image)), args.top_k, args.species)
    if args.json:
        _print_json(hits)
    else:
        print(format_hits(hits))
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    settings = _settings(args)
    engine = _engine(settings)
    result = engine.classify(engine.read_image(Path(args.image)))
    if args.json:
        _print_json(result)
    else:
        print(format_classification(result))
    return 0


def cmd_bot(args: argparse.Namespace) -> int:
    from bot.app import run_bot

    run_bot(_settings(args))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The README's main job: collection -> index -> bot (or a demo answer without a token)."""
    settings = _settings(args)
    if not Path(settings.images_dir).exists() and Path(settings.images_dir) == DEFAULT_DEMO_DIR:
        from core.demo_data import build_demo_collection

        print("No collection configured: building the demo collection (gcompris-qt-data)...")
        print(build_demo_collection(DEFAULT_DEMO_DIR))
    engine = _engine(settings)
    report = engine.reindex(show_bar=True)
    print(
        f"Index: {report.total} photos of {engine.stats()['species_count']} species "
        f"({report.added} embedded now, {len(report.skipped)} skipped)."
    )
    if settings.bot_token is None:
        _demo_answer(engine, settings)
        print(
            "\nNo Telegram token configured, so the bot is not started.\n"
            "To run it: talk to @BotFather in Telegram, send /newbot, copy the token it gives,\n"
            "then put KONTROL_BOT_TOKEN=<token> in a .env file here (or export it) and run\n"
            "`make run` again. Admins for /reindex: KONTROL_ADMIN_IDS='[<your user id>]'."
        )
        return 0
    from bot.app import run_bot

    run_bot(settings, engine=engine)
    return 0


def _demo_answer(engine, settings: Settings) -> None:
    """Answer one query as the bot would: the first collection photo, flipped."""
    from PIL import ImageOps

    index = engine._index()
    if len(index) == 0:
        print("The collection has no readable photos; nothing to demo.")
        return
    first = index.data.images[0]
    query = ImageOps.mirror(engine.read_image(Path(settings.images_dir) / first["path"]))
    result, hits = engine.analyze(query, top_k=settings.top_k)
    print(f"\nDemo query: {first['path']} (mirrored)")
    print(format_classification(result))
    print("Most similar photos:")
    print(format_hits(hits))


def cmd_eval(args: argparse.Namespace) -> int:
    from core.evaluation.cli import run_eval

    return run_eval(args, _settings(args))


def cmd_train(args: argparse.Namespace) -> int:
    from core.head import train_head_cli

    return train_head_cli(args, _settings(args))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="kontrol", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, images: bool = False) -> None:
        p.add_argument("--index-dir", help="index folder (KONTROL_INDEX_DIR)")
        p.add_argument("--model", help="backbone (KONTROL_MODEL)")
        p.add_argument("--runtime", choices=["onnx", "torch"], help="KONTROL_RUNTIME")
        if images:
            p.add_argument("--images", help="collection root (KONTROL_IMAGES_DIR)")

    p = sub.add_parser("demo-data", help="build the labelled demo collection (gcompris-qt-data)")
    p.add_argument("--dest", default=str(DEFAULT_DEMO_DIR))
    p.add_argument("--deb", type=Path, help="use this gcompris-qt-data .deb instead of apt-get")
    p.add_argument("--force", action="store_true", help="rebuild even if present")
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("index", help="index the collection (incremental)")
    common(p, images=True)
    p.add_argument("--full", action="store_true", help="re-embed every photo")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="most similar collection photos to IMAGE")
    p.add_argument("image")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--species", help="search within this species only")
    p.add_argument("--json", action="store_true", help="print the API's dicts as JSON")
    common(p, images=True)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("classify", help="species of the animal in IMAGE")
    p.add_argument("image")
    p.add_argument("--json", action="store_true", help="print the API's dict as JSON")
    common(p, images=True)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("eval", help="measure search and classification quality")
    p.add_argument("--images", required=True, help="labelled collection root")
    p.add_argument("--manifest", help="CSV with file,label[,coarse] columns")
    p.add_argument("--json", help="write the metrics JSON here")
    p.add_argument("--out", default="eval_out", help="folder for the report and pictures")
    p.add_argument(
        "--negatives", help="folder of photos with no animal (open-set check); default: samples"
    )
    common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("train", help="fit the species head on the indexed embeddings")
    common(p, images=True)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bot", help="run the Telegram bot")
    common(p, images=True)
    p.set_defaults(func=cmd_bot)

    p = sub.add_parser("run", help="demo collection if needed, index, then the bot")
    common(p, images=True)
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `kontrol` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KontrolError as exc:
        if args.debug:
            raise
        print(f"kontrol: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kontrol: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
