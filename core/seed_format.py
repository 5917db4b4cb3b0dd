"""The seed's index format: `faiss_index.bin`, `image_metadata.json`, `embeddings.npy`.

This was the first version's store; it stays first-class as an exchange format: `kontrol export
--format seed` writes it, `kontrol import DIR` serves one (any backend), and an index directory in
this format is migrated into the store on the next `kontrol index` without re-embedding.

The three files (`faiss_index.bin`, `embeddings.npy`, `image_metadata.json`) must change together.
A save writes them into a private staging folder, fsyncs, then renames that folder to `.pending`:
that rename is the commit point. The files are then moved into place one by one. Whoever opens
the directory next (reader or writer, under the same lock) first finishes any interrupted move
("roll forward"), so a crash or kill at any moment yields the old index or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import IndexCorruptError, IndexMismatchError, IndexMissingError
from core.faults import crash_point
from core.index import VectorIndex, index_from_bytes

SCHEMA_VERSION = 1
INDEX_FILE = "faiss_index.bin"
EMBEDDINGS_FILE = "embeddings.npy"
METADATA_FILE = "image_metadata.json"
FILES = (EMBEDDINGS_FILE, INDEX_FILE, METADATA_FILE)
_PENDING = ".pending"
_STAGING_PREFIX = ".staging-"
_LOCK = ".lock"


@dataclass
class IndexData:
    """Everything persisted for one index generation.

    images: one dict per row, in row order: id, uuid, path (relative to the collection root),
    scientific_name, embedding_index, mtime_ns, size.
    meta: total_images, embedding_dim, model, model_fingerprint, index_type, schema_version,
    created_at, updated_at, collection_root, skipped, ...
    """

    images: list[dict[str, Any]]
    embeddings: np.ndarray
    index: VectorIndex
    meta: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def locked(index_dir: Path) -> Iterator[None]:
    """Exclusive inter-process lock on the index directory (readers and writers alike)."""
    index_dir.mkdir(parents=True, exist_ok=True)
    with open(index_dir / _LOCK, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def recover(index_dir: Path) -> None:
    """Finish an interrupted save (roll forward) and drop abandoned staging folders.

    Caller holds the lock.
    """
    pending = index_dir / _PENDING
    if pending.is_dir():
        for name in FILES:
            src = pending / name
            if src.exists():
                os.replace(src, index_dir / name)
                crash_point(f"seed:moved-{name}")
        _fsync_dir(index_dir)
        shutil.rmtree(pending, ignore_errors=True)
    for stale in index_dir.glob(_STAGING_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)


def save(index_dir: Path, data: IndexData) -> None:
    """Write a complete index generation atomically (see module docstring)."""
    index_dir = Path(index_dir)
    n = len(data.images)
    if data.embeddings.shape[0] != n or data.index.ntotal != n:
        raise ValueError(
            f"inconsistent index: {n} images, {data.embeddings.shape[0]} embeddings, "
            f"{data.index.ntotal} vectors"
        )
    meta = dict(data.meta)
    meta.update(
        schema_version=SCHEMA_VERSION,
        total_images=n,
        embedding_dim=int(data.embeddings.shape[1]),
        index_type=data.index.kind,
    )
    with locked(index_dir):
        recover(index_dir)
        staging = index_dir / f"{_STAGING_PREFIX}{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(data.embeddings, dtype=np.float32))
            _write_file(staging / EMBEDDINGS_FILE, buf.getvalue())
            _write_file(staging / INDEX_FILE, data.index.to_bytes())
            meta["files"] = {
                name: (staging / name).stat().st_size for name in (EMBEDDINGS_FILE, INDEX_FILE)
            }
            doc = {"images": data.images, "metadata": meta}
            _write_file(staging / METADATA_FILE, json.dumps(doc, ensure_ascii=False).encode())
            _fsync_dir(staging)
            crash_point("seed:staged")
            os.rename(staging, index_dir / _PENDING)  # commit point
            crash_point("seed:committed")
            _fsync_dir(index_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        recover(index_dir)
    data.meta = meta


def exists(index_dir: Path) -> bool:
    """True when a committed index is present (possibly still to be rolled forward)."""
    index_dir = Path(index_dir)
    return (index_dir / METADATA_FILE).exists() or (index_dir / _PENDING).is_dir()


def read_metadata(index_dir: Path) -> dict[str, Any]:
    """The metadata document alone (cheap; used by stats and incremental indexing)."""
    index_dir = Path(index_dir)
    with locked(index_dir):
        recover(index_dir)
        return _read_metadata_unlocked(index_dir)


def _read_metadata_unlocked(index_dir: Path) -> dict[str, Any]:
    path = index_dir / METADATA_FILE
    if not path.exists():
        raise IndexMissingError(
            f"No index in {index_dir}: the collection is not indexed yet. Run `kontrol index`."
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        images, meta = doc["images"], doc["metadata"]
        if not isinstance(images, list) or not isinstance(meta, dict):
            raise TypeError("wrong types")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise IndexCorruptError(
            f"{path} is damaged ({exc.__class__.__name__}); rebuild with `kontrol index`."
        ) from None
    return doc


def load(
    index_dir: Path,
    *,
    expected_fingerprint: str | None = None,
    expected_dim: int | None = None,
    mmap: bool = True,
) -> IndexData:
    """Load and validate an index; mismatched or damaged files raise a clear `KontrolError`."""
    index_dir = Path(index_dir)
    with locked(index_dir):
        recover(index_dir)
        doc = _read_metadata_unlocked(index_dir)
        images, meta = doc["images"], doc["metadata"]
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise IndexMismatchError(
                f"The index in {index_dir} has schema version {meta.get('schema_version')}, "
                f"this kontrol reads version {SCHEMA_VERSION}; rebuild with `kontrol index`."
            )
        if (
            expected_fingerprint is not None
            and meta.get("model_fingerprint") != expected_fingerprint
        ):
            raise IndexMismatchError(
                f"The index in {index_dir} was built with model {meta.get('model')!r} "
                f"({meta.get('model_fingerprint')}), but the configured model is "
                f"{expected_fingerprint}; rebuild with `kontrol index`."
            )
        dim = int(meta.get("embedding_dim", -1))
        if expected_dim is not None and dim != expected_dim:
            raise IndexMismatchError(
                f"The index holds {dim}-d embeddings but the model gives {expected_dim}-d; "
                "rebuild with `kontrol index`."
            )
        for name, size in (meta.get("files") or {}).items():
            path = index_dir / name
            if not path.exists() or path.stat().st_size != size:
                raise IndexCorruptError(
                    f"{path} is missing or has the wrong size; rebuild with `kontrol index`."
                )
        try:
            embeddings = np.load(index_dir / EMBEDDINGS_FILE, mmap_mode="r" if mmap else None)
            index_bytes = (index_dir / INDEX_FILE).read_bytes()
        except (OSError, ValueError) as exc:
            raise IndexCorruptError(
                f"The index files in {index_dir} cannot be read ({exc}); "
                "rebuild with `kontrol index`."
            ) from None
    index = index_from_bytes(index_bytes, str(meta.get("index_type", "flat")), dim)
    n = len(images)
    if embeddings.shape != (n, dim) or index.ntotal != n or meta.get("total_images") != n:
        raise IndexCorruptError(
            f"The index files in {index_dir} disagree ({n} images, embeddings {embeddings.shape}, "
            f"{index.ntotal} vectors); rebuild with `kontrol index`."
        )
    return IndexData(images=images, embeddings=embeddings, index=index, meta=meta)


# --- exchange with a VectorStore ---------------------------------------------------------------
MIGRATED_DIR = "migrated-seed"
IMPORT_BATCH = 4096


def import_into(index_dir: Path, store, catalog=None, *, fingerprint: str | None = None) -> dict:
    """Load a seed-format directory into `store` (re-using its vectors) and its catalogue.

    A directory without a model fingerprint (the very first seed) takes `fingerprint`. When the
    source is the store's own index directory, the old files move to `migrated-seed/` afterwards.
    """
    from core.catalog import Entry
    from core.payloads import lineage_fields
    from core.vectorstore import StoreInfo

    index_dir = Path(index_dir)
    data = load(index_dir, mmap=True)
    meta = data.meta
    fp = meta.get("model_fingerprint") or fingerprint
    if not fp:
        raise IndexMismatchError(
            f"{index_dir / METADATA_FILE} does not say which model made it; pass the model with "
            "`kontrol import DIR --model NAME`."
        )
    dim = int(data.embeddings.shape[1])
    store.initialise(
        StoreInfo(
            fingerprint=fp,
            dim=dim,
            model=str(meta.get("model", "")),
            extra={"imported_from": str(index_dir), "created_at": meta.get("created_at")},
        ),
        reset=True,
    )
    used: set[str] = set()
    entries = []
    for start in range(0, len(data.images), IMPORT_BATCH):
        rows = data.images[start : start + IMPORT_BATCH]
        ids, payloads = [], []
        for img in rows:
            id_ = str(img.get("uuid") or img.get("id"))
            if id_ in used:
                id_ = f"{id_}~{start}"
            used.add(id_)
            species = str(img.get("scientific_name") or img.get("class") or "")
            ids.append(id_)
            payloads.append(
                {"path": img["path"], "species": species, "source": "collection"}
                | lineage_fields(species)
            )
            entries.append(
                Entry(
                    path=img["path"],
                    id=id_,
                    species=species,
                    size=int(img.get("size", -1)),
                    mtime_ns=int(img.get("mtime_ns", -1)),
                    added_at=0.0,
                    source="collection",
                )
            )
        vecs = np.asarray(
            data.embeddings[[int(r.get("embedding_index", start + i)) for i, r in enumerate(rows)]],
            dtype=np.float32,
        )
        store.upsert(ids, vecs, payloads)
    if catalog is not None:
        catalog.clear()
        catalog.put(entries)
    store.maintain()
    return {"records": len(used), "dim": dim, "model": meta.get("model"), "fingerprint": fp}


def retire(index_dir: Path) -> Path:
    """Move a migrated seed index out of the way (kept, never deleted)."""
    target = Path(index_dir) / MIGRATED_DIR
    target.mkdir(exist_ok=True)
    for name in FILES:
        src = Path(index_dir) / name
        if src.exists():
            os.replace(src, target / name)
    return target


def export_from(store, out_dir: Path, *, catalog=None) -> dict:
    """Write the store's records in the seed's three-file format (an exact flat index)."""
    from core.index import create_index

    info = store.info()
    if info is None:
        raise IndexMissingError("The store is empty: nothing to export. Run `kontrol index` first.")
    stats = {}
    if catalog is not None:
        stats = {e.id: e for e in catalog.entries().values() if e.id}
    images: list[dict[str, Any]] = []
    chunks: list[np.ndarray] = []
    for batch in store.iterate():
        for id_, payload in zip(batch.ids, batch.payloads, strict=True):
            n = len(images)
            entry = stats.get(id_)
            images.append(
                {
                    "id": n,
                    "uuid": id_,
                    "path": payload.get("path", ""),
                    "scientific_name": payload.get("species", ""),
                    "embedding_index": n,
                    "mtime_ns": entry.mtime_ns if entry else -1,
                    "size": entry.size if entry else -1,
                }
            )
        chunks.append(np.asarray(batch.vectors, dtype=np.float32))
    embeddings = np.concatenate(chunks) if chunks else np.zeros((0, info.dim), np.float32)
    index = create_index("flat", info.dim)
    index.add(embeddings)
    meta = {
        "model": info.model,
        "model_fingerprint": info.fingerprint,
        "generation": info.generation,
        "created_at": info.extra.get("created_at"),
        "collection_root": info.extra.get("collection_root"),
        "species_count": len({i["scientific_name"] for i in images}),
    }
    save(Path(out_dir), IndexData(images=images, embeddings=embeddings, index=index, meta=meta))
    return {"records": len(images), "dim": info.dim, "out": str(out_dir)}
