"""`kontrol finetune`: train, cross-validate, save; adopt only when asked and clearly better."""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import KontrolError
from core.settings import Settings
from kontrol.finetune.train import cross_validate, train_projection, worth_adopting

ADOPTED_NAME = "projection.npz"


def _read_store(settings: Settings, embedder) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
    from core.vectorstore import open_store

    ids: list[str] = []
    rows: list[np.ndarray] = []
    payloads: list[dict[str, Any]] = []
    with open_store(settings, read_only=True) as store:
        store.check(embedder.fingerprint, embedder.dim)
        for batch in store.iterate(4096, vectors=True):
            ids.extend(batch.ids)
            payloads.extend(batch.payloads)
            if batch.vectors is not None:
                rows.append(np.asarray(batch.vectors, np.float32))
    if not ids:
        raise KontrolError("The index is empty: nothing to fine-tune on.")
    return ids, np.concatenate(rows), payloads


def augmented_views(
    settings: Settings, embedder, payloads: list[dict[str, Any]], per_photo: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """`per_photo` altered copies of each photo (kontrol.evaluation.augment), embedded with the
    engine's embedder; (vectors, photo row of each)."""
    from core.imageio import load_image
    from kontrol.evaluation.augment import ALTERATIONS

    if per_photo <= 0:
        return np.zeros((0, embedder.dim), np.float32), np.zeros(0, np.int64)
    embedder.load()
    root = Path(settings.images_dir)
    kinds = list(ALTERATIONS)
    rng = random.Random(seed)
    vectors: list[np.ndarray] = []
    owners: list[int] = []
    pending: list[Any] = []
    pending_owner: list[int] = []

    def flush() -> None:
        if pending:
            vectors.append(embedder.embed_images(pending).embeddings)
            owners.extend(pending_owner)
            pending.clear()
            pending_owner.clear()

    for row, payload in enumerate(payloads):
        try:
            image = load_image(
                root / str(payload.get("path", "")),
                max_pixels=settings.max_image_pixels,
                max_bytes=settings.max_image_bytes,
                min_side=settings.min_image_side,
                target_size=embedder.input_size,  # draft decode: alterations on a small image
            )
        except (KontrolError, OSError, ValueError):
            continue
        for kind in rng.sample(kinds, min(per_photo, len(kinds))):
            pending.append(ALTERATIONS[kind](image, rng))
            pending_owner.append(row)
        if len(pending) >= settings.batch_size:
            flush()
    flush()
    if not vectors:
        return np.zeros((0, embedder.dim), np.float32), np.zeros(0, np.int64)
    return np.concatenate(vectors).astype(np.float32), np.asarray(owners, np.int64)


def run_finetune(args: argparse.Namespace, settings: Settings) -> int:
    from core.embedders import create_embedder

    embedder = create_embedder(settings)
    _, x, payloads = _read_store(settings, embedder)
    species = np.array([str(p.get("species")) for p in payloads])
    aug_x, aug_of = augmented_views(settings, embedder, payloads, args.augment, args.seed)
    report = cross_validate(
        x, species, aug_x, aug_of, folds=args.folds, epochs=args.epochs, lr=args.lr, seed=args.seed
    )
    _, codes = np.unique(species, return_inverse=True)
    final = train_projection(
        np.concatenate([x, aug_x]),
        np.concatenate([codes, codes[aug_of]]),
        np.concatenate([np.arange(len(x)), aug_of]),
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
    )
    final.base_fingerprint = embedder.fingerprint
    report["fingerprint"] = final.fingerprint
    report["worth_adopting"] = worth_adopting(report)
    final.report = report
    out = Path(args.out)
    final.save(out)
    lo1, hi1 = report["recall_at_1_gain_ci95"]
    lo, hi = report["map_gain_ci95"]
    print(
        f"{report['photos']} photos of {report['species']} species, {report['augmented']} augmented "
        f"copies; {report['folds']}-fold photo-level cross-validation, {report['queries']} queries."
    )
    print(
        f"species recall@1: {report['recall_at_1_base']:.3f} -> "
        f"{report['recall_at_1_projected']:.3f} (gain {report['recall_at_1_gain']:+.3f}, "
        f"95% CI {lo1:+.3f} .. {hi1:+.3f})"
    )
    print(
        f"species mAP: {report['map_base']:.3f} -> {report['map_projected']:.3f} "
        f"(gain {report['map_gain']:+.3f}, 95% CI {lo:+.3f} .. {hi:+.3f})"
    )
    print(f"saved: {out} (fingerprint {final.fingerprint})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=float), encoding="utf-8")
    if not report["worth_adopting"]:
        print("Not adopted: the gain's 95% interval does not lie above zero.")
    elif not args.adopt:
        print("The gain is significant; rerun with --adopt to adopt it.")
    else:
        target = Path(settings.models_dir) / "finetune" / ADOPTED_NAME
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, target)
        print(
            f"Adopted: {target}. It is a new embedding space ({final.fingerprint}): the index "
            "must be rebuilt with the projected embedder (kontrol.finetune.ProjectedEmbedder)."
        )
    return 0
