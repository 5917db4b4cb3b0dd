"""The EfficientNet-Lite network itself (torch); imported only when the torch module is built,
so serving on ONNX Runtime never imports torch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from core.embedders.efficientnet_lite import _BASE_STAGES, _BN, _HEAD, _STEM, LiteVariant


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
