"""Descriptors: what vector a photo is indexed and searched by, on top of a backbone's outputs.

The backbone gives a pooled feature vector and ImageNet logits; a descriptor turns them into the
vector the index stores. It wraps the embedder, so indexing, queries and `kontrol eval` all go
through the same code and can never disagree. Its name and parameters are part of the
fingerprint: an index built with another descriptor is rebuilt, never mixed.

- `pooled`: the backbone's L2-normalised pooled features (no wrapper; fingerprint unchanged).
- `flip`: mean of the photo's and its mirror's embeddings (one batch of 2N), so a mirrored
  copy or an animal facing the other way lands in the same place.
- `imagenet_fusion`: `[sqrt(1-w) * e, sqrt(w) * sqrt(p)]`, with `e` the pooled embedding and
  `p` the softmax over ImageNet's 398 animal classes. Both parts have unit norm, so cosine
  similarity is `(1-w) * cos(e, e') + w * BC(p, p')`, BC the Bhattacharyya coefficient: ImageNet's
  species-level classes add "what animal is this" to the embedding's "what does it look like".
  With w = 0 it is `pooled` padded with zeros (same similarities). The vector is zero-padded to a
  multiple of 16 dimensions (1678 -> 1680): FAISS's fp16 scan only takes its SIMD path then, and
  measured at 100k vectors a 1678-d search took ~180 ms against ~15 ms at 1680-d.
- `flip_fusion`: `imagenet_fusion` of the flip-averaged embedding and flip-averaged logits.

Lineage (`lineage_weight` λ > 0, both fusions): ImageNet's classes are species, so a lynx photo
classed "lynx" and a bobcat photo classed "cougar" get no credit from BC(p, p') although both are
Felidae. λ moves part of the class share to the higher ranks of `core/data/imagenet_lineage.csv`:
`p` summed per genus, family, order and class, so the similarity becomes
`(1-w) cos(e, e') + w * [(1-λ) BC(p, p') + λ * mean over the 4 ranks of BC(p_rank, p_rank')]`.
A class with an empty cell at a rank is grouped there by its nearest known lower rank (a shark
with no order stays with its family; a class with nothing known is alone): an "unknown" bucket
would tie sharks, jellyfish and worms together, and every rank's mass still sums to 1, so the row
keeps unit norm without rescaling and the formula holds exactly. A group with a single class adds
exactly that class's own term, so it is folded into the class's coordinate (weight
`(1-λ) + λ * singletons / 4`) instead of getting a column: same similarities, 102 group columns
rather than 533 (Lite0: 1792 dims, not 2224).
λ = 0 is the plain fusion, bit for bit, with the same tag (indexes are kept).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from PIL import Image

from core.embedders.base import Embedder, EmbedOutput, l2_normalize
from core.errors import ConfigError
from core.imagenet import NUM_ANIMALS, NUM_CLASSES
from core.taxonomy import PAYLOAD_RANKS, imagenet_lineage

DescriptorName = Literal["pooled", "flip", "imagenet_fusion", "flip_fusion"]
DESCRIPTORS: tuple[str, ...] = ("pooled", "flip", "imagenet_fusion", "flip_fusion")
#: Bump when a descriptor's arithmetic changes for the same name and parameters.
DESCRIPTOR_VERSION = "d1"
#: Fused vectors are zero-padded to a multiple of this (SIMD width of FAISS's fp16 scan).
DIM_MULTIPLE = 16


def animal_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(N, 1000) ImageNet logits -> (N, 398) float64 softmax over the animal classes."""
    z = np.asarray(logits, dtype=np.float64)[:, :NUM_ANIMALS] / temperature
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return p


def animal_hellinger(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(N, 1000) ImageNet logits -> (N, 398) sqrt of the softmax over the animal classes (unit rows)."""
    return np.sqrt(animal_softmax(logits, temperature)).astype(np.float32)


@dataclass(frozen=True)
class LineageGroups:
    """The ImageNet animal classes' groups at the ranks above species, as matrices.

    membership: (398, G) 0/1, one column per group of 2+ classes at some rank (genus first);
    singletons: (398,) how many of the ranks leave the class alone in its group;
    digest: short hash of the grouping, part of the tag (a corrected table rebuilds indexes).
    """

    membership: np.ndarray
    singletons: np.ndarray
    digest: str

    @property
    def columns(self) -> int:
        return int(self.membership.shape[1])


@lru_cache(maxsize=1)
def lineage_groups() -> LineageGroups:
    """Built once from core/data/imagenet_lineage.csv (never a collection's overrides: the vectors
    must not depend on which collection they are indexed in)."""
    keys: list[list[str]] = []  # per rank, each class's group key
    for rank in PAYLOAD_RANKS:
        column = []
        for index in range(NUM_ANIMALS):
            lineage = imagenet_lineage(index)
            # nearest known rank at or below `rank`; the class itself when nothing is known
            lower = PAYLOAD_RANKS[: PAYLOAD_RANKS.index(rank) + 1][::-1]
            known = next((f"{r}:{v}" for r in lower if (v := lineage.get(r))), None)
            column.append(known or f"class#{index}")
        keys.append(column)
    columns: list[np.ndarray] = []
    singletons = np.zeros(NUM_ANIMALS, dtype=np.int64)
    for column in keys:
        members: dict[str, list[int]] = {}
        for index, key in enumerate(column):
            members.setdefault(key, []).append(index)
        for key in sorted(members):
            if len(members[key]) == 1:
                singletons[members[key][0]] += 1
            else:
                onehot = np.zeros(NUM_ANIMALS)
                onehot[members[key]] = 1.0
                columns.append(onehot)
    membership = np.stack(columns, axis=1)
    digest = hashlib.sha256("\n".join(",".join(c) for c in keys).encode()).hexdigest()[:8]
    return LineageGroups(membership, singletons, digest)


class DescriptorEmbedder(Embedder):
    """An embedder whose vectors are a descriptor computed from `base`'s outputs."""

    def __init__(
        self,
        base: Embedder,
        descriptor: str,
        *,
        fusion_weight: float = 0.5,
        fusion_temperature: float = 1.0,
        lineage_weight: float = 0.0,
    ) -> None:
        if descriptor not in DESCRIPTORS:
            raise ConfigError(f"KONTROL_DESCRIPTOR: unknown descriptor {descriptor!r}.")
        if not 0.0 <= fusion_weight <= 1.0:
            raise ConfigError("KONTROL_FUSION_WEIGHT must be within [0, 1].")
        if fusion_temperature <= 0:
            raise ConfigError("KONTROL_FUSION_TEMPERATURE must be positive.")
        if not 0.0 <= lineage_weight <= 1.0:
            raise ConfigError("KONTROL_LINEAGE_WEIGHT must be within [0, 1].")
        self.base = base
        self.descriptor = descriptor
        self.fusion_weight = float(fusion_weight)
        self.fusion_temperature = float(fusion_temperature)
        self.lineage_weight = float(lineage_weight)
        self.flips = descriptor in ("flip", "flip_fusion")
        self.fuses = descriptor in ("imagenet_fusion", "flip_fusion")
        self.lineage = self.fuses and self.lineage_weight > 0

    # --- identity ---------------------------------------------------------------------------------
    @property
    def name(self) -> str:  # type: ignore[override]
        return self.base.name

    @property
    def dim(self) -> int:  # type: ignore[override]
        if not self.fuses:
            return self.base.dim
        used = self.base.dim + NUM_ANIMALS + (lineage_groups().columns if self.lineage else 0)
        return -(-used // DIM_MULTIPLE) * DIM_MULTIPLE

    @property
    def input_size(self) -> int:  # type: ignore[override]
        return self.base.input_size

    @property
    def tag(self) -> str:
        """Descriptor name and every parameter that changes its vectors."""
        if self.fuses:
            params = f"w{self.fusion_weight:g}-t{self.fusion_temperature:g}"
            if self.lineage:  # absent at λ = 0, so today's indexes keep their fingerprint
                params += f"-l{self.lineage_weight:g}-{lineage_groups().digest}"
            return f"{self.descriptor}-{params}-{DESCRIPTOR_VERSION}"
        return f"{self.descriptor}-{DESCRIPTOR_VERSION}"

    @property
    def fingerprint(self) -> str:
        return f"{self.base.fingerprint}|{self.tag}"

    @property
    def class_names(self) -> list[str] | None:
        return self.base.class_names

    # --- work ---------------------------------------------------------------------------------------
    def load(self) -> None:
        if self.fuses:
            names = self.base.class_names
            if names is None or len(names) != NUM_CLASSES:
                raise ConfigError(
                    f"KONTROL_DESCRIPTOR={self.descriptor} needs a backbone with the ImageNet-1k "
                    "head (efficientnet_lite0/lite2/v2_m), not a species checkpoint."
                )
        self.base.load()

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.base.preprocess(image)

    def embed_batch(self, batch: np.ndarray) -> EmbedOutput:
        out = self._flip(batch) if self.flips else self.base.embed_batch(batch)
        return self._fuse(out) if self.fuses else out

    def _flip(self, batch: np.ndarray) -> EmbedOutput:
        n = len(batch)
        mirrored = np.ascontiguousarray(batch[..., ::-1])
        out = self.base.embed_batch(np.concatenate([batch, mirrored]))
        emb = l2_normalize(out.embeddings[:n] + out.embeddings[n:])
        logits = None if out.logits is None else (out.logits[:n] + out.logits[n:]) / 2
        return EmbedOutput(emb, logits)

    def _fuse(self, out: EmbedOutput) -> EmbedOutput:
        if out.logits is None or out.logits.shape[1] != NUM_CLASSES:
            raise ConfigError("imagenet_fusion needs ImageNet-1k logits from the backbone.")
        w = self.fusion_weight
        if self.lineage:
            parts = self._lineage_parts(out.logits)
        else:
            parts = [np.sqrt(w) * animal_hellinger(out.logits, self.fusion_temperature)]
        n = len(out.embeddings)
        used = out.embeddings.shape[1] + sum(part.shape[1] for part in parts)
        pad = np.zeros((n, self.dim - used), dtype=np.float32)
        emb = np.concatenate([np.sqrt(1.0 - w) * l2_normalize(out.embeddings), *parts, pad], axis=1)
        return EmbedOutput(l2_normalize(emb), out.logits)

    def _lineage_parts(self, logits: np.ndarray) -> list[np.ndarray]:
        """The class coordinates (singleton ranks folded in) and the rank-group coordinates; their
        squared norms sum to w, as the class part alone does without lineage."""
        w, lam, groups = self.fusion_weight, self.lineage_weight, lineage_groups()
        ranks = len(PAYLOAD_RANKS)
        p = animal_softmax(logits, self.fusion_temperature)
        fine = np.sqrt(w * ((1.0 - lam) + lam * groups.singletons / ranks))
        coarse = np.sqrt(w * lam / ranks) * np.sqrt(p @ groups.membership)
        return [(fine * np.sqrt(p)).astype(np.float32), coarse.astype(np.float32)]
