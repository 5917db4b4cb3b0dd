"""Fitting the species head (`train_head`) and doing it from a vector store, on a bounded
sample, when its label set changes (`train_head_from_store`).

Why a sample: the head is a linear model; a few hundred photos per species fix it as well as all
of them, and a bounded sample keeps training time flat as the collection grows to millions (no
O(N) work per update). Why keyed on the label set: adding photos of known species leaves the head
valid, so it is retrained only when a species appears or disappears (or on request).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.calibration import ECE_BINS, fit_vote_calibration, load_calibrator
from core.calibration import expected_calibration_error as confidence_ece
from core.classify import TEMPERATURE
from core.head import (
    HEAD_FILE,
    MIN_VALIDATED_CLASSES,
    HeadTrainingError,
    SpeciesHead,
    index_generation,
    load_head,
)
from core.seed_format import IndexData
from core.settings import Settings
from core.taxonomy import PAYLOAD_RANKS
from core.vectorstore import VectorStore

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_L2 = 1e-2
MAX_ITER = 300
T_MIN, T_MAX = 0.05, 100.0


def _fit_linear(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    l2: float,
    max_iter: int,
    init: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise mean cross-entropy + l2/2 * ||W||^2 by full-batch L-BFGS (deterministic).

    `init` warm-starts from an earlier solution (the refit on all photos starts from the split's).
    """
    import torch  # fitting only: serving a head never needs torch

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(y.astype(np.int64))
    if init is None:
        weight = torch.zeros(x.shape[1], n_classes, requires_grad=True)
        bias = torch.zeros(n_classes, requires_grad=True)
    else:
        weight = torch.tensor(init[0], dtype=torch.float32, requires_grad=True)
        bias = torch.tensor(init[1], dtype=torch.float32, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ weight + bias, yt)
        loss = loss + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach().numpy().copy(), bias.detach().numpy().copy()


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and one global scale giving unit mean variance per dimension."""
    mean = x.mean(axis=0)
    scale = float(np.sqrt(((x - mean) ** 2).mean()))
    return mean.astype(np.float32), max(scale, 1e-6)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / T)."""
    logp = _log_softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, prior_sd: float = 1.0) -> float:
    """The T minimising held-out NLL, with a weak log-normal prior around T = 1.

    Golden-section search over log T (the NLL is convex in 1/T). The prior (sd `prior_sd` in log T)
    matters only when the held-out photos are all classified with near-certainty: the NLL then
    keeps falling as T -> 0, and a head sharpened that far would be overconfident on new photos.
    """
    n = max(len(labels), 1)
    lo, hi = np.log(T_MIN), np.log(T_MAX)
    ratio = (np.sqrt(5) - 1) / 2

    def f(log_t: float) -> float:
        return nll(logits, labels, float(np.exp(log_t))) + log_t**2 / (2 * prior_sd**2 * n)

    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(60):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = f(b)
    return float(np.exp((lo + hi) / 2))


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE of the head's top class: the vote calibration's measure (same bins), so the two
    reports of `kontrol train` compare."""
    probs = np.asarray(probs)
    return confidence_ece(probs.max(axis=1), probs.argmax(axis=1) == np.asarray(labels), bins)


def _softmax(z: np.ndarray) -> np.ndarray:
    return np.exp(_log_softmax(np.asarray(z, dtype=np.float64)))


def stratified_split(
    labels: np.ndarray, holdout: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, held-out): per class with >= 2 rows, round(holdout * n) rows held out,
    at least one and never all; singletons stay in train."""
    train, held = [], []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        k = 0 if len(rows) < 2 else min(len(rows) - 1, max(1, round(holdout * len(rows))))
        held.extend(rows[:k])
        train.extend(rows[k:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(held, dtype=np.int64))


#: Held-out photos needed before the head may replace the neighbour vote.
MIN_HOLDOUT_FOR_USE = 20


def validated_class_count(data: IndexData) -> int:
    """Species with >= 2 photos (only those can be held out)."""
    _, counts = np.unique([r["scientific_name"] for r in data.images], return_counts=True)
    return int((counts >= 2).sum())


def _knn_holdout_accuracy(
    x: np.ndarray, labels: np.ndarray, train: np.ndarray, held: np.ndarray
) -> float:
    """Accuracy of the neighbour vote on the held-out photos, neighbours from the train split."""
    from core.classify import vote

    sims = x[held] @ x[train].T
    k = min(10, len(train))
    hits = 0
    for row, truth in zip(sims, labels[held], strict=True):
        top = np.argsort(-row)[:k]
        result = vote(
            [str(v) for v in labels[train][top]], row[top], min_similarity=-1.0, min_confidence=0.0
        )
        hits += result["species"] == str(truth)
    return hits / max(1, len(held))


def train_head(
    data: IndexData,
    *,
    seed: int = 0,
    holdout: float = 0.25,
    l2: float = DEFAULT_L2,
    max_iter: int = MAX_ITER,
) -> tuple[SpeciesHead, dict[str, Any]]:
    """Fit, calibrate on a held-out split, refit on everything; returns the head and its report.

    Raises HeadTrainingError when fewer than two species have two or more photos.
    """
    started = time.perf_counter()
    if not 0.0 < holdout < 1.0:
        raise ValueError("holdout must be in (0, 1)")
    n_validated = validated_class_count(data) if data.images else 0
    if n_validated < MIN_VALIDATED_CLASSES:
        raise HeadTrainingError(
            "A species head needs at least two species with two or more photos each; "
            f"this index has {n_validated}. Add photos and re-index."
        )
    names = [str(r["scientific_name"]) for r in data.images]
    classes = sorted(set(names))
    labels = np.searchsorted(np.array(classes), np.array(names))
    x = np.asarray(data.embeddings, dtype=np.float32)
    n_classes = len(classes)

    train, held = stratified_split(labels, holdout, np.random.default_rng(seed))
    mean, scale = _standardiser(x[train])
    weight, bias = _fit_linear(
        (x[train] - mean) / scale, labels[train], n_classes, l2=l2, max_iter=max_iter
    )
    held_logits = ((x[held] - mean) / scale) @ weight + bias
    y_held = labels[held]
    temperature = fit_temperature(held_logits, y_held)
    probs_before = _softmax(held_logits)
    probs_after = _softmax(held_logits / temperature)

    knn_accuracy = _knn_holdout_accuracy(x, labels, train, held)
    head_accuracy = float((probs_before.argmax(axis=1) == y_held).mean())

    mean, scale = _standardiser(x)
    weight, bias = _fit_linear(
        (x - mean) / scale, labels, n_classes, l2=l2, max_iter=max_iter, init=(weight, bias)
    )
    report = {
        "classes": n_classes,
        "validated_classes": n_validated,
        "singleton_classes": n_classes - n_validated,
        "train_n": len(train),
        "holdout_n": len(held),
        "total_n": len(x),
        "holdout_accuracy": head_accuracy,
        "knn_holdout_accuracy": knn_accuracy,
        # The head answers only where it proved at least as good as the neighbour vote on
        # enough held-out photos; otherwise it is kept for inspection but not used.
        "preferred": len(held) >= MIN_HOLDOUT_FOR_USE and head_accuracy >= knn_accuracy,
        "ece_before": expected_calibration_error(probs_before, y_held),
        "ece_after": expected_calibration_error(probs_after, y_held),
        "nll_before": nll(held_logits, y_held),
        "nll_after": nll(held_logits, y_held, temperature),
        "temperature": temperature,
        "l2": l2,
        "seed": seed,
        "seconds": time.perf_counter() - started,
    }
    head = SpeciesHead(
        classes=classes,
        weight=weight,
        bias=bias,
        mean=mean,
        scale=scale,
        temperature=temperature,
        fingerprint=str(data.meta.get("model_fingerprint")),
        generation=index_generation(data.meta),
        report=report,
    )
    return head, report


def format_report(report: dict[str, Any]) -> str:
    """Human-readable training report."""
    return (
        f"Species head: {report['classes']} species ({report['singleton_classes']} with one photo, "
        f"train-only), {report['train_n']} train / {report['holdout_n']} held-out photos.\n"
        f"Held-out accuracy {report['holdout_accuracy'] * 100:.1f}% "
        f"(neighbour vote: {report.get('knn_holdout_accuracy', float('nan')) * 100:.1f}%; "
        f"{'head used' if report.get('preferred') else 'vote kept: head not better or too few photos'}); "
        f"ECE {report['ece_before'] * 100:.1f}% -> {report['ece_after'] * 100:.1f}% "
        f"after temperature scaling (T = {report['temperature']:.3f}); "
        f"NLL {report['nll_before']:.3f} -> {report['nll_after']:.3f}; "
        f"{report['seconds']:.1f} s."
    ) + _calibration_line(report.get("calibration"))


def _calibration_line(cal: dict[str, Any] | None) -> str:
    if not cal:
        return ""
    line = (
        f"\nVote calibration: {cal['queries']} leave-one-out queries, ECE "
        f"{cal['ece_raw'] * 100:.1f}% (raw share) -> {cal['ece_fitted'] * 100:.1f}% (calibrated)."
    )
    target = cal.get("target_precision")
    if target is None:
        return line
    if cal.get("named_threshold") is None:
        return (
            line
            + (
                f"\nNamed-answer threshold: no threshold keeps {target:.0%} precision on this "
                f"collection's held-out curve; the target {target:g} itself is used."
            )
            + _rank_lines(cal)
        )
    line += (
        f"\nNamed-answer threshold for {target:.0%} precision: {cal['named_threshold']:.2f} "
        f"(held out: {cal['named_coverage']:.0%} of queries named, "
        f"{cal['named_precision']:.0%} of them right)."
    )
    return line + _rank_lines(cal)


def _rank_lines(cal: dict[str, Any]) -> str:
    """One line per rank with its own calibration: the threshold its curve chose, if any."""
    parts = []
    for rank, r in (cal.get("ranks") or {}).items():
        chosen = r.get("named_threshold")
        parts.append(
            f"{rank} {chosen:.2f} ({r['named_precision']:.0%} right)"
            if chosen is not None
            else f"{rank}: none, {cal['target_precision']:g} used"
        )
    return f"\nRank answers ({'; '.join(parts)})." if parts else ""


def train_head_cli(args: argparse.Namespace, settings: Settings) -> int:
    """`kontrol train`: fit the head on a sample of the served index, save it, print the report."""
    from core.engine import Engine

    engine = Engine(settings)
    # Only an index of the configured model is worth a head: the engine ignores any other.
    engine.store.check(engine.embedder.fingerprint, engine.embedder.dim)
    report = engine.train_head(force=True)
    if report is None:
        from core.engine import label_set_key

        key = label_set_key(engine.species_counts())
        cal = load_calibrator(settings.models_dir, fingerprint=engine.embedder.fingerprint, key=key)
        if cal is None:
            raise HeadTrainingError(
                "A species head needs at least two species with two or more photos each; "
                "add photos and re-index."
            )
        # no head, but the vote's calibration and thresholds were fitted: say so, succeed
        print(
            "No species head: fewer than two species have two or more photos, so the "
            "neighbour vote answers." + _calibration_line(cal.report)
        )
        return 0
    if getattr(args, "json", False):
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
        print(f"Saved to {Path(settings.models_dir) / HEAD_FILE}.")
    return 0


# --- from a store ------------------------------------------------------------------------------

PER_SPECIES = 200
MAX_TOTAL = 50_000


def per_species_cap(
    n_species: int, *, per_species: int = PER_SPECIES, max_total: int = MAX_TOTAL
) -> int:
    """Photos per species the head is fitted on at most (the bounded sample's rule)."""
    return max(2, min(per_species, max_total // max(1, n_species)))


def bounded_sample(labels: Sequence[str], *, seed: int = 0) -> np.ndarray:
    """Row indices of the bounded sample of in-memory rows (the same rule as `sample_store`)."""
    by_species: dict[str, list[int]] = {}
    for i, name in enumerate(labels):
        by_species.setdefault(str(name), []).append(i)
    rng = np.random.default_rng(seed)
    cap = per_species_cap(len(by_species))
    chosen: list[int] = []
    for rows in by_species.values():
        if len(rows) > cap:
            rows = [rows[i] for i in sorted(rng.choice(len(rows), cap, replace=False))]
        chosen.extend(rows)
    return np.array(sorted(chosen), dtype=np.int64)


def fit_head(
    labels: Sequence[str], vectors: np.ndarray, *, fingerprint: str, key: str
) -> SpeciesHead:
    """A head fitted on these rows for this model and label set (HeadTrainingError if too few
    species have two photos); the same fit whether the rows come from a store or from eval."""
    data = IndexData(
        images=[{"scientific_name": str(s)} for s in labels],
        embeddings=np.asarray(vectors, dtype=np.float32),
        index=None,  # type: ignore[arg-type]
        meta={"model_fingerprint": fingerprint, "generation": key},
    )
    head, _ = train_head(data)
    return head


def sample_store(
    store: VectorStore,
    *,
    per_species: int = PER_SPECIES,
    max_total: int = MAX_TOTAL,
    seed: int = 0,
    lineages: dict[str, dict[str, str]] | None = None,
) -> tuple[list[str], np.ndarray]:
    """(species labels, vectors) of at most `per_species` photos of each species.

    `lineages`, when given, is filled with each species' ranks as indexed (taxonomy.csv
    overrides included), from the same pass over the payloads."""
    by_species: dict[str, list[str]] = {}
    for batch in store.iterate(batch_size=8192, vectors=False):
        for id_, payload in zip(batch.ids, batch.payloads, strict=True):
            species = str(payload.get("species"))
            by_species.setdefault(species, []).append(id_)
            if lineages is not None and species not in lineages:
                lineages[species] = {
                    rank: str(payload[rank]) for rank in PAYLOAD_RANKS if payload.get(rank)
                }
    rng = np.random.default_rng(seed)
    cap = per_species_cap(len(by_species), per_species=per_species, max_total=max_total)
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
        head = fit_head(labels, vectors, fingerprint=fingerprint, key=key)
        report = head.report
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
    min_similarity: float | None = None,
    target_precision: float | None = None,
    temperature: float = TEMPERATURE,
    force: bool = False,
) -> dict[str, Any] | None:
    """Fit and save the neighbour vote's calibration (leave-one-out over a bounded sample), and
    its named-answer threshold, unless one for this model, label set and these settings exists;
    its report, or None when skipped or failed."""
    if not force:
        existing = load_calibrator(models_dir, fingerprint=fingerprint, key=key)
        current = (
            existing is not None
            and existing.fitted_for(k, temperature)
            and (
                target_precision is None
                or min_similarity is None
                or (
                    existing.report.get("target_precision") == target_precision
                    and existing.report.get("min_similarity") == min_similarity
                )
            )
        )
        if existing is not None and current:
            return existing.report
    try:
        lineages: dict[str, dict[str, str]] = {}
        labels, vectors = sample_store(store, lineages=lineages)
        cal = fit_vote_calibration(
            labels,
            vectors,
            fingerprint=fingerprint,
            key=key,
            k=k,
            min_similarity=min_similarity,
            target_precision=target_precision,
            lineage=lambda name: lineages.get(name) or {},
            temperature=temperature,
        )
        if cal is None:
            log.info("Vote calibration skipped: too few photos.")
            return None
        cal.save(models_dir)
    except Exception:
        log.exception("Fitting the vote calibration failed; raw vote shares are shown.")
        return None
    log.info("Vote calibration fitted: %s", cal.report)
    return cal.report
