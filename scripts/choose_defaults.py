"""Choose the named-answer threshold (KONTROL_CLASSIFY_MIN_PROBABILITY) from a risk-coverage curve.

Procedure (issue 9), all held-out:

1. Embed the labelled collection (default: the demo, 85 photos) and six augmented copies of each
   photo (`kontrol.evaluation.augment`: crop, flip, JPEG, downscale, colour, rotation).
2. Queries are the originals and the copies; the gallery is the originals, minus the query's own
   original (so a copy never finds itself): what a new photo of an indexed species, or of a
   species the collection lacks, looks like to the neighbour vote.
3. Cross-validation, 5 folds by original photo (a photo and its copies stay together), repeated
   with 3 seeds: a calibrator is fitted on 4 folds and predicts the 5th.
4. For each threshold 0.00 .. 0.99 the precision of named answers and the coverage are computed;
   the chosen threshold is the lowest whose precision stays >= the target over the whole window
   [t - 0.05, t + 0.05] (a flat optimum, not a sharp peak), per seed; the default is their median.
5. Taxonomy-aware answers are measured at that threshold: queries without a species name that get
   a genus/family/order answer, and how often that taxon is right.

Run: PYTHONPATH=. python scripts/choose_defaults.py [--images data/demo] [--target 0.85]
(uses the configured model; its export cache goes to KONTROL_MODELS_DIR or a scratch folder, never models/).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import embedders
from core.answer import RANK_LADDER, table_lineage
from core.calibration import (
    expected_calibration_error,
    fit_calibrator,
    loo_vote_rows,
)
from core.imageio import load_image
from core.settings import get_settings
from kontrol.evaluation import quality
from kontrol.evaluation.augment import alter_all
from kontrol.evaluation.labels import load_labels

SEEDS = (0, 1, 2)
FOLDS = 5
WINDOW = 0.05
MIN_NAMED = 10  # a threshold naming fewer queries proves nothing


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


def rank_answer(names, probs, threshold):
    """(rank, taxon) of the most specific rank whose candidates reach the threshold, or None."""
    for rank in RANK_LADDER:
        totals: dict[str, float] = {}
        for name, p in zip(names, probs, strict=True):
            taxon = table_lineage(name).get(rank)
            if taxon:
                totals[taxon] = totals.get(taxon, 0.0) + float(p)
        if totals:
            taxon = max(totals, key=lambda t: totals[t])
            if totals[taxon] >= threshold:
                return rank, taxon
    return None


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
    k, min_sim = settings.classify_neighbors, settings.classify_min_similarity
    rows = loo_vote_rows(x, labels, k=k, groups=group, voters=original)
    row_group = group  # every photo is asked, in order
    grid = np.round(np.arange(0.0, 0.991, 0.01), 2)
    chosen, curves, eces, eces_raw = [], [], [], []
    helds = []
    for seed in SEEDS:
        held = quality.cross_fitted(rows, folds=FOLDS, seed=seed, groups=row_group)
        helds.append(held)
        g, cov, prec = quality.risk_coverage(held, min_sim, grid)
        curves.append((cov, prec))
        chosen.append(
            quality.choose_threshold(
                g, prec, cov, target=args.target, window=WINDOW, min_coverage=MIN_NAMED / len(rows)
            )
        )
        eces.append(expected_calibration_error(held.confidence, held.correct))
        eces_raw.append(expected_calibration_error(held.raw, held.correct))
    valid = [c for c in chosen if c is not None]
    # No plateau (too few queries ever reach the target): fall back to the calibration bound.
    # For calibrated probabilities the precision of answers with p >= t is at least t on
    # average, so t = target keeps the stated precision without the curve's help.
    default = float(np.median(valid)) if valid else args.target
    rule = "risk-coverage plateau" if valid else "calibration bound (no plateau on this data)"
    held = helds[0]
    pairs = np.stack([held.confidence, held.correct.astype(float)], axis=1)
    ece_ci = quality.bootstrap_ci(pairs, quality.ece_of)

    # Taxonomy-aware answers at the chosen threshold (seed 0 folds).
    t = default
    species_named = species_right = rank_named = rank_right = 0
    for f in range(FOLDS):
        test = np.flatnonzero(held.fold == f)
        cal = fit_calibrator([rows[i] for i in np.flatnonzero(held.fold != f)])
        for i in test:
            row = rows[i]
            if row.best_similarity < min_sim:
                continue
            probs = cal.probability(row.shares, row.best_similarity)
            if probs[0] >= t:
                species_named += 1
                species_right += row.candidates[0] == row.truth
                continue
            got = rank_answer(row.candidates, probs, t)
            if got:
                rank_named += 1
                rank_right += table_lineage(row.truth).get(got[0]) == got[1]
    n = len(rows)
    at = int(np.argmin(np.abs(grid - t)))
    prec_at = [float(c[1][at]) for c in curves]
    cov_at = [float(c[0][at]) for c in curves]
    named_hits = held.correct[quality.named(held, t, min_sim)]
    prec_ci = quality.bootstrap_ci(named_hits.astype(float))
    report = {
        "queries": n,
        "photos": int(original.sum()),
        "embed_seconds": round(embed_s, 1),
        "k": k,
        "min_similarity": min_sim,
        "target_precision": args.target,
        "threshold_per_seed": chosen,
        "default_threshold": default,
        "rule": rule,
        "precision_at_default_per_seed": [round(p, 3) for p in prec_at],
        "precision_at_default_ci95_seed0": prec_ci,
        "coverage_at_default_per_seed": [round(c, 3) for c in cov_at],
        "ece_calibrated_per_seed": [round(e, 4) for e in eces],
        "ece_calibrated_ci95_seed0": ece_ci,
        "ece_raw_share": round(eces_raw[0], 4),
        "top1_accuracy": round(float(held.correct.mean()), 3),
        "species_named": species_named,
        "species_named_precision": round(species_right / max(1, species_named), 3),
        "rank_answers": rank_named,
        "rank_answer_precision": round(rank_right / max(1, rank_named), 3) if rank_named else None,
        "curve_seed0": [
            [float(g), round(float(c), 3), None if np.isnan(p) else round(float(p), 3)]
            for g, c, p in zip(grid[::5], curves[0][0][::5], curves[0][1][::5], strict=True)
        ],
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
