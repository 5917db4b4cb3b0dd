"""Image embedders (one module per backbone) and the factory that picks one from settings.

Backbone (`settings.model`) and runtime (`settings.runtime`) are independent: every backbone is a
torch module, and the ONNX runtime wraps it, keeping its fingerprint (one embedding space).
Torch and ONNX Runtime are imported lazily, so `import core.embedders` (e.g. for `base`) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.embedders.base import Embedder, EmbedOutput, l2_normalize
from core.embedders.preprocessing import PREPROCESS_VERSION
from core.errors import ConfigError
from core.settings import Settings

if TYPE_CHECKING:
    from core.embedders.torch_runtime import TorchEmbedder

__all__ = [
    "PREPROCESS_VERSION",
    "EmbedOutput",
    "Embedder",
    "create_backbone",
    "create_embedder",
    "l2_normalize",
]


def create_backbone(settings: Settings, *, random_weights: bool = False) -> TorchEmbedder:
    """The torch embedder for `settings.model` (not loaded).

    `random_weights` (efficientnet_v2_m only) is for speed benchmarks; it is never read from
    settings, so a deployment cannot end up indexing with an untrained network.
    """
    kw = {"device": settings.device, "threads": settings.threads}
    model = settings.model
    if random_weights and model != "efficientnet_v2_m":
        raise ConfigError("random_weights is only supported for efficientnet_v2_m benchmarks.")
    if model in ("efficientnet_lite0", "efficientnet_lite2"):
        from core.embedders.efficientnet_lite import EfficientNetLiteEmbedder

        return EfficientNetLiteEmbedder(model, **kw)
    if model == "efficientnet_v2_m":
        from core.embedders.torchvision_v2m import EfficientNetV2MEmbedder

        return EfficientNetV2MEmbedder(settings.weights_path, random_weights=random_weights, **kw)
    if model == "checkpoint":
        from core.embedders.checkpoint import CheckpointEmbedder

        return CheckpointEmbedder(settings.checkpoint_path, **kw)
    raise ConfigError(f"KONTROL_MODEL: unknown model {model!r}.")


def create_embedder(settings: Settings, *, random_weights: bool = False) -> Embedder:
    """Embedder for `settings.model` on `settings.runtime` (onnx default, torch reference),
    wrapped in `settings.descriptor` unless that is `pooled`.

    Cheap: nothing is read until `load()`.
    """
    backbone = create_backbone(settings, random_weights=random_weights)
    embedder: Embedder
    if settings.runtime == "torch":
        embedder = backbone
    elif settings.runtime == "onnx":
        from core.embedders.onnx_runtime import OnnxEmbedder

        embedder = OnnxEmbedder(
            backbone, settings.models_dir, threads=settings.threads, device=settings.device
        )
    else:
        raise ConfigError(f"KONTROL_RUNTIME: unknown runtime {settings.runtime!r}.")
    descriptor = settings.descriptor
    if settings.model == "checkpoint" and descriptor.endswith("fusion"):
        # A species checkpoint has no ImageNet head to fuse: keep the rest of the descriptor.
        descriptor = "flip" if descriptor == "flip_fusion" else "pooled"
    if descriptor == "pooled":
        return embedder  # the backbone's own space: existing indexes stay valid
    from core.embedders.descriptor import DescriptorEmbedder

    return DescriptorEmbedder(
        embedder,
        descriptor,
        fusion_weight=settings.fusion_weight,
        fusion_temperature=settings.fusion_temperature,
        lineage_weight=settings.lineage_weight,
    )
