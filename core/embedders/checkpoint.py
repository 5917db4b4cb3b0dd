"""A fine-tuned species classifier checkpoint used as the backbone.

Expected file (as written by the training code):
`{'params': {'model': {'name': 'efficientnet_v2_m' | 'efficientnet_lite0' | 'efficientnet_lite2',
...}, ...}, 'model_state_dict': {...}, 'class_names': [...]}`; the class names may instead live in a
sibling `class_names.json`. The penultimate layer gives the embedding and the checkpoint's own head
the logits over its species, so one forward pass serves both search and classification.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import efficientnet_v2_m

from core.embedders.efficientnet_lite import VARIANTS, lite_preprocessing
from core.embedders.efficientnet_lite_net import EfficientNetLite
from core.embedders.preprocessing import Preprocessing
from core.embedders.torch_runtime import TorchEmbedder, file_sha256
from core.embedders.torchvision_v2m import PooledAndLogits, v2m_preprocessing
from core.errors import ConfigError, ModelUnavailableError

SUPPORTED = ("efficientnet_v2_m", *VARIANTS)
_HEAD_KEYS = ("classifier.1.weight", "_fc.weight")


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True: a checkpoint must never be able to run code."""
    if not path.is_file():
        raise ModelUnavailableError(
            f"No checkpoint at {path}. Put the fine-tuned model there or set "
            "KONTROL_CHECKPOINT_PATH (or choose another KONTROL_MODEL)."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelUnavailableError(
            f"Checkpoint {path} holds objects other than tensors and plain values, which are not "
            f"loaded for safety; re-save it with plain types ({exc})."
        ) from exc
    except Exception as exc:
        raise ModelUnavailableError(f"Cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model_state_dict"), dict):
        raise ConfigError(f"Checkpoint {path} has no 'model_state_dict'.")
    return ckpt


def _class_names(ckpt: dict[str, Any], path: Path) -> list[str]:
    names: Any = ckpt.get("class_names")
    if names is None:
        sibling = path.with_name("class_names.json")
        if not sibling.is_file():
            raise ConfigError(
                f"Checkpoint {path} has no 'class_names' and there is no {sibling} next to it."
            )
        try:
            names = json.loads(sibling.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"Cannot read {sibling}: {exc}") from exc
        if isinstance(names, dict) and "class_names" in names:
            names = names["class_names"]
        if isinstance(names, dict):  # {"0": "Canis lupus", ...}
            try:
                names = [names[k] for k in sorted(names, key=int)]
            except ValueError as exc:
                raise ConfigError(f"{sibling}: keys must be class indices.") from exc
    if (
        not isinstance(names, list | tuple)
        or not names
        or not all(isinstance(n, str) for n in names)
    ):
        raise ConfigError(f"Class names of checkpoint {path} must be a non-empty list of strings.")
    return list(names)


def _arch(ckpt: dict[str, Any], path: Path) -> tuple[str, int | None]:
    model = (ckpt.get("params") or {}).get("model") or {}
    name = model.get("name") if isinstance(model, dict) else None
    if name not in SUPPORTED:
        raise ConfigError(
            f"Checkpoint {path}: unknown architecture {name!r} in params.model.name; "
            f"supported: {', '.join(SUPPORTED)}."
        )
    size = model.get("image_size") or model.get("input_size")
    return name, int(size) if size else None


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a DataParallel / wrapper `module.` prefix if every key has it."""
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


class CheckpointEmbedder(TorchEmbedder):
    """Fine-tuned classifier: embeddings from its penultimate layer, logits over its species."""

    name = "checkpoint"

    def __init__(self, path: Path, *, device: str = "cpu", threads: int = 0) -> None:
        super().__init__(device=device, threads=threads)
        self.path = Path(path)
        self._state: dict[str, torch.Tensor] | None = None
        self._names: list[str] | None = None
        self._arch: str | None = None
        self._size: int | None = None

    def _read(self) -> dict[str, torch.Tensor]:
        """Read and validate the file; keeps its metadata, returns the state dict."""
        ckpt = _read_checkpoint(self.path)
        arch, size = _arch(ckpt, self.path)
        names = _class_names(ckpt, self.path)
        state = _strip_prefix(ckpt["model_state_dict"])
        head = next((state[k] for k in _HEAD_KEYS if k in state), None)
        if head is None:
            raise ConfigError(f"Checkpoint {self.path}: no classifier head weights found.")
        if head.shape[0] != len(names):
            raise ConfigError(
                f"Checkpoint {self.path}: the head has {head.shape[0]} outputs but there are "
                f"{len(names)} class names."
            )
        self._arch, self._size, self._names = arch, size, names
        return state

    def _ensure_read(self) -> None:
        if self._arch is None:
            self._state = self._read()

    @property
    def architecture(self) -> str:
        self._ensure_read()
        assert self._arch is not None
        return self._arch

    @property
    def preprocessing(self) -> Preprocessing:
        arch = self.architecture
        if arch == "efficientnet_v2_m":
            return v2m_preprocessing(self._size or 480)
        return lite_preprocessing(VARIANTS[arch], self._size)

    @property
    def class_names(self) -> list[str]:
        self._ensure_read()
        assert self._names is not None
        return self._names

    @property
    def fingerprint(self) -> str:
        return f"{self.name}:{self.architecture}|{self.weights_id}|{self.preprocessing.tag}"

    def _resolve_weights(self) -> str:
        # The file holds the head and class names too: its hash pins the whole space.
        self._ensure_read()
        return file_sha256(self.path)[:16]

    def _build_module(self) -> nn.Module:
        state = self._state if self._state is not None else self._read()
        self._state = None  # the module owns the tensors now; don't keep a second copy
        n = len(self.class_names)
        arch = self.architecture
        if arch == "efficientnet_v2_m":
            net: nn.Module = efficientnet_v2_m(weights=None, num_classes=n)
        else:
            net = EfficientNetLite(VARIANTS[arch], num_classes=n, image_size=self._size)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ConfigError(
                f"Checkpoint {self.path} does not match architecture {arch}: {exc}"
            ) from exc
        return PooledAndLogits(net) if arch == "efficientnet_v2_m" else net
