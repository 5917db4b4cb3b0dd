"""Indexing a collection: scan -> read (decode, in threads) -> embed (batches) -> write (atomic).

Incremental: files whose (path, mtime, size) match the current index keep their embeddings; only
new or changed files are embedded and deleted files are dropped. A different model fingerprint
forces a full rebuild, so embeddings of two models are never mixed. Unreadable files are skipped
and listed, never abort the run. Each stage is timed so a slow stage is visible.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from core import store
from core.collection import CollectionFile, scan_collection
from core.embedders.base import Embedder
from core.errors import IndexCorruptError, IndexMismatchError, IndexMissingError, KontrolError
from core.imageio import load_image
from core.index import create_index
from core.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexProgress:
    """Progress of the embedding stage, passed to callbacks (the bot edits a message with it)."""

    done: int
    total: int
    images_per_s: float
    skipped: int


@dataclass
class IndexReport:
    """What an indexing run did."""

    total: int
    added: int
    removed: int
    unchanged: int
    skipped: list[tuple[str, str]]
    seconds: float
    images_per_s: float
    full_rebuild: bool = False
    reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    #: Report of the species head trained after indexing (None: too few species to train one).
    head: dict[str, Any] | None = None


ProgressCallback = Callable[[IndexProgress], None]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _previous(settings: Settings, fingerprint: str) -> tuple[store.IndexData | None, str]:
    """The current index if it can be reused, else None and why a full rebuild is needed."""
    try:
        return store.load(settings.index_dir, expected_fingerprint=fingerprint, mmap=True), ""
    except IndexMissingError:
        return None, "no index yet"
    except IndexMismatchError as exc:
        log.info("Full rebuild: %s", exc)
        return None, "model, descriptor or schema changed"
    except IndexCorruptError as exc:
        log.warning("Full rebuild: %s", exc)
        return None, "index damaged"


def _read_batches(
    files: list[CollectionFile],
    root: Path,
    settings: Settings,
    embedder: Embedder,
    workers: int,
) -> Iterator[list[tuple[CollectionFile, np.ndarray | None, str]]]:
    """Decode + preprocess in a thread pool, yielding batches in order, prefetching ahead."""

    def read_one(item: CollectionFile) -> tuple[CollectionFile, np.ndarray | None, str]:
        try:
            image = load_image(
                root / item.path,
                max_pixels=settings.max_image_pixels,
                max_bytes=settings.max_image_bytes,
                min_side=settings.min_image_side,
                target_size=embedder.input_size,
            )
            return item, embedder.preprocess(image), ""
        except KontrolError as exc:
            return item, None, str(exc)
        except Exception as exc:  # a broken file must never abort the run
            return item, None, f"unreadable ({exc.__class__.__name__}: {exc})"

    size = settings.batch_size
    chunks = [files[i : i + size] for i in range(0, len(files), size)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kontrol-read") as pool:
        pending: deque[list[Future]] = deque()
        for chunk in chunks[:2]:
            pending.append([pool.submit(read_one, f) for f in chunk])
        next_chunk = 2
        while pending:
            futures = pending.popleft()
            if next_chunk < len(chunks):
                pending.append([pool.submit(read_one, f) for f in chunks[next_chunk]])
                next_chunk += 1
            yield [f.result() for f in futures]


def embed_files(
    files: list[CollectionFile],
    root: Path,
    settings: Settings,
    embedder: Embedder,
    *,
    progress: ProgressCallback | None = None,
    show_bar: bool = False,
) -> tuple[list[CollectionFile], np.ndarray, list[tuple[str, str]], dict[str, float]]:
    """Embed files; returns the ones embedded, their (n, dim) vectors, skips and stage timings."""
    from tqdm import tqdm

    workers = max(1, min(4, (os.cpu_count() or 2)))
    kept: list[CollectionFile] = []
    vectors: list[np.ndarray] = []
    skipped: list[tuple[str, str]] = []
    embed_s = 0.0
    start = time.perf_counter()
    bar = tqdm(total=len(files), unit="img", disable=not show_bar, desc="Indexing")
    done = 0
    try:
        for batch in _read_batches(files, root, settings, embedder, workers):
            good = [(item, arr) for item, arr, _ in batch if arr is not None]
            skipped.extend((item.path, why) for item, arr, why in batch if arr is None)
            if good:
                t0 = time.perf_counter()
                out = embedder.embed_batch(np.stack([arr for _, arr in good]))
                embed_s += time.perf_counter() - t0
                kept.extend(item for item, _ in good)
                vectors.append(out.embeddings.astype(np.float32, copy=False))
            done += len(batch)
            elapsed = time.perf_counter() - start
            rate = done / elapsed if elapsed > 0 else 0.0
            bar.update(len(batch))
            bar.set_postfix(skipped=len(skipped))
            if progress is not None:
                progress(IndexProgress(done, len(files), rate, len(skipped)))
    finally:
        bar.close()
    total_s = time.perf_counter() - start
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, embedder.dim), np.float32)
    timings = {"embed_s": embed_s, "read_s": max(0.0, total_s - embed_s), "stage_s": total_s}
    return kept, matrix, skipped, timings


def build_index(
    settings: Settings,
    embedder: Embedder,
    *,
    progress: ProgressCallback | None = None,
    full: bool = False,
    show_bar: bool = False,
    save: bool = True,
) -> tuple[store.IndexData, IndexReport]:
    """(Re)index `settings.images_dir` into `settings.index_dir`; see module docstring."""
    started = time.perf_counter()
    root = Path(settings.images_dir)
    t0 = time.perf_counter()
    files = scan_collection(root)
    scan_s = time.perf_counter() - t0
    embedder.load()

    previous, reason = (
        (None, "full rebuild requested") if full else _previous(settings, embedder.fingerprint)
    )
    old_rows: dict[str, tuple[int, dict[str, Any]]] = {}
    if previous is not None:
        old_rows = {img["path"]: (i, img) for i, img in enumerate(previous.images)}

    unchanged: list[tuple[CollectionFile, int]] = []
    to_embed: list[CollectionFile] = []
    for item in files:
        hit = old_rows.get(item.path)
        if hit and hit[1].get("mtime_ns") == item.mtime_ns and hit[1].get("size") == item.size:
            unchanged.append((item, hit[0]))
        else:
            to_embed.append(item)
    current = {f.path for f in files}
    removed = sum(1 for path in old_rows if path not in current)

    if (
        previous is not None
        and not to_embed
        and removed == 0
        and previous.meta.get("index_type") == settings.index_type
    ):
        # Nothing changed: keep serving the same generation (a trained head stays valid).
        if progress is not None:
            progress(IndexProgress(0, 0, 0.0, 0))
        seconds = time.perf_counter() - started
        report = IndexReport(
            total=len(previous.images),
            added=0,
            removed=0,
            unchanged=len(unchanged),
            skipped=[],
            seconds=seconds,
            images_per_s=0.0,
            timings={"scan_s": scan_s},
        )
        return previous, report

    embedded, new_vecs, skipped, timings = embed_files(
        to_embed, root, settings, embedder, progress=progress, show_bar=show_bar
    )
    if progress is not None and not to_embed:
        progress(IndexProgress(0, 0, 0.0, len(skipped)))

    t0 = time.perf_counter()
    rows: list[tuple[CollectionFile, np.ndarray]] = []
    if unchanged:
        assert previous is not None
        old_idx = np.array([i for _, i in unchanged], dtype=np.int64)
        old_vecs = np.asarray(previous.embeddings[old_idx], dtype=np.float32)
        rows.extend(zip([f for f, _ in unchanged], old_vecs, strict=True))
    rows.extend(zip(embedded, new_vecs, strict=True))
    rows.sort(key=lambda r: r[0].path)
    dim = embedder.dim
    matrix = np.stack([v for _, v in rows]).astype(np.float32) if rows else np.zeros((0, dim))
    matrix = matrix.astype(np.float32, copy=False)
    images = [
        {
            "id": i,
            "uuid": f.uuid,
            "path": f.path,
            "scientific_name": f.species,
            "embedding_index": i,
            "mtime_ns": f.mtime_ns,
            "size": f.size,
        }
        for i, (f, _) in enumerate(rows)
    ]
    index = create_index(settings.index_type, dim)
    index.add(matrix)
    now = _now()
    meta = {
        "model": embedder.name,
        "model_fingerprint": embedder.fingerprint,
        "created_at": now,
        "generation": uuid.uuid4().hex,
        "collection_root": str(root.resolve()),
        "species_count": len({f.species for f, _ in rows}),
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
    }
    data = store.IndexData(images=images, embeddings=matrix, index=index, meta=meta)
    timings["build_index_s"] = time.perf_counter() - t0
    if save:
        t0 = time.perf_counter()
        store.save(settings.index_dir, data)
        timings["write_s"] = time.perf_counter() - t0
    timings["scan_s"] = scan_s
    seconds = time.perf_counter() - started
    report = IndexReport(
        total=len(images),
        added=len(embedded),
        removed=removed,
        unchanged=len(unchanged),
        skipped=skipped,
        seconds=seconds,
        images_per_s=len(to_embed) / timings["stage_s"] if timings.get("stage_s") else 0.0,
        full_rebuild=previous is None,
        reason=reason,
        timings=timings,
    )
    return data, report
