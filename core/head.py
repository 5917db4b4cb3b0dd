"""The species head, the model: a multinomial logistic regression, temperature-calibrated.

This module holds the model and its file (`species_head.npz`); fitting is in `core.head_fit`,
how an answer is made from it in `core.head_policy`.

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

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import atomic_file
from core.errors import KontrolError

log = logging.getLogger(__name__)

HEAD_FILE = "species_head.npz"
FORMAT_VERSION = 1
MIN_VALIDATED_CLASSES = 2
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
        with atomic_file(target) as handle:
            np.savez(
                handle,
                weight=self.weight.astype(np.float32),
                bias=self.bias.astype(np.float32),
                mean=self.mean.astype(np.float32),
                classes=np.array(self.classes, dtype=str),
                meta=np.array(json.dumps(meta, ensure_ascii=False)),
            )
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
