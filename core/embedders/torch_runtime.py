"""PyTorch eager runtime shared by every backbone: the reference the ONNX runtime is checked against.

A backbone subclass only says how to find its weights (`_resolve_weights`, cheap-ish: hashing a
file) and how to build the module (`_build_module`, expensive). The module's forward must return
`(pooled_features (N, dim), logits (N, C))`; embeddings are the L2-normalised pooled features.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from core.embedders.base import Embedder, EmbedOutput, l2_normalize
from core.embedders.preprocessing import Preprocessing

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_HASH_CACHE: dict[tuple[str, int, int], str] = {}
_HASH_LOCK = threading.Lock()


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, memoised per (path, size, mtime) so repeated loads don't re-read it."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _HASH_LOCK:
        if key in _HASH_CACHE:
            return _HASH_CACHE[key]
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    with _HASH_LOCK:
        _HASH_CACHE[key] = value
    return value


_CLASSES_FILE = Path(__file__).resolve().parents[1] / "data" / "imagenet_classes.txt"


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names, shipped as data (torchvision's list), so that reading
    them never imports torch or torchvision."""
    return _CLASSES_FILE.read_text(encoding="utf-8").splitlines()


class TorchEmbedder(Embedder):
    """Embedder running a torch module eagerly; also the source module for ONNX export."""

    dim = 1280

    def __init__(self, *, device: str = "cpu", threads: int = 0) -> None:
        self.device = device
        self.threads = threads
        self._module: torch.nn.Module | None = None
        self._weights_id: str | None = None
        self._lock = threading.Lock()

    # --- what a backbone provides ---------------------------------------------------------------
    @property
    @abstractmethod
    def preprocessing(self) -> Preprocessing:
        """The exact input recipe of this backbone."""

    @abstractmethod
    def _resolve_weights(self) -> str:
        """Locate the weights and return a short id of their content. Raises ModelUnavailableError."""

    @abstractmethod
    def _build_module(self) -> torch.nn.Module:
        """Build the module with its weights loaded (eval mode not required)."""

    # --- Embedder API ---------------------------------------------------------------------------
    @property
    def input_size(self) -> int:  # type: ignore[override]
        return self.preprocessing.crop_size

    @property
    def weights_id(self) -> str:
        """Content id of the weights (resolved lazily, once)."""
        if self._weights_id is None:
            self._weights_id = self._resolve_weights()
        return self._weights_id

    @property
    def fingerprint(self) -> str:
        return f"{self.name}|{self.weights_id}|{self.preprocessing.tag}"

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.preprocessing(image)

    def load(self) -> None:
        with self._lock:
            if self._module is not None:
                return
            _ = self.weights_id
            import torch

            if self.threads > 0:
                # Global to the process; only the torch (reference) runtime touches it.
                torch.set_num_threads(self.threads)
            module = self._build_module()
            module.eval().requires_grad_(False)
            self._module = module.to(self.device)

    @property
    def module(self) -> torch.nn.Module:
        """The loaded module (loads on first use)."""
        if self._module is None:
            self.load()
        assert self._module is not None
        return self._module

    def unload(self) -> None:
        """Drop the module (e.g. after ONNX export) to give its memory back."""
        with self._lock:
            self._module = None

    def embed_batch(self, batch: np.ndarray) -> EmbedOutput:
        import torch

        module = self.module
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            pooled, logits = module(x)
        return EmbedOutput(
            embeddings=l2_normalize(pooled.float().cpu().numpy()),
            logits=logits.float().cpu().numpy(),
        )
