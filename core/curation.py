"""Changing the collection one photo at a time: add, remove (to the trash) and restore.

A curator's change touches one file, so it is indexed on its own - embed one photo, upsert one
record, write one catalogue row - instead of scanning the whole collection. The photo is embedded
exactly as `build_index` would (same reader, same preprocessing), so a later incremental re-index
sees the file as unchanged and does not touch it.

Files are written atomically (a hidden temporary name, then a rename) and a failure before the
store commit removes what was written, so a failed add leaves nothing half-written. Removed photos
are never deleted: they move under `<root>/.trash/` (hidden, so scans skip it) and can be restored.
All functions block (file I/O, embedding): async callers use `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from core.catalog import Catalog
from core.collection import CollectionFile, species_from_folder
from core.errors import ImageError, IndexBusyError, KontrolError
from core.indexer import _entry, embed_files
from core.payloads import collection_payload
from core.taxonomy import load_taxonomy_csv
from core.vectorstore import open_store

if TYPE_CHECKING:
    from core.engine import Engine

TRASH = ".trash"
#: Longest species name accepted (real binomials/trinomials are far shorter).
MAX_NAME = 80
_NAME = re.compile(r"^[A-Z][a-z-]+(?: [a-z][a-z-]*\.?){1,3}$")


class CurationError(KontrolError):
    """A curator's change cannot be made; the message says why."""


class PhotoGoneError(CurationError):
    """The photo is no longer in the index (removed, or gone in a re-index)."""


def clean_species_name(name: str) -> str | None:
    """`canis  LUPUS` / `Canis_lupus` -> `Canis lupus`; None when it is not a plausible name.

    Only a capitalised genus and one to three lower-case epithets (letters, hyphens) pass, so a
    name can never carry markup, a path separator or a dot-folder into the collection.
    """
    words = species_from_folder(name or "").split()
    if not words or len(" ".join(words)) > MAX_NAME:
        return None
    candidate = " ".join([words[0].capitalize(), *(w.lower() for w in words[1:])])
    return candidate if _NAME.match(candidate) else None


@dataclass(frozen=True)
class Added:
    uuid: str
    path: str  # relative to the collection root
    species: str
    count: int  # photos of that species in the index now


@dataclass(frozen=True)
class Removed:
    uuid: str
    path: str  # where it was, relative to the collection root
    trash_path: str  # where it is now, relative to the collection root
    species: str
    count: int  # photos of that species left in the index


@contextlib.contextmanager
def _exclusive(engine: Engine) -> Iterator[None]:
    """No re-index of this engine while a curator's change runs (and vice versa)."""
    lock = engine._reindex_lock
    if not lock.acquire(blocking=False):
        raise IndexBusyError("A re-index is running; try again when it has finished.")
    try:
        yield
    finally:
        lock.release()


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _collection_file(root: Path, rel: str, species: str) -> CollectionFile:
    stat = (root / rel).stat()
    return CollectionFile(
        path=rel,
        species=species,
        uuid=Path(rel).stem,
        mtime_ns=stat.st_mtime_ns,
        size=stat.st_size,
    )


def _index_one(engine: Engine, rel: str, species: str) -> None:
    """Embed one collection file and commit its record and catalogue row (no scan)."""
    settings, root = engine.settings, Path(engine.settings.images_dir)
    embedder = engine._ensure_embedder()
    f = _collection_file(root, rel, species)
    kept, vectors, skipped, _ = embed_files([f], root, settings, embedder)
    if not kept:
        raise ImageError(skipped[0][1] if skipped else "the photo could not be read")
    payload = collection_payload(f, root, load_taxonomy_csv(root))
    store = open_store(settings)
    catalog = Catalog(settings.index_dir)
    try:
        with store.writer():
            store.check(embedder.fingerprint, embedder.dim)
            catalog.put([_entry(f, f.uuid, payload)])
            try:
                store.upsert([f.uuid], vectors, [payload])
            except BaseException:
                catalog.remove([f.path])  # the file goes too: a stale row would be harmless
                raise
            store.set_extra({"updated_at": _now()})
    finally:
        catalog.close()
        store.close()
    engine.store.refresh()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _count(engine: Engine, species: str) -> int:
    return int(engine.species_counts().get(species, 0))


def add_photo(
    engine: Engine, image: Image.Image, species: str, sidecar: dict[str, Any] | None = None
) -> Added:
    """Save `image` as `<root>/<Species_name>/<uuid4>.jpg` (re-encoded JPEG: no EXIF or other
    metadata survives) with a `<uuid4>.json` sidecar, and index it at once."""
    name = clean_species_name(species)
    if name is None:
        raise CurationError(f"Not a valid species name: {species[:MAX_NAME]!r}")
    root = Path(engine.settings.images_dir)
    folder = root / name.replace(" ", "_")
    uid = str(uuidlib.uuid4())
    photo, side = folder / f"{uid}.jpg", folder / f"{uid}.json"
    rgb = image.convert("RGB")
    with _exclusive(engine):
        folder.mkdir(parents=True, exist_ok=True)
        try:
            text = json.dumps(sidecar or {}, ensure_ascii=False, indent=1, sort_keys=True)
            _write_atomic(side, lambda p: p.write_text(text, encoding="utf-8"))
            _write_atomic(photo, lambda p: rgb.save(p, "JPEG", quality=92))
            _index_one(engine, photo.relative_to(root).as_posix(), name)
        except BaseException:
            photo.unlink(missing_ok=True)
            side.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if we created it and it is still empty
            raise
        return Added(uid, photo.relative_to(root).as_posix(), name, _count(engine, name))


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


def _sidecar_of(path: Path) -> Path:
    return path.with_suffix(".json")


def remove_photo(engine: Engine, photo_id: str) -> Removed:
    """Take a photo out of the index and move it (and its sidecar) to `<root>/.trash/`."""
    root = Path(engine.settings.images_dir)
    with _exclusive(engine):
        batch = engine.store.fetch([photo_id])
        if not batch.ids:
            raise PhotoGoneError(f"The photo {photo_id} is not in the index.")
        payload = batch.payloads[0]
        rel = str(payload.get("path", ""))
        species = str(payload.get("species", ""))
        if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise CurationError(f"The index names an unsafe path for {photo_id}: {rel!r}")
        src = root / rel
        trash_rel = f"{TRASH}/{rel}"
        dst = root / trash_rel
        if dst.exists():
            trash_rel = f"{TRASH}/{Path(rel).parent.as_posix()}/{uuidlib.uuid4().hex[:8]}-"
            trash_rel += Path(rel).name
            dst = root / trash_rel
        moved = src.exists()
        if moved:
            _move(src, dst)
        try:
            store = open_store(engine.settings)
            catalog = Catalog(engine.settings.index_dir)
            try:
                with store.writer():
                    store.delete([photo_id])
                    catalog.remove([rel])
                    store.set_extra({"updated_at": _now()})
            finally:
                catalog.close()
                store.close()
        except BaseException:
            if moved:
                _move(dst, src)  # the index still has it: so does the collection
            raise
        if moved and _sidecar_of(src).exists():
            _move(_sidecar_of(src), _sidecar_of(dst))
        engine.store.refresh()
        return Removed(photo_id, rel, trash_rel, species, _count(engine, species))


def restore_photo(engine: Engine, trash_path: str, path: str) -> Added:
    """Move a trashed photo back to `path` and index it again (its uuid is kept)."""
    root = Path(engine.settings.images_dir)
    src, dst = root / trash_path, root / path
    for rel in (trash_path, path):
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise CurationError(f"Unsafe path {rel!r}")
    if not src.is_file():
        raise PhotoGoneError(f"{trash_path} is no longer in the trash.")
    if dst.exists():
        raise CurationError(f"{path} exists again; it was not overwritten.")
    species = species_from_folder(Path(path).parent.name)
    with _exclusive(engine):
        _move(src, dst)
        if _sidecar_of(src).exists():
            _move(_sidecar_of(src), _sidecar_of(dst))
        try:
            _index_one(engine, path, species)
        except BaseException:
            if _sidecar_of(dst).exists():
                _move(_sidecar_of(dst), _sidecar_of(src))
            _move(dst, src)
            raise
        return Added(Path(path).stem, path, species, _count(engine, species))
