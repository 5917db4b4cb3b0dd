"""`kontrol clusters`: run the collection insight on the served index; write JSON and HTML."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.insight import Options, analyse
from core.settings import Settings


def run_clusters(args: argparse.Namespace, settings: Settings) -> int:
    from core.embedders import create_embedder
    from core.vectorstore import open_store

    embedder = create_embedder(settings)  # not loaded: only its fingerprint is needed
    options = Options(
        neighbours=args.neighbours,
        dup_threshold=args.dup_threshold,
        clusters=args.k,
        suspicious_min_score=args.min_score,
        split_threshold=args.split_threshold,
        seed=args.seed,
    )
    with open_store(settings, read_only=True) as store:
        store.check(embedder.fingerprint, embedder.dim)
        insight = analyse(store, options)
    doc = insight.to_json()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")
    print(
        f"{insight.count} photos: {len(doc['duplicate_groups'])} near-duplicate groups "
        f"({sum(g['size'] for g in doc['duplicate_groups'])} photos), "
        f"{len(doc['suspicious'])} suspicious labels, {len(doc['split_species'])} split species, "
        f"{len(doc['clusters'])} clusters."
    )
    for s in doc["suspicious"][:10]:
        print(
            f"  suspicious: {s['path']} ({s['rank']} {s['label']} -> {s['likely']}, {s['score']})"
        )
    if args.out:
        from kontrol.insight.report import write_report

        page = write_report(insight, Path(settings.images_dir), Path(args.out), args.max_sheets)
        print(f"report: {page}")
    if args.json:
        print(f"json: {args.json}", file=sys.stderr if not args.out else sys.stdout)
    return 0
