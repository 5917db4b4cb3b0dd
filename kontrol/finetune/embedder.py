"""How a learned projection plugs in: an `Embedder` that wraps the frozen one.

`ProjectedEmbedder(base, projection)` preprocesses and runs the base embedder unchanged, then maps
its vectors through the projection. Its fingerprint is the base fingerprint plus the projection's
digest, so an index built with it is a new embedding space: the store refuses to mix it with the
base index, and switching to it (or back) means a full re-index, as for any model change.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from core.embedders.base import Embedder, EmbedOutput
from core.errors import ConfigError
from kontrol.finetune.train import Projection


class ProjectedEmbedder(Embedder):
    """The base embedder's vectors through a learned projection (same dimension)."""

    def __init__(self, base: Embedder, projection: Projection) -> None:
        if projection.base_fingerprint and projection.base_fingerprint != base.fingerprint:
            raise ConfigError(
                "The projection was trained on vectors of another model "
                f"({projection.base_fingerprint}); the configured model is {base.fingerprint}."
            )
        if projection.a.shape[0] != base.dim:
            raise ConfigError(
                f"The projection takes {projection.a.shape[0]}-d vectors; the model gives {base.dim}."
            )
        self.base = base
        self.projection = projection
        self.name = base.name
        self.dim = base.dim
        self.input_size = base.input_size

    @property
    def fingerprint(self) -> str:
        return (
            f"{self.base.fingerprint}|proj-r{self.projection.a.shape[1]}-{self.projection.digest}"
        )

    @property
    def class_names(self) -> list[str] | None:
        return self.base.class_names

    def load(self) -> None:
        self.base.load()

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.base.preprocess(image)

    def embed_batch(self, batch: np.ndarray) -> EmbedOutput:
        out = self.base.embed_batch(batch)
        return EmbedOutput(self.projection.apply(out.embeddings), out.logits)
