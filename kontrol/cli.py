"""The `kontrol` command: the engine's commands plus the bot's (bot, run) and the tools' (demo-data,
eval). It sits above `core` and `bot`, so the engine never imports the bot.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.cli import _settings, format_classification, format_hits
from core.cli import main as core_main
from core.settings import Settings

DEFAULT_DEMO_DIR = Path("data/demo")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Engine settings for the tools; `bot_settings_from_args` for the bot's commands."""
    return _settings(args)


def bot_settings_from_args(args: argparse.Namespace):
    from bot.settings import BotSettings

    return _settings(args, BotSettings)


def Engine(settings: Settings):
    from core.engine import Engine as _Engine

    return _Engine(settings)


def cmd_demo_data(args: argparse.Namespace) -> int:
    from kontrol.demo.demo_data import build_demo_collection
    from kontrol.demo.negatives import build_negatives

    report = build_demo_collection(Path(args.dest), deb=args.deb, force=args.force)
    print(f"Demo collection ready: {report}")
    negatives = build_negatives(Path(args.negatives), deb=args.deb, force=args.force)
    print(f"Photos with no animal (open-set checks): {negatives}")
    return 0


def cmd_bot(args: argparse.Namespace) -> int:
    from bot.app import run_bot

    run_bot(bot_settings_from_args(args))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The README's main job: collection -> index -> bot (or a demo answer without a token)."""
    settings = bot_settings_from_args(args)
    if not Path(settings.images_dir).exists() and Path(settings.images_dir) == DEFAULT_DEMO_DIR:
        from kontrol.demo.demo_data import build_demo_collection

        print("No collection configured: building the demo collection (gcompris-qt-data)...")
        print(build_demo_collection(DEFAULT_DEMO_DIR))
    engine = Engine(settings)
    # the head and the calibrator before the demo answer, so its confidence is calibrated
    report = engine.reindex(show_bar=True, train="sync")
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

    first = engine.first_photo() if engine.is_indexed() else None
    if first is None:
        print("The collection has no readable photos; nothing to demo.")
        return
    query = ImageOps.mirror(engine.read_image(Path(settings.images_dir) / first["path"]))
    result, hits = engine.analyze(query, top_k=settings.top_k)
    print(f"\nDemo query: {first['path']} (mirrored)")
    print(format_classification(result))
    print("Most similar photos:")
    print(format_hits(hits))


def cmd_eval(args: argparse.Namespace) -> int:
    try:
        from kontrol.evaluation.cli import run_eval
    except ImportError as exc:
        from core.errors import KontrolError

        raise KontrolError(
            f"`kontrol eval` needs {exc.name}; install it with `pip install 'kontrol[eval]'`."
        ) from None

    return run_eval(args, settings_from_args(args))


def cmd_clusters(args: argparse.Namespace) -> int:
    from kontrol.insight.cli import run_clusters

    return run_clusters(args, settings_from_args(args))


def cmd_finetune(args: argparse.Namespace) -> int:
    from kontrol.finetune.cli import run_finetune

    return run_finetune(args, settings_from_args(args))


def _register_insight(sub: Any, common: Callable[..., None]) -> None:
    """`clusters` (duplicates, clusters, suspicious labels) and `finetune` (metric learning)."""
    from core import insight as ia

    p = sub.add_parser(
        "clusters", help="near-duplicates, clusters and suspicious labels of the index"
    )
    p.add_argument("--out", help="folder for index.html and the contact sheets")
    p.add_argument("--json", help="write everything found as JSON here")
    p.add_argument("--k", type=int, help="number of clusters (default: sqrt of the photo count)")
    p.add_argument("--neighbours", type=int, default=ia.NEIGHBOURS)
    p.add_argument("--dup-threshold", type=float, default=ia.DUP_THRESHOLD)
    p.add_argument("--min-score", type=float, default=ia.SUSPICIOUS_MIN_SCORE)
    p.add_argument("--split-threshold", type=float, default=ia.SPLIT_THRESHOLD)
    p.add_argument("--max-sheets", type=int, default=100, help="pictures per section")
    p.add_argument("--seed", type=int, default=0)
    common(p, images=True)
    p.set_defaults(func=cmd_clusters)

    p = sub.add_parser(
        "finetune", help="train a projection on the stored vectors (metric learning)"
    )
    p.add_argument("--out", required=True, help="where to save the projection (.npz)")
    p.add_argument("--adopt", action="store_true", help="adopt it if the gain's CI is above 0")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--augment", type=int, default=2, help="augmented copies embedded per photo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the evaluation report as JSON here")
    common(p, images=True)
    p.set_defaults(func=cmd_finetune)


def register(sub: Any, common: Callable[..., None]) -> None:
    """Add the bot's and the tools' subcommands to the engine's parser."""
    from kontrol.demo.negatives import DEFAULT_DIR as NEGATIVES_DIR

    p = sub.add_parser("demo-data", help="build the labelled demo collection (gcompris-qt-data)")
    p.add_argument("--dest", default=str(DEFAULT_DEMO_DIR))
    p.add_argument("--deb", type=Path, help="use this gcompris-qt-data .deb instead of apt-get")
    p.add_argument(
        "--negatives",
        default=str(NEGATIVES_DIR),
        help="where the photos with no animal go (for kontrol eval / choose_defaults)",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if present")
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("eval", help="measure search and classification quality")
    p.add_argument("--images", required=True, help="labelled collection root")
    p.add_argument("--manifest", help="CSV with file,label[,coarse] columns")
    p.add_argument("--json", help="write the metrics JSON here")
    p.add_argument("--out", default="eval_out", help="folder for the report and pictures")
    p.add_argument(
        "--negatives",
        help="folder of photos with no animal (open-set check); default: data/demo_negatives "
        "when built, else sample photos",
    )
    common(p)
    p.set_defaults(func=cmd_eval)

    _register_insight(sub, common)

    p = sub.add_parser("bot", help="run the Telegram bot")
    common(p, images=True)
    p.set_defaults(func=cmd_bot)

    p = sub.add_parser("run", help="demo collection if needed, index, then the bot")
    common(p, images=True)
    p.set_defaults(func=cmd_run)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `kontrol` console script."""
    return core_main(argv, extensions=[register])


if __name__ == "__main__":
    sys.exit(main())
