"""Reading a collection folder: `<root>/<Scientific_name>/<file>` -> one entry per image file.

Only the file system is touched here (no decoding), so a scan of a million files stays cheap and
incremental indexing can compare (path, mtime, size) with what the index already holds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError
from core.imageio import is_image_file


@dataclass(frozen=True)
class CollectionFile:
    """One image of the collection. `path` is relative to the root, with `/` separators."""

    path: str
    species: str
    uuid: str
    mtime_ns: int
    size: int


def species_from_folder(folder: str) -> str:
    """`Canis_lupus` -> `Canis lupus` (the folder name with `_` read as a space)."""
    return " ".join(folder.replace("_", " ").split())


def normalize_species(name: str) -> str:
    """Canonical lookup key for a species name typed by a user (case, `_`, spaces)."""
    return species_from_folder(name).casefold()


def scan_collection(root: Path) -> list[CollectionFile]:
    """All image files under the species folders of `root`, sorted by path.

    Files directly in the root have no species folder and are ignored, as are hidden entries and
    non-image files (licence sidecars, manifests).
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(
            f"The collection folder {root} does not exist. Set KONTROL_IMAGES_DIR to your "
            "<root>/<Scientific_name>/<photo>.jpg folder, or run `kontrol demo-data`."
        )
    found: list[CollectionFile] = []
    stack = [(root, "")]
    while stack:
        folder, species = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=True):
                stack.append((Path(entry.path), species or species_from_folder(entry.name)))
            elif species and is_image_file(entry.name):
                try:
                    stat = entry.stat()
                except OSError:
                    continue
                rel = Path(entry.path).relative_to(root).as_posix()
                found.append(
                    CollectionFile(
                        path=rel,
                        species=species,
                        uuid=Path(entry.name).stem,
                        mtime_ns=stat.st_mtime_ns,
                        size=stat.st_size,
                    )
                )
    found.sort(key=lambda f: f.path)
    return found
