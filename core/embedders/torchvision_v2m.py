"""torchvision EfficientNet V2 M (ImageNet-1k, 480 px): the design's reference backbone.

Its weights are not in any package: they come from `settings.weights_path`, torchvision's cache
(TORCH_HOME) or a download. Offline without them, loading fails with instructions, never with a
model that silently has random weights; random weights exist only behind an explicit flag for speed
benchmarks, and they get their own fingerprint so they can never mix with a real index.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torchvision.models import EfficientNet_V2_M_Weights, efficientnet_v2_m

from core.embedders.preprocessing import Preprocessing
from core.embedders.torch_runtime import TorchEmbedder, file_sha256, imagenet_categories
from core.errors import ModelUnavailableError

log = logging.getLogger(__name__)

WEIGHTS = EfficientNet_V2_M_Weights.IMAGENET1K_V1
WEIGHTS_URL: str = WEIGHTS.url
RANDOM_WEIGHTS_ID = "RANDOM-INIT-seed0-NOT-FOR-INDEXING"


class PooledAndLogits(nn.Module):
    """Adapts a torchvision EfficientNet to forward -> (avgpool output (N, 1280), logits)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.features = net.features
        self.avgpool = net.avgpool
        self.classifier = net.classifier

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = torch.flatten(self.avgpool(self.features(x)), 1)
        return pooled, self.classifier(pooled)


def v2m_preprocessing(image_size: int = 480) -> Preprocessing:
    """torchvision's V2 M eval transform: resize short side to S (bilinear), crop S, ImageNet norm."""
    return Preprocessing(crop_size=image_size, resize_size=image_size, interpolation="bilinear")


def cached_weights_path() -> Path:
    """Where torchvision keeps the downloaded file (honours TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(WEIGHTS_URL).name


def _how_to_get_weights(reason: str) -> str:
    return (
        f"EfficientNet V2 M weights are unavailable: {reason}. Either allow one download from "
        f"{WEIGHTS_URL} (torchvision stores it as {cached_weights_path()}), or download that file "
        "on a machine with internet, copy it here and set KONTROL_WEIGHTS_PATH=/path/to/"
        f"{Path(WEIGHTS_URL).name} (or put it at the cache path above). Offline alternative: "
        "KONTROL_MODEL=efficientnet_lite0."
    )


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state-dict file safely (no arbitrary unpickling); accepts a wrapped 'state_dict'."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelUnavailableError(f"Cannot read weights file {path}: {exc}") from exc
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise ModelUnavailableError(f"{path} does not hold a state dict.")
    return state


class EfficientNetV2MEmbedder(TorchEmbedder):
    """EfficientNet V2 M at 480 px; embedding = the 1280-d average-pool output."""

    name = "efficientnet_v2_m"

    def __init__(
        self,
        weights_path: Path | None = None,
        *,
        device: str = "cpu",
        threads: int = 0,
        random_weights: bool = False,
    ) -> None:
        super().__init__(device=device, threads=threads)
        self.weights_path = Path(weights_path) if weights_path else None
        self.random_weights = random_weights
        self._preprocessing = v2m_preprocessing()
        self._resolved: Path | None = None

    @property
    def preprocessing(self) -> Preprocessing:
        return self._preprocessing

    @property
    def class_names(self) -> list[str]:
        return imagenet_categories()

    def _resolve_weights(self) -> str:
        if self.random_weights:
            log.warning(
                "efficientnet_v2_m built with RANDOM weights (benchmark only): embeddings are "
                "meaningless; fingerprint %s marks them.",
                RANDOM_WEIGHTS_ID,
            )
            return RANDOM_WEIGHTS_ID
        self._resolved = self._locate_weights()
        return file_sha256(self._resolved)[:16]

    def _locate_weights(self) -> Path:
        if self.weights_path is not None:
            if not self.weights_path.is_file():
                raise ModelUnavailableError(
                    _how_to_get_weights(f"KONTROL_WEIGHTS_PATH={self.weights_path} does not exist")
                )
            return self.weights_path
        cached = cached_weights_path()
        if cached.is_file():
            return cached
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            # hash_prefix: torchvision names the file after the first digits of its SHA-256.
            prefix = Path(WEIGHTS_URL).stem.rsplit("-", 1)[-1]
            torch.hub.download_url_to_file(WEIGHTS_URL, str(cached), hash_prefix=prefix)
        except Exception as exc:
            raise ModelUnavailableError(
                _how_to_get_weights(f"download failed ({type(exc).__name__}: {exc})")
            ) from exc
        return cached

    def _build_module(self) -> nn.Module:
        if self.random_weights:
            torch.manual_seed(0)
            return PooledAndLogits(efficientnet_v2_m(weights=None))
        assert self._resolved is not None
        net = efficientnet_v2_m(weights=None)
        try:
            net.load_state_dict(load_state_dict_file(self._resolved), strict=True)
        except RuntimeError as exc:
            raise ModelUnavailableError(
                f"{self._resolved} is not an ImageNet efficientnet_v2_m state dict: {exc}"
            ) from exc
        return PooledAndLogits(net)
