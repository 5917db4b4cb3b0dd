"""A species head: multinomial logistic regression on the indexed embeddings, temperature-calibrated.

Why: a linear classifier pools every photo of a species, where the neighbour vote only sees the k
closest ones, and its probabilities can be calibrated so that "80%" means right about 80% of the
time. Recipe (`train_head`):

1. Classes are all species of the index. Species with >= 2 photos are split stratified into train
   and held-out photos (at least one of each); singletons only train (they cannot be validated,
   yet leaving them out would make the head confidently name another species for them). A head
   needs >= 2 species with >= 2 photos (`MIN_VALIDATED_CLASSES`), else there is nothing to check.
2. Features are centred and divided by one global scale (cosine geometry kept, no dead dimension
   blown up); the model is fitted by full-batch L-BFGS with an L2 penalty (torch at run time,
   scikit-learn stays a dev dependency).
3. One temperature T is fitted on the held-out logits by minimising their negative log-likelihood;
   accuracy and expected calibration error (ECE, 15 bins) are reported before and after.
4. The head is refitted on all photos, T applied, and saved beside the index generation and model
   fingerprint it was fitted on: `load_head` refuses any other, so a stale head is never served.

Open set: a softmax head is confident on animals it never saw, so `head_classification` also takes
the best neighbour similarity and answers "not sure" below the kNN similarity threshold.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import KontrolError
from core.seed_format import IndexData
from core.settings import Settings

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

HEAD_FILE = "species_head.npz"
FORMAT_VERSION = 1
MIN_VALIDATED_CLASSES = 2
DEFAULT_L2 = 1e-2
MAX_ITER = 300
ECE_BINS = 15
T_MIN, T_MAX = 0.05, 100.0
TOP_PROBABILITIES = 5


class HeadTrainingError(KontrolError):
    """The index cannot support a species head (too few species with two or more photos)."""


def index_generation(meta: dict[str, Any]) -> str:
    """The id of an index generation (older indexes without one: build time + size)."""
    generation = meta.get("generation")
    if generation:
        return str(generation)
    return f"{meta.get('created_at')}|{meta.get('updated_at')}|{meta.get('total_images')}"


# --- the model ---------------------------------------------------------------------------------
@dataclass
class SpeciesHead:
    """Linear softmax classifier over standardised embeddings; probabilities use `temperature`."""

    classes: list[str]
    weight: np.ndarray  # (dim, C) float32
    bias: np.ndarray  # (C,) float32
    mean: np.ndarray  # (dim,) float32
    scale: float
    temperature: float
    fingerprint: str
    generation: str
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.weight.shape[0])

    def logits(self, vectors: np.ndarray) -> np.ndarray:
        """Uncalibrated logits (n, C)."""
        x = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        return ((x - self.mean) / self.scale) @ self.weight + self.bias

    def predict_proba(self, vectors: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities (n, C); columns follow `classes`."""
        z = self.logits(vectors).astype(np.float64) / self.temperature
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def save(self, models_dir: Path) -> Path:
        """Write `<models_dir>/species_head.npz` atomically (temp file, fsync, rename)."""
        models_dir = Path(models_dir)
        models_dir.mkdir(parents=True, exist_ok=True)
        meta = {
            "format_version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "generation": self.generation,
            "dim": self.dim,
            "scale": self.scale,
            "temperature": self.temperature,
            "report": self.report,
        }
        target = models_dir / HEAD_FILE
        fd, tmp = tempfile.mkstemp(prefix=".species_head-", suffix=".tmp", dir=models_dir)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(
                    handle,
                    weight=self.weight.astype(np.float32),
                    bias=self.bias.astype(np.float32),
                    mean=self.mean.astype(np.float32),
                    classes=np.array(self.classes, dtype=str),
                    meta=np.array(json.dumps(meta, ensure_ascii=False)),
                )
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target


def load_head(models_dir: Path, *, fingerprint: str, generation: str) -> SpeciesHead | None:
    """The saved head if it was fitted on this model and index generation, else None (logged).

    A missing, stale or damaged file never raises: the caller falls back to the neighbour vote.
    """
    path = Path(models_dir) / HEAD_FILE
    if not path.exists():
        log.info("No species head at %s; classifying by neighbour vote.", path)
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            head = SpeciesHead(
                classes=[str(c) for c in npz["classes"]],
                weight=np.asarray(npz["weight"], dtype=np.float32),
                bias=np.asarray(npz["bias"], dtype=np.float32),
                mean=np.asarray(npz["mean"], dtype=np.float32),
                scale=float(meta["scale"]),
                temperature=float(meta["temperature"]),
                fingerprint=str(meta["fingerprint"]),
                generation=str(meta["generation"]),
                report=dict(meta.get("report") or {}),
            )
        n_classes = len(head.classes)
        if (
            meta.get("format_version") != FORMAT_VERSION
            or head.weight.shape != (int(meta["dim"]), n_classes)
            or head.bias.shape != (n_classes,)
            or head.mean.shape != (head.dim,)
            or not (head.scale > 0 and head.temperature > 0)
            or not np.all(np.isfinite(head.weight))
        ):
            raise ValueError("inconsistent contents")
    except Exception as exc:  # any damage means "no head", never a failed query
        log.warning("Species head %s is unreadable (%s); ignoring it.", path, exc)
        return None
    if head.fingerprint != fingerprint or head.generation != generation:
        log.info(
            "Species head %s is stale (fitted on %s / generation %s); ignoring it.",
            path,
            head.fingerprint,
            head.generation,
        )
        return None
    return head


# --- fitting -----------------------------------------------------------------------------------
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
    """ECE: |accuracy - confidence| of the top class, averaged over equal-width confidence bins."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    total = 0.0
    for k in range(bins):
        mask = which == k
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(total)


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


# --- use ---------------------------------------------------------------------------------------
def head_classification(
    head: SpeciesHead,
    vector: np.ndarray,
    *,
    min_confidence: float,
    best_similarity: float | None = None,
    min_similarity: float | None = None,
) -> dict[str, Any]:
    """The classification dict (as `core.classify.vote`) from the head, open-set aware.

    species is None ("not sure") when the top probability is below `min_confidence`, or when the
    query's best neighbour similarity is below `min_similarity` (the softmax alone cannot tell an
    unseen animal from a known one).
    """
    probs = head.predict_proba(np.asarray(vector).reshape(1, -1))[0]
    order = np.argsort(-probs)
    best_p = float(probs[order[0]])
    sure = best_p >= min_confidence
    if best_similarity is not None and min_similarity is not None:
        sure = sure and best_similarity >= min_similarity
    result: dict[str, Any] = {
        "species": head.classes[order[0]] if sure else None,
        "confidence": best_p,
        "probabilities": {
            head.classes[i]: round(float(probs[i]), 6) for i in order[:TOP_PROBABILITIES]
        },
        "source": "head",
    }
    if best_similarity is not None:
        result["best_similarity"] = float(best_similarity)
    return result


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
    return (
        f"\nVote calibration: {cal['queries']} leave-one-out queries, ECE "
        f"{cal['ece_raw'] * 100:.1f}% (raw share) -> {cal['ece_fitted'] * 100:.1f}% (calibrated)."
    )


def train_head_cli(args: argparse.Namespace, settings: Settings) -> int:
    """`kontrol train`: fit the head on a sample of the served index, save it, print the report."""
    from core.engine import Engine

    engine = Engine(settings)
    # Only an index of the configured model is worth a head: the engine ignores any other.
    engine.store.check(engine.embedder.fingerprint, engine.embedder.dim)
    report = engine.train_head(force=True)
    if report is None:
        raise HeadTrainingError(
            "A species head needs at least two species with two or more photos each; "
            "add photos and re-index."
        )
    if getattr(args, "json", False):
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
        print(f"Saved to {Path(settings.models_dir) / HEAD_FILE}.")
    return 0
