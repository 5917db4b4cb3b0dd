"""The engine's command line: index, search, classify, export, import, verify, train.

Errors a user can cause are printed to stderr as one sentence with a non-zero exit code; a
traceback only appears with --debug.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.errors import KontrolError
from core.settings import Settings, load_settings

log = logging.getLogger("kontrol")


def _settings(args: argparse.Namespace, cls: type[Settings] = Settings) -> Settings:
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
    return load_settings(cls, **overrides)


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


#: Shown like the bot shows them: never certainty, no candidate under 5 %.
MAX_SHOWN, MIN_SHOWN = 0.99, 0.05


def _pct(p: float) -> str:
    return f"{min(float(p), MAX_SHOWN) * 100:.0f}%"


def format_classification(result: dict[str, Any]) -> str:
    """Human-readable classification (shared by `classify`, `run` and `search`)."""
    lines = []
    note = "" if result.get("calibrated", True) else " (uncalibrated: run `kontrol train`)"
    rank, taxon = result.get("rank"), result.get("taxon")
    if result.get("species"):
        lines.append(f"Species: {result['species']} ({_pct(result['confidence'])}){note}")
    elif rank and taxon:
        likely = result.get("likely_species")
        tail = f", probably {likely}" if likely else ""
        conf = result.get("taxon_confidence", result.get("confidence", 0.0))
        lines.append(f"The {rank} {taxon} ({_pct(conf)}){tail}{note}")
    else:
        lines.append("Species: not sure - closest candidates below")
    for name, p in result.get("probabilities", {}).items():
        if p >= MIN_SHOWN:
            lines.append(f"  {_pct(p):>4}  {name}")
    fallback = result.get("fallback")
    if fallback:
        lines.append(
            f"ImageNet guess (not from your collection): {fallback.get('species')} "
            f"({_pct(fallback.get('confidence', 0))})"
        )
    return "\n".join(lines)


def format_hits(hits: list[dict[str, Any]]) -> str:
    """Human-readable search results."""
    return "\n".join(
        f"{i:2d}. {h['similarity'] * 100:5.1f}%  {h['class']:<32} {h['image_path']}"
        for i, h in enumerate(hits, 1)
    )


# --- commands --------------------------------------------------------------------------------------
def cmd_index(args: argparse.Namespace) -> int:
    settings = _settings(args)
    engine = _engine(settings)
    report = engine.reindex(
        full=args.full, show_bar=not args.quiet, allow_empty=args.allow_empty, train="skip"
    )
    mode = f"full rebuild ({report.reason})" if report.full_rebuild else "incremental"
    print(
        f"Indexed {report.total} photos in {engine.store.describe()} [{mode}]: {report.added} "
        f"embedded, {report.unchanged} unchanged, {report.removed} removed, "
        f"{len(report.skipped)} skipped; {report.seconds:.1f} s, {report.images_per_s:.1f} photos/s."
    )
    if report.repaired:
        print(f"Repaired {report.repaired} damaged record(s) by re-embedding them.")
    if report.maintenance:
        print(f"Store maintenance: {json.dumps(report.maintenance)}")
    if report.changed and not args.no_train:
        head = engine.train_head()
        if head is not None:
            print(
                f"Species head: {head.get('classes')} species, held-out accuracy "
                f"{head.get('holdout_accuracy', 0) * 100:.0f}%."
            )
    if report.skipped:
        print("Skipped:", file=sys.stderr)
        for path, why in report.skipped:
            print(f"  {path}: {why}", file=sys.stderr)
    return 0


def _parse_where(items: list[str] | None) -> dict[str, Any] | None:
    """`--where family=Felidae --where genus=Felis,Lynx` -> {"family": "Felidae", "genus": [...]}."""
    where: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise KontrolError(f"--where takes FIELD=VALUE (got {item!r}).")
        values = [v.strip() for v in value.split(",") if v.strip()]
        where[key.strip()] = values if len(values) > 1 else values[0]
    return where or None


def _query_paths(args: argparse.Namespace) -> list[str]:
    """Images named as arguments, or one path per line on stdin when the argument is `-`."""
    paths: list[str] = []
    for item in args.image:
        if item == "-":
            paths.extend(line.strip() for line in sys.stdin if line.strip())
        else:
            paths.append(item)
    return paths


def cmd_search(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise KontrolError("--top-k must be at least 1.")
    settings = _settings(args)
    engine = _engine(settings)
    where = _parse_where(args.where)
    paths = _query_paths(args)
    results: dict[str, Any] = {}
    failed = 0
    for path in paths:
        try:
            image = engine.read_image(Path(path))
            results[path] = engine.find_similar(image, args.top_k, args.species, where)
        except KontrolError as exc:
            if len(paths) == 1:
                raise
            results[path] = {"error": str(exc)}
            failed += 1
    if args.json:
        _print_json(results[paths[0]] if len(paths) == 1 else results)
    else:
        for path, hits in results.items():
            if len(paths) > 1:
                print(f"== {path}")
            print(f"error: {hits['error']}" if isinstance(hits, dict) else format_hits(hits))
    return 2 if failed else 0


def cmd_classify(args: argparse.Namespace) -> int:
    settings = _settings(args)
    engine = _engine(settings)
    result = engine.classify(engine.read_image(Path(args.image)))
    if args.json:
        _print_json(result)
    else:
        print(format_classification(result))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from core import seed_format
    from core.catalog import CATALOG_FILE, Catalog

    settings = _settings(args)
    engine = _engine(settings)
    store = engine.store
    store.check(engine.embedder.fingerprint, engine.embedder.dim)
    catalog = None
    if (Path(settings.index_dir) / CATALOG_FILE).exists():
        catalog = Catalog(settings.index_dir, read_only=True)
    out = Path(args.out)
    if out.resolve() == Path(settings.index_dir).resolve():
        raise KontrolError("--out must be another folder than the index directory.")
    report = seed_format.export_from(store, out, catalog=catalog)
    print(f"Exported {report['records']} records ({report['dim']}-d) to {out} in the seed format.")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from core import seed_format
    from core.catalog import Catalog
    from core.vectorstore import open_store

    settings = _settings(args)
    source = Path(args.source)
    if not seed_format.exists(source):
        raise KontrolError(
            f"{source} holds no seed-format index (faiss_index.bin, image_metadata.json, "
            "embeddings.npy)."
        )
    engine = _engine(settings)
    store = open_store(settings)
    try:
        with store.writer():
            catalog = Catalog(settings.index_dir)
            try:
                report = seed_format.import_into(
                    source, store, catalog, fingerprint=engine.embedder.fingerprint
                )
            finally:
                catalog.close()
    finally:
        store.close()
    print(
        f"Imported {report['records']} records ({report['dim']}-d, model {report['model']}) "
        f"from {source} into {settings.store} at {settings.index_dir}."
    )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Copy the configured store into another (no re-embedding), then verify the copy."""
    import os

    from core.vectorstore import open_store
    from core.vectorstore.migrate import migrate

    source_settings = _settings(args)
    update: dict[str, Any] = {"store": args.to}
    if args.store_url:
        update["store_url"] = args.store_url
    if args.store_collection:
        update["store_collection"] = args.store_collection
    if args.to_index_dir:
        update["index_dir"] = Path(args.to_index_dir)
    key = os.environ.get("KONTROL_MIGRATE_TARGET_API_KEY")
    if key:
        update["store_api_key"] = key
    target_settings = load_settings(**{**source_settings.model_dump(), **update})
    if (target_settings.store, target_settings.index_dir, target_settings.store_url) == (
        source_settings.store,
        source_settings.index_dir,
        source_settings.store_url,
    ) and target_settings.store_collection == source_settings.store_collection:
        raise KontrolError("The target is the source; name another store, URL, collection or dir.")
    source = open_store(source_settings, read_only=True)
    target = open_store(target_settings)
    try:
        with target.writer():
            report = migrate(source, target, reset=args.reset)
    finally:
        source.close()
        target.close()
    print(report.summary())
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    settings = _settings(args)
    engine = _engine(settings)
    store = engine.store
    info = store.check(engine.embedder.fingerprint, engine.embedder.dim)
    check = getattr(store, "verify", None)
    if check is None:
        print(f"The {store.backend} store checks its own data; {store.count()} records.")
        return 0
    report = check()
    bad = report["bad_ids"]
    print(f"Checked {report['checked']} records of {info.model}: {len(bad)} damaged.")
    for id_ in bad[:20]:
        print(f"  damaged: {id_}")
    if bad:
        print("Run `kontrol index` to re-embed them.", file=sys.stderr)
        return 1
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from core.head_fit import train_head_cli

    return train_head_cli(args, _settings(args))


Extension = Callable[[Any, Callable[..., None]], None]


def build_parser(extensions: Sequence[Extension] = ()) -> argparse.ArgumentParser:
    """The engine's commands; `extensions(subparsers, common)` add more (the bot's, the tools')."""
    parser = argparse.ArgumentParser(prog="kontrol", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, images: bool = False) -> None:
        p.add_argument("--index-dir", help="index folder (KONTROL_INDEX_DIR)")
        p.add_argument("--model", help="backbone (KONTROL_MODEL)")
        p.add_argument("--runtime", choices=["onnx", "torch"], help="KONTROL_RUNTIME")
        if images:
            p.add_argument("--images", help="collection root (KONTROL_IMAGES_DIR)")

    p = sub.add_parser("index", help="index the collection (incremental)")
    common(p, images=True)
    p.add_argument("--full", action="store_true", help="re-embed every photo")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--allow-empty",
        action="store_true",
        help="let an empty collection folder empty the index (refused otherwise)",
    )
    p.add_argument("--no-train", action="store_true", help="do not refit the species head")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="most similar collection photos to each IMAGE")
    p.add_argument("image", nargs="+", help="image files; `-` reads one path per line from stdin")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--species", help="search within this species only")
    p.add_argument(
        "--where",
        action="append",
        metavar="FIELD=VALUE",
        help="filter on a payload field (genus, family, order, class, source, license, ...); "
        "VALUE may list alternatives with commas; repeatable",
    )
    p.add_argument("--json", action="store_true", help="print the API's dicts as JSON")
    common(p, images=True)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("classify", help="species of the animal in IMAGE")
    p.add_argument("image")
    p.add_argument("--json", action="store_true", help="print the API's dict as JSON")
    common(p, images=True)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("export", help="write the index in another format")
    p.add_argument("--format", choices=["seed"], default="seed")
    p.add_argument("--out", required=True, help="folder for the exported files")
    common(p, images=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="serve an index written in the seed format")
    p.add_argument(
        "source", help="folder with faiss_index.bin, image_metadata.json, embeddings.npy"
    )
    common(p, images=True)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("migrate", help="copy the index into another store, then verify the copy")
    p.add_argument("--to", required=True, choices=["faiss", "qdrant", "milvus", "chroma"])
    p.add_argument("--store-url", help="target server URL (qdrant, milvus)")
    p.add_argument("--store-collection", help="target collection name")
    p.add_argument("--to-index-dir", help="target folder (faiss, chroma, qdrant local mode)")
    p.add_argument("--reset", action="store_true", help="drop what the target holds first")
    common(p, images=True)
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("verify", help="check every stored vector against its checksum")
    common(p, images=True)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("train", help="fit the species head on the indexed embeddings")
    common(p, images=True)
    p.set_defaults(func=cmd_train)
    for extend in extensions:
        extend(sub, common)
    return parser


def main(argv: list[str] | None = None, extensions: Sequence[Extension] = ()) -> int:
    """Run one command (the `kontrol` console script adds the bot's and the tools' commands)."""
    parser = build_parser(extensions)
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
