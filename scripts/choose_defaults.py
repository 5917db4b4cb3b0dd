"""Choose the classification defaults (k, min similarity, the named-answer rule) on held-out photos.

Procedure (issue 9), all held-out and all through the engine's own classification path
(`kontrol.evaluation.served`: head or calibrated vote, the 'auto' named-answer threshold chosen
by the engine from the training folds' risk-coverage curve):

1. Embed the labelled collection (default: the demo, 85 photos) and six augmented copies of each
   photo (`kontrol.evaluation.augment`: crop, flip, JPEG, downscale, colour, rotation).
2. The collection is the originals; queries are the originals and the copies. A query never sees
   its own photo or that photo's copies (grouped), and the head and calibration answering it were
   fitted on the other folds (5 folds by photo): what a new photo of an indexed species, or of a
   species the collection lacks, gets from the engine.
3. Grid: k in {5, 10, 20} x min similarity in {0.45 .. 0.65}, seed 0. A setting qualifies when the
   precision of named answers reaches the target with >= 10 named; the default is the qualifying
   setting with most named answers whose grid neighbours also qualify (a flat optimum). When
   nothing qualifies, the current defaults stay and the report says so.
4. The chosen (or current) setting is re-run with seeds 0, 1, 2 (other fold splits): precision
   and coverage of named answers with bootstrap 95 % intervals, ECE, genus/family/order answers
   and their precision, and the same with the threshold fixed at the target (no 'auto').

Run: PYTHONPATH=. python scripts/choose_defaults.py [--images data/demo] [--target 0.85]
(uses the configured model; its export cache goes to KONTROL_MODELS_DIR or a scratch folder, never
models/; nothing is saved: the models of each fold live in memory).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import embedders
from core.calibration import expected_calibration_error
from core.imageio import load_image
from core.risk_coverage import MIN_NAMED
from core.settings import get_settings
from kontrol.evaluation import quality
from kontrol.evaluation.augment import alter_all
from kontrol.evaluation.labels import load_labels
from kontrol.evaluation.served import AnswerPolicy, held_out_answers

SEEDS = (0, 1, 2)
FOLDS = 5
GRID_K = (5, 10, 20)
GRID_MIN_SIMILARITY = (0.45, 0.5, 0.55, 0.6, 0.65)


def _settings():
    """The configured settings, but the model's export cache goes to KONTROL_MODELS_DIR or a
    scratch folder: choosing defaults never writes into the user's models/."""
    settings = get_settings()
    if "KONTROL_MODELS_DIR" not in os.environ:
        scratch = Path(tempfile.gettempdir()) / "kontrol-bench-models"
        settings = settings.model_copy(update={"models_dir": scratch})
    return settings


def embed_collection(
    images: Path, manifest: Path | None
) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """(vectors, labels, group, is_original) of every photo and its six copies."""
    settings = _settings()
    embedder = embedders.create_embedder(settings)
    embedder.load()
    photos = load_labels(images, manifest)
    vectors, labels, group, original = [], [], [], []
    for number, photo in enumerate(photos):
        image = load_image(
            photo.path,
            max_pixels=settings.max_image_pixels,
            max_bytes=settings.max_image_bytes,
            min_side=settings.min_image_side,
        )
        batch = [image, *(img for _, img in alter_all(image, seed=number))]
        out = embedder.embed_images(batch).embeddings
        vectors.append(np.asarray(out, dtype=np.float32))
        labels += [photo.label] * len(batch)
        group += [number] * len(batch)
        original += [True] + [False] * (len(batch) - 1)
    return np.concatenate(vectors), labels, np.array(group), np.array(original)


def measure(
    x: np.ndarray,
    labels: list[str],
    group: np.ndarray,
    original: np.ndarray,
    policy: AnswerPolicy,
    seed: int,
) -> dict[str, Any]:
    """Served answers for every query (grouped, collection = originals) and what they score."""
    got = held_out_answers(x, labels, policy, folds=FOLDS, seed=seed, groups=group, voters=original)
    named, right = got.named(), got.right()
    graded, rank_right = got.rank_outcomes()
    conf, top = got.confidence(), got.top_correct()
    hits = right[named].astype(float)
    ci = quality.bootstrap_ci(hits, seed=seed) if hits.size else None
    return {
        "k": policy.k,
        "min_similarity": policy.min_similarity,
        "min_probability": policy.min_probability,
        "seed": seed,
        "queries": len(got.queries),
        "named": int(named.sum()),
        "named_precision": round(float(hits.mean()), 3) if hits.size else None,
        "named_precision_ci95": None if ci is None else [round(ci[0], 3), round(ci[1], 3)],
        "coverage": round(float(named.mean()), 3),
        "top1_right": round(float(right.mean()), 3),
        "rank_answers": int(got.rank_answered().sum()),
        "rank_answers_graded": int(graded.sum()),
        "rank_answer_precision": (
            round(float(rank_right[graded].mean()), 3) if graded.any() else None
        ),
        "ece": round(expected_calibration_error(conf, top), 4),
        "ece_raw_share": round(expected_calibration_error(got.raw_share(), top), 4),
        "thresholds_used": sorted({round(t, 2) for t in got.thresholds}),
        "sources": got.sources,
    }


def qualifies(row: dict[str, Any], target: float) -> bool:
    return row["named"] >= MIN_NAMED and (row["named_precision"] or 0.0) >= target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="data/demo")
    parser.add_argument("--manifest", default=None)
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()
    settings = _settings()
    images = Path(args.images)
    manifest = Path(args.manifest) if args.manifest else (images / "manifest.csv")
    started = time.perf_counter()
    x, labels, group, original = embed_collection(images, manifest if manifest.exists() else None)
    embed_s = time.perf_counter() - started

    def policy(k: int, min_sim: float, min_probability: float | str = "auto") -> AnswerPolicy:
        return AnswerPolicy(
            k, min_sim, settings.classify_min_confidence, min_probability, args.target
        )

    grid = {
        (k, m): measure(x, labels, group, original, policy(k, m), seed=0)
        for k in GRID_K
        for m in GRID_MIN_SIMILARITY
    }

    def flat(key: tuple[int, float]) -> bool:
        k_i, m_i = GRID_K.index(key[0]), GRID_MIN_SIMILARITY.index(key[1])
        near = [
            (GRID_K[a], GRID_MIN_SIMILARITY[b])
            for a in (k_i - 1, k_i, k_i + 1)
            for b in (m_i - 1, m_i, m_i + 1)
            if 0 <= a < len(GRID_K) and 0 <= b < len(GRID_MIN_SIMILARITY)
        ]
        return all(qualifies(grid[n], args.target) for n in near)

    candidates = [key for key, row in grid.items() if qualifies(row, args.target) and flat(key)]
    current = (settings.classify_neighbors, settings.classify_min_similarity)
    chosen = max(candidates, key=lambda key: grid[key]["named"]) if candidates else current
    rule = (
        "most named answers on a flat plateau at the target precision"
        if candidates
        else "no setting reaches the target precision with >= 10 named answers: defaults kept"
    )
    auto = [measure(x, labels, group, original, policy(*chosen), seed) for seed in SEEDS]
    fixed = [
        measure(x, labels, group, original, policy(*chosen, args.target), seed) for seed in SEEDS
    ]
    report = {
        "photos": int(original.sum()),
        "queries": len(labels),
        "embed_seconds": round(embed_s, 1),
        "target_precision": args.target,
        "chosen": {"k": chosen[0], "min_similarity": chosen[1]},
        "rule": rule,
        "grid_seed0": list(grid.values()),
        "auto_threshold_per_seed": auto,
        "fixed_threshold_at_target_per_seed": fixed,
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
