"""Indexing a collection: scan -> diff with the catalogue -> read (threads) -> embed -> upsert.

Incremental: a file whose (path, size, mtime) the catalogue already holds is not touched; only new
or changed files are embedded, in chunks that are committed to the store as they finish (a killed
run keeps what it did), and deleted files are removed by id. Nothing is rewritten: the store
appends. A different model fingerprint forces a full rebuild, so embeddings of two models are never
mixed. Unreadable files are skipped, listed, and remembered, so they are not retried (and nothing is
re-written) on every run until they change. An empty or missing collection never empties an index
without `allow_empty`. Each stage is timed so a slow stage is visible.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from core import seed_format
from core.catalog import Catalog, Entry
from core.collection import CollectionFile, scan_collection_report
from core.embedders.base import Embedder
from core.errors import IndexCorruptError, KontrolError
from core.imageio import load_image
from core.payloads import collection_payload
from core.settings import Settings
from core.taxonomy import load_taxonomy_csv
from core.vectorstore import StoreInfo, VectorStore, open_store

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
    #: Store housekeeping done after the writes (compaction, ANN rebuild), if any.
    maintenance: dict[str, Any] = field(default_factory=dict)
    #: Records found damaged (checksum, NaN, zero vector) and re-embedded by this run.
    repaired: int = 0
    #: True when the run changed the store (a new generation is served).
    changed: bool = False


ProgressCallback = Callable[[IndexProgress], None]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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


@dataclass
class EmbeddedChunk:
    """A chunk of files that went through read + embed: the embedded ones and the skipped."""

    files: list[CollectionFile]
    vectors: np.ndarray
    skipped: list[tuple[CollectionFile, str]]


def embed_stream(
    files: list[CollectionFile],
    root: Path,
    settings: Settings,
    embedder: Embedder,
    *,
    chunk: int = 1024,
    progress: ProgressCallback | None = None,
    show_bar: bool = False,
    timings: dict[str, float] | None = None,
) -> Iterator[EmbeddedChunk]:
    """Read and embed files, yielding chunks of about `chunk` files (bounded memory)."""
    from tqdm import tqdm

    workers = max(1, min(4, (os.cpu_count() or 2)))
    timings = timings if timings is not None else {}
    embed_s = 0.0
    start = time.perf_counter()
    bar = tqdm(total=len(files), unit="img", disable=not show_bar, desc="Indexing")
    done, n_skipped = 0, 0
    kept: list[CollectionFile] = []
    vectors: list[np.ndarray] = []
    skipped: list[tuple[CollectionFile, str]] = []
    try:
        for batch in _read_batches(files, root, settings, embedder, workers):
            good = [(item, arr) for item, arr, _ in batch if arr is not None]
            bad = [(item, why) for item, arr, why in batch if arr is None]
            skipped.extend(bad)
            n_skipped += len(bad)
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
            bar.set_postfix(skipped=n_skipped)
            if progress is not None:
                progress(IndexProgress(done, len(files), rate, n_skipped))
            if len(kept) + len(skipped) >= chunk:
                yield EmbeddedChunk(kept, _stack(vectors, embedder.dim), skipped)
                kept, vectors, skipped = [], [], []
        if kept or skipped:
            yield EmbeddedChunk(kept, _stack(vectors, embedder.dim), skipped)
    finally:
        bar.close()
        total_s = time.perf_counter() - start
        timings.update(embed_s=embed_s, read_s=max(0.0, total_s - embed_s), stage_s=total_s)


def _stack(vectors: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)


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
    timings: dict[str, float] = {}
    kept: list[CollectionFile] = []
    vectors: list[np.ndarray] = []
    skipped: list[tuple[str, str]] = []
    for part in embed_stream(
        files, root, settings, embedder, progress=progress, show_bar=show_bar, timings=timings
    ):
        kept.extend(part.files)
        vectors.append(part.vectors)
        skipped.extend((f.path, why) for f, why in part.skipped)
    return kept, _stack(vectors, embedder.dim), skipped, timings


class EmptyCollectionError(KontrolError):
    """The collection folder holds no photos while the index does (an unmounted volume?)."""


#: Stores up to this size are checked row by row (checksums) on every incremental run.
VERIFY_MAX = 100_000


def build_index(
    settings: Settings,
    embedder: Embedder,
    *,
    store: VectorStore | None = None,
    progress: ProgressCallback | None = None,
    full: bool = False,
    show_bar: bool = False,
    allow_empty: bool = False,
    verify: bool | None = None,
) -> IndexReport:
    """(Re)index `settings.images_dir` into the configured store; see the module docstring."""
    started = time.perf_counter()
    root = Path(settings.images_dir)
    t0 = time.perf_counter()
    scan = scan_collection_report(root)
    files = scan.files
    timings: dict[str, float] = {"scan_s": time.perf_counter() - t0}
    embedder.load()
    own = store is None
    store = store if store is not None else open_store(settings)
    catalog = Catalog(settings.index_dir)
    try:
        with store.writer():
            return _index_locked(
                settings,
                embedder,
                store,
                catalog,
                files,
                root,
                timings,
                started,
                scan_skipped=[(e.path, e.reason) for e in scan.skipped],
                progress=progress,
                full=full,
                show_bar=show_bar,
                allow_empty=allow_empty,
                verify=verify,
            )
    finally:
        catalog.close()
        if own:
            store.close()


def _index_locked(
    settings: Settings,
    embedder: Embedder,
    store: VectorStore,
    catalog: Catalog,
    files: list[CollectionFile],
    root: Path,
    timings: dict[str, float],
    started: float,
    *,
    scan_skipped: list[tuple[str, str]],
    progress: ProgressCallback | None,
    full: bool,
    show_bar: bool,
    allow_empty: bool,
    verify: bool | None,
) -> IndexReport:
    reason = _rebuild_reason(settings, embedder, store, catalog, full)
    if reason:
        log.info("Full rebuild: %s", reason)
        store.initialise(_info(embedder, root), reset=True)
        catalog.clear()
    known = catalog.entries()
    if not files and not allow_empty and any(e.id for e in known.values()):
        raise EmptyCollectionError(
            f"The collection folder {root} has no photos, but the index holds "
            f"{sum(1 for e in known.values() if e.id)}. Is the volume mounted? Refusing to empty "
            "the index; run `kontrol index --allow-empty` if you really removed every photo."
        )
    damaged = _damaged_ids(store, verify)
    if damaged:
        log.warning("Re-embedding %d damaged record(s): %s", len(damaged), sorted(damaged)[:10])
    missing = _missing_from_store(store, catalog) if not reason else set()

    current = {f.path for f in files}
    removed = [e for p, e in known.items() if p not in current]
    to_embed: list[CollectionFile] = []
    unchanged = 0
    skipped: list[tuple[str, str]] = list(scan_skipped)
    for f in files:
        e = known.get(f.path)
        if e is not None and (e.size, e.mtime_ns, e.species) == (f.size, f.mtime_ns, f.species):
            if e.error:
                skipped.append((f.path, e.error))
                continue
            if e.id not in damaged and e.id not in missing:
                unchanged += 1
                continue
        to_embed.append(f)

    changed = False
    if removed:
        store.delete([e.id for e in removed if e.id])
        catalog.remove([e.path for e in removed])
        changed = True

    used = {e.id: e.path for e in known.values() if e.id and e.path in current}
    overrides = load_taxonomy_csv(root)
    added = 0
    for part in embed_stream(
        to_embed, root, settings, embedder, progress=progress, show_bar=show_bar, timings=timings
    ):
        entries = []
        ids, payloads = [], []
        for f in part.files:
            prior = known.get(f.path)
            id_ = prior.id if prior is not None and prior.id else _new_id(f, used)
            used[id_] = f.path
            payload = collection_payload(f, root, overrides)
            ids.append(id_)
            payloads.append(payload)
            entries.append(_entry(f, id_, payload))
        if ids:
            store.upsert(ids, part.vectors, payloads)
            added += len(ids)
            changed = True
        for f, why in part.skipped:
            prior = known.get(f.path)
            if prior is not None and prior.id:
                store.delete([prior.id])  # the file changed into something unreadable
                changed = True
            entries.append(_entry(f, None, {}, error=why))
            skipped.append((f.path, why))
        catalog.put(entries)
    if progress is not None and not to_embed:
        progress(IndexProgress(0, 0, 0.0, len(skipped)))

    maintenance: dict[str, Any] = {}
    if changed or reason:
        t0 = time.perf_counter()
        maintenance = store.maintain()
        timings["maintain_s"] = time.perf_counter() - t0
        species = store.values("species")
        store.set_extra(
            {
                "collection_root": str(root.resolve()),
                "updated_at": _now(),
                "species_count": len(species),
                "skipped": [{"path": p, "reason": r} for p, r in skipped[:1000]],
            }
        )
    total = store.count()
    seconds = time.perf_counter() - started
    return IndexReport(
        total=total,
        added=added,
        removed=len(removed),
        unchanged=unchanged,
        skipped=skipped,
        seconds=seconds,
        images_per_s=len(to_embed) / timings["stage_s"] if timings.get("stage_s") else 0.0,
        full_rebuild=bool(reason),
        reason=reason,
        timings=timings,
        maintenance=maintenance,
        repaired=len(damaged | missing),
        changed=changed or bool(reason),
    )


def _info(embedder: Embedder, root: Path) -> StoreInfo:
    return StoreInfo(
        fingerprint=embedder.fingerprint,
        dim=embedder.dim,
        model=embedder.name,
        extra={"created_at": _now(), "collection_root": str(root.resolve())},
    )


def _rebuild_reason(
    settings: Settings, embedder: Embedder, store: VectorStore, catalog: Catalog, full: bool
) -> str:
    """Why the store must be rebuilt from scratch ("" when it can be updated in place)."""
    if full:
        return "full rebuild requested"
    info = store.info()
    if info is None and seed_format.exists(settings.index_dir):
        imported = seed_format.import_into(settings.index_dir, store, catalog)
        log.info("Migrated the previous index format: %s", imported)
        log.info("The old files were kept in %s.", seed_format.retire(settings.index_dir))
        info = store.info()
    if info is None:
        return "no index yet"
    try:
        store.check(embedder.fingerprint, embedder.dim)
    except KontrolError:
        return "model, descriptor or schema changed"
    return ""


def _damaged_ids(store: VectorStore, verify: bool | None) -> set[str]:
    """Ids whose stored vector fails its checksum (stores that keep checksums)."""
    check = getattr(store, "verify", None)
    if check is None or verify is False:
        return set()
    if verify is None and store.count() > VERIFY_MAX:
        return set()
    try:
        return set(check()["bad_ids"])
    except IndexCorruptError as exc:
        log.warning("Verification failed: %s", exc)
        return set()


def _missing_from_store(store: VectorStore, catalog: Catalog) -> set[str]:
    """Catalogued ids the store lacks (a run killed between the store and catalogue commits, or
    a damaged store); they are re-embedded."""
    if store.count() >= catalog.count():
        return set()
    present = {i for batch in store.iterate(vectors=False) for i in batch.ids}
    return catalog.ids() - present


def _new_id(f: CollectionFile, used: dict[str, str]) -> str:
    """The file's uuid (its stem); a stem already used by another file gets a path suffix."""
    if f.uuid not in used or used[f.uuid] == f.path:
        return f.uuid
    import hashlib

    return f"{f.uuid}~{hashlib.sha1(f.path.encode()).hexdigest()[:8]}"


def _entry(f: CollectionFile, id_: str | None, payload: dict[str, Any], error: str | None = None):
    return Entry(
        path=f.path,
        id=id_,
        species=f.species,
        size=f.size,
        mtime_ns=f.mtime_ns,
        added_at=time.time(),
        source=payload.get("source"),
        license=payload.get("license"),
        author=payload.get("author"),
        error=error,
    )
