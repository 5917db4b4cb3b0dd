"""The embedder interface: load once, then turn batches of images into L2-normalised vectors.

Model logic (architecture, weights, preprocessing) lives in one module per backbone; the runtime
(PyTorch eager or ONNX Runtime) is chosen separately, so tests can compare the two on the same input.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class EmbedOutput:
    """One batch's result.

    embeddings: (N, dim) float32, each row L2-normalised (cosine = dot product).
    logits: (N, C) float32 raw classifier outputs of the backbone's own head, or None.
    """

    embeddings: np.ndarray
    logits: np.ndarray | None = None


class Embedder(ABC):
    """Life-cycle: construct (cheap, no I/O) -> `load()` (weights, sessions) -> `embed_*` calls."""

    #: Short model name as in settings (`efficientnet_lite0`, ...).
    name: str
    #: Embedding width (1280 for every backbone we ship).
    dim: int
    #: Square input side in pixels the network is fed.
    input_size: int

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """Identity of the embedding space: model name + weights hash + preprocessing version.

        Stored in the index; an index whose fingerprint differs is rebuilt, never mixed.
        """

    @property
    def class_names(self) -> list[str] | None:
        """Names of the head's classes (ImageNet categories or a checkpoint's species), if any."""
        return None

    @abstractmethod
    def load(self) -> None:
        """Load weights / create inference sessions. Idempotent. Raises ModelUnavailableError."""

    @abstractmethod
    def preprocess(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> (3, S, S) float32 array, exactly as the network expects."""

    @abstractmethod
    def embed_batch(self, batch: np.ndarray) -> EmbedOutput:
        """(N, 3, S, S) float32 preprocessed batch -> EmbedOutput. Thread-safe after load()."""

    def embed_images(self, images: list[Image.Image]) -> EmbedOutput:
        """Convenience: preprocess then embed a list of RGB images as one batch."""
        if not images:
            return EmbedOutput(np.zeros((0, self.dim), dtype=np.float32), None)
        batch = np.stack([self.preprocess(img) for img in images]).astype(np.float32, copy=False)
        return self.embed_batch(batch)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation in float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps)
