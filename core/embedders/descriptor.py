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
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image

from core.embedders.base import Embedder, EmbedOutput, l2_normalize
from core.errors import ConfigError
from core.imagenet import NUM_ANIMALS, NUM_CLASSES

DescriptorName = Literal["pooled", "flip", "imagenet_fusion", "flip_fusion"]
DESCRIPTORS: tuple[str, ...] = ("pooled", "flip", "imagenet_fusion", "flip_fusion")
#: Bump when a descriptor's arithmetic changes for the same name and parameters.
DESCRIPTOR_VERSION = "d1"
#: Fused vectors are zero-padded to a multiple of this (SIMD width of FAISS's fp16 scan).
DIM_MULTIPLE = 16


def animal_hellinger(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(N, 1000) ImageNet logits -> (N, 398) sqrt of the softmax over the animal classes (unit rows)."""
    z = np.asarray(logits, dtype=np.float64)[:, :NUM_ANIMALS] / temperature
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return np.sqrt(p).astype(np.float32)


class DescriptorEmbedder(Embedder):
    """An embedder whose vectors are a descriptor computed from `base`'s outputs."""

    def __init__(
        self,
        base: Embedder,
        descriptor: str,
        *,
        fusion_weight: float = 0.5,
        fusion_temperature: float = 1.0,
    ) -> None:
        if descriptor not in DESCRIPTORS:
            raise ConfigError(f"KONTROL_DESCRIPTOR: unknown descriptor {descriptor!r}.")
        if not 0.0 <= fusion_weight <= 1.0:
            raise ConfigError("KONTROL_FUSION_WEIGHT must be within [0, 1].")
        if fusion_temperature <= 0:
            raise ConfigError("KONTROL_FUSION_TEMPERATURE must be positive.")
        self.base = base
        self.descriptor = descriptor
        self.fusion_weight = float(fusion_weight)
        self.fusion_temperature = float(fusion_temperature)
        self.flips = descriptor in ("flip", "flip_fusion")
        self.fuses = descriptor in ("imagenet_fusion", "flip_fusion")

    # --- identity ---------------------------------------------------------------------------------
    @property
    def name(self) -> str:  # type: ignore[override]
        return self.base.name

    @property
    def dim(self) -> int:  # type: ignore[override]
        if not self.fuses:
            return self.base.dim
        return -(-(self.base.dim + NUM_ANIMALS) // DIM_MULTIPLE) * DIM_MULTIPLE

    @property
    def input_size(self) -> int:  # type: ignore[override]
        return self.base.input_size

    @property
    def tag(self) -> str:
        """Descriptor name and every parameter that changes its vectors."""
        if self.fuses:
            params = f"w{self.fusion_weight:g}-t{self.fusion_temperature:g}"
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
        probs = animal_hellinger(out.logits, self.fusion_temperature)
        n, used = len(probs), out.embeddings.shape[1] + NUM_ANIMALS
        pad = np.zeros((n, self.dim - used), dtype=np.float32)
        emb = np.concatenate(
            [np.sqrt(1.0 - w) * l2_normalize(out.embeddings), np.sqrt(w) * probs, pad], axis=1
        )
        return EmbedOutput(l2_normalize(emb), out.logits)
