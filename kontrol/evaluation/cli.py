"""`kontrol eval`: measure the product's own pipeline (embedder, loader, classifier, engine search).

The engine indexes the evaluated collection into `<out>/index` with the configured settings, so the
latency and indexing figures are the product's; the metrics read the vectors and taxonomy the
engine stored, and species answers go through the engine's own classification path (head or
calibrated vote, fitted held out in memory: nothing is written into the models directory).
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from core.answer import table_lineage
from core.imageio import load_image
from core.settings import Settings
from core.taxonomy import PAYLOAD_RANKS as RANK_FIELDS
from kontrol.evaluation.runner import evaluate
from kontrol.evaluation.served import AnswerPolicy

HEADLINE = (
    "species_recall_at_1",
    "species_map",
    "coarse_precision_at_10",
    "species_top1_accuracy",
    "open_set_not_sure_rate",
    "non_animal_not_sure_rate",
    "near_duplicate_recall_at_1",
    "genus_recall_at_1",
    "named_answer_precision",
    "rank_answer_precision",
    "ece",
    "query_latency_ms_p50",
    "query_latency_ms_p95",
    "indexing_photos_per_s",
)


def non_animal_photos(folder: str | None) -> list[Path]:
    """Photos with no animal for the open-set check: --negatives DIR, else the demo's 156 when
    `kontrol demo-data` built them (`kontrol.demo.negatives`), else the real sample photos that
    ship inside installed packages (matplotlib, scikit-learn), when present."""
    from core.imageio import is_image_file
    from kontrol.demo.negatives import DEFAULT_DIR, is_complete

    if not folder and is_complete(DEFAULT_DIR):
        folder = str(DEFAULT_DIR)
    if folder:
        return sorted(p for p in Path(folder).rglob("*") if is_image_file(p))
    found = []
    for module, rel in (
        ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
        ("matplotlib", "mpl-data/sample_data/Minduka_Present_Blue_Pack.png"),
        ("sklearn", "datasets/images/china.jpg"),
        ("sklearn", "datasets/images/flower.jpg"),
    ):
        try:
            base = Path(__import__(module).__file__).parent
        except ImportError:
            continue
        if (base / rel).exists():
            found.append(base / rel)
    return found


def run_eval(args: argparse.Namespace, settings: Settings) -> int:
    """Evaluate the collection at --images; print the headline numbers, write JSON + report."""
    from core.engine import Engine

    out = Path(args.out)
    settings = settings.model_copy(
        update={"images_dir": Path(args.images), "index_dir": out / "index"}
    )
    engine = Engine(settings)
    # The head is not fitted here: evaluation never writes into the user's models directory.
    index_report = engine.reindex(train="skip")
    embedder = engine.embedder
    # the vectors the engine stored, so eval measures what is served (no second embedding pass)
    stored: dict[str, object] = {}
    lineages: dict[str, dict[str, str]] = {}  # as indexed: taxonomy.csv overrides included
    for batch in engine.store.iterate():
        for payload, vector in zip(batch.payloads, batch.vectors, strict=True):
            stored[str(payload.get("path"))] = vector
            lineages[str(payload.get("species"))] = {
                rank: str(payload[rank]) for rank in RANK_FIELDS if payload.get(rank)
            }
    result = evaluate(
        Path(args.images),
        args.manifest,
        embed_fn=embedder.embed_images,  # embeddings and logits (the no-animal check)
        load_fn=partial(
            load_image,
            max_pixels=settings.max_image_pixels,
            max_bytes=settings.max_image_bytes,
            min_side=settings.min_image_side,
            target_size=embedder.input_size,
        ),
        query_fn=lambda image: engine.find_similar(image, top_k=settings.top_k),
        out_dir=out,
        json_path=args.json,
        policy=AnswerPolicy.from_settings(settings),
        batch_size=settings.batch_size,
        model=embedder.name,
        negatives=non_animal_photos(args.negatives),
        stored=stored,
        lineage=lambda name: lineages.get(name) or table_lineage(name),
    )
    print(
        f"engine index: {index_report.total} photos, {index_report.images_per_s:.1f} photos/s "
        f"({'full' if index_report.full_rebuild else 'incremental'})"
    )
    for key in HEADLINE:
        interval = result["ci95"].get(key)
        ci = f" [95% CI {interval[0]}, {interval[1]}]" if interval else ""
        print(f"{key}: {result[key]}{ci} (n={result['queries'].get(key, '-')})")
    for metric, row in result["goals"].items():
        print(f"goal {metric} {row['target']}: {row['verdict']}")
    print(f"report: {result['files'].get('report')}")
    return 0
