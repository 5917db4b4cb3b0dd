"""Fitting the species head from a vector store, on a bounded sample, when its label set changes.

Why a sample: the head is a linear model; a few hundred photos per species fix it as well as all
of them, and a bounded sample keeps training time flat as the collection grows to millions (no
O(N) work per update). Why keyed on the label set: adding photos of known species leaves the head
valid, so it is retrained only when a species appears or disappears (or on request).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from core.calibration import fit_vote_calibration, load_calibrator
from core.head import MIN_VALIDATED_CLASSES, load_head, train_head
from core.seed_format import IndexData
from core.vectorstore import VectorStore

log = logging.getLogger(__name__)

PER_SPECIES = 200
MAX_TOTAL = 50_000


def sample_store(
    store: VectorStore, *, per_species: int = PER_SPECIES, max_total: int = MAX_TOTAL, seed: int = 0
) -> tuple[list[str], np.ndarray]:
    """(species labels, vectors) of at most `per_species` photos of each species."""
    by_species: dict[str, list[str]] = {}
    for batch in store.iterate(batch_size=8192, vectors=False):
        for id_, payload in zip(batch.ids, batch.payloads, strict=True):
            by_species.setdefault(str(payload.get("species")), []).append(id_)
    rng = np.random.default_rng(seed)
    cap = max(2, min(per_species, max_total // max(1, len(by_species))))
    chosen: list[str] = []
    for ids in by_species.values():
        if len(ids) > cap:
            ids = [ids[i] for i in sorted(rng.choice(len(ids), cap, replace=False))]
        chosen.extend(ids)
    labels: list[str] = []
    vectors: list[np.ndarray] = []
    for start in range(0, len(chosen), 4096):
        got = store.fetch(chosen[start : start + 4096])
        labels.extend(str(p.get("species")) for p in got.payloads)
        vectors.append(np.asarray(got.vectors, dtype=np.float32))
    dim = store.info().dim if store.info() else 0
    return labels, (np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32))


def train_head_from_store(
    store: VectorStore, models_dir: Path, *, fingerprint: str, key: str, force: bool = False
) -> dict[str, Any] | None:
    """Fit and save the head unless one for this model and label set exists; None if skipped.

    Failures are logged, never raised: the index is served already and the vote still works.
    """
    counts = store.values("species")
    if sum(1 for n in counts.values() if n >= 2) < MIN_VALIDATED_CLASSES:
        log.info("Species head skipped: fewer than two species with two or more photos.")
        return None
    if not force:
        existing = load_head(models_dir, fingerprint=fingerprint, generation=key)
        if existing is not None:
            return existing.report
    try:
        labels, vectors = sample_store(store)
        data = IndexData(
            images=[{"scientific_name": s} for s in labels],
            embeddings=vectors,
            index=None,  # type: ignore[arg-type]
            meta={"model_fingerprint": fingerprint, "generation": key},
        )
        head, report = train_head(data)
        head.save(models_dir)
    except Exception:
        log.exception("Training the species head failed; classifying by neighbour vote.")
        return None
    log.info("Species head trained: %s", report)
    return report


def calibrate_vote_from_store(
    store: VectorStore,
    models_dir: Path,
    *,
    fingerprint: str,
    key: str,
    k: int = 10,
    force: bool = False,
) -> dict[str, Any] | None:
    """Fit and save the neighbour vote's calibration (leave-one-out over a bounded sample) unless
    one for this model and label set exists; its report, or None when skipped or failed."""
    if not force:
        existing = load_calibrator(models_dir, fingerprint=fingerprint, key=key)
        if existing is not None:
            return existing.report
    try:
        labels, vectors = sample_store(store)
        cal = fit_vote_calibration(labels, vectors, fingerprint=fingerprint, key=key, k=k)
        if cal is None:
            log.info("Vote calibration skipped: too few photos.")
            return None
        cal.save(models_dir)
    except Exception:
        log.exception("Fitting the vote calibration failed; raw vote shares are shown.")
        return None
    log.info("Vote calibration fitted: %s", cal.report)
    return cal.report
