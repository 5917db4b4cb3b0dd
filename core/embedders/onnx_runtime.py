"""ONNX Runtime backend: the same network as the torch reference, several times faster on CPU.

The torch module is exported once per fingerprint to `<models_dir>/onnx/<name>.onnx`. The file is
written to a temporary name and renamed into place, and a sidecar records its SHA-256, so a crash,
a full disk or a truncated copy is detected at the next start and the model is re-exported instead
of loading garbage. The fingerprint is the torch embedder's: both runtimes produce one space.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from core.embedders.base import Embedder, EmbedOutput, l2_normalize
from core.embedders.torch_runtime import TorchEmbedder
from core.errors import ModelUnavailableError

log = logging.getLogger(__name__)

OPSET = 17
#: Bump when the export itself changes (names, opset, wrapper), to invalidate cached files.
EXPORT_VERSION = "e1"
INPUT_NAME = "images"
OUTPUT_NAMES = ("pooled", "logits")
_FILE_MODE = (
    0o644  # mkstemp creates 0600; the cache is shared with e.g. a bot running as another user
)


def cache_file_name(fingerprint: str) -> str:
    """Filesystem-safe, collision-resistant name for a fingerprint's export."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", fingerprint).strip("_")[:120]
    digest = hashlib.sha256(f"{fingerprint}|{EXPORT_VERSION}|{OPSET}".encode()).hexdigest()[:10]
    return f"{safe}-{EXPORT_VERSION}-op{OPSET}-{digest}.onnx"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_onnx(source: TorchEmbedder, path: Path) -> None:
    """Export `source`'s module to `path` atomically, then record its checksum beside it."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    module = source.module
    device = next(module.parameters()).device
    dummy = torch.zeros(1, 3, source.input_size, source.input_size, device=device)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter is chatty (constant-folding notes); the result is checked
            # against torch in the tests, so its warnings only add noise to logs.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (dummy,),
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in OUTPUT_NAMES}},
                do_constant_folding=True,
            )
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        checksum = _sha256(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    meta = {"sha256": checksum, "fingerprint": source.fingerprint, "opset": OPSET}
    _atomic_write_text(_sidecar(path), json.dumps(meta, indent=2))


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def cache_is_valid(path: Path, fingerprint: str) -> bool:
    """True if `path` is a complete export of `fingerprint` (checksum matches its sidecar)."""
    try:
        meta = json.loads(_sidecar(path).read_text(encoding="utf-8"))
        return meta.get("fingerprint") == fingerprint and meta.get("sha256") == _sha256(path)
    except (OSError, ValueError, AttributeError):
        return False


class OnnxEmbedder(Embedder):
    """Runs a torch embedder's network in ONNX Runtime; same preprocessing and fingerprint."""

    def __init__(
        self, source: TorchEmbedder, models_dir: Path, *, threads: int = 0, device: str = "cpu"
    ) -> None:
        self.source = source
        self.models_dir = Path(models_dir)
        self.threads = threads
        self.device = device
        self._session: ort.InferenceSession | None = None
        self._lock = threading.Lock()
        #: True if the last load() had to export (cache miss); for tests and logs.
        self.exported = False

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.source.name

    @property
    def dim(self) -> int:  # type: ignore[override]
        return self.source.dim

    @property
    def input_size(self) -> int:  # type: ignore[override]
        return self.source.input_size

    @property
    def fingerprint(self) -> str:
        return self.source.fingerprint

    @property
    def class_names(self) -> list[str] | None:
        return self.source.class_names

    @property
    def onnx_path(self) -> Path:
        """Cache file for this fingerprint (resolving the fingerprint may hash the weights)."""
        return self.models_dir / "onnx" / cache_file_name(self.fingerprint)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.source.preprocess(image)

    def _providers(self) -> list[str]:
        available = ort.get_available_providers()
        if self.device.startswith("cuda") and "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def _open(self, path: Path) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads  # 0 = ORT picks (all physical cores)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(path), sess_options=opts, providers=self._providers())

    def load(self) -> None:
        with self._lock:
            if self._session is not None:
                return
            fingerprint = self.fingerprint  # raises ModelUnavailableError if weights are missing
            path = self.onnx_path
            self.exported = False
            if cache_is_valid(path, fingerprint):
                try:
                    self._session = self._open(path)
                    return
                except Exception as exc:  # checksum fine but ORT refuses: re-export below
                    log.warning("Cached ONNX model %s is unusable (%s); re-exporting.", path, exc)
            elif path.exists():
                log.warning("Cached ONNX model %s is incomplete or stale; re-exporting.", path)
            log.info("Exporting %s to ONNX at %s (one-time).", fingerprint, path)
            try:
                export_onnx(self.source, path)
            except ModelUnavailableError:
                raise
            except Exception as exc:
                raise ModelUnavailableError(
                    f"Exporting {self.name} to ONNX failed ({exc}); try KONTROL_RUNTIME=torch."
                ) from exc
            finally:
                self.source.unload()
            self.exported = True
            self._session = self._open(path)

    def embed_batch(self, batch: np.ndarray) -> EmbedOutput:
        if self._session is None:
            self.load()
        assert self._session is not None
        x = np.ascontiguousarray(batch, dtype=np.float32)
        # InferenceSession.run is thread-safe; no lock needed around it.
        pooled, logits = self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        return EmbedOutput(
            embeddings=l2_normalize(pooled), logits=np.asarray(logits, dtype=np.float32)
        )
