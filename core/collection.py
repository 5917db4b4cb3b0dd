"""Reading a collection folder: `<root>/<Scientific_name>/<file>` -> one entry per image file.

Only the file system is touched here (no decoding), so a scan of a million files stays cheap and
incremental indexing can compare (path, mtime, size) with what the index already holds. Odd
entries (link loops, unreadable folders, broken links) are skipped and reported, never raised:
one bad folder must not stop `kontrol index`.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

from core.errors import ConfigError
from core.imageio import is_image_file

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class SkippedEntry:
    """Something under the root that was not scanned, and why (`path` relative, `/`-separated)."""

    path: str
    reason: str


@dataclass(frozen=True)
class ScanReport:
    """The image files found (sorted by path) and the entries skipped (sorted by path)."""

    files: list[CollectionFile]
    skipped: list[SkippedEntry]


def scan_collection(root: Path) -> list[CollectionFile]:
    """All image files under the species folders of `root`, sorted by path.

    Skipped entries (link loops, unreadable folders, broken links) are logged as warnings; use
    `scan_collection_report` to get them.
    """
    report = scan_collection_report(root)
    for item in report.skipped:
        log.warning("Collection: skipped %s: %s", item.path, item.reason)
    return report.files


def scan_collection_report(root: Path) -> ScanReport:
    """Walk `root` like `scan_collection` and also say what was skipped and why.

    Files directly in the root have no species folder and are ignored, as are hidden entries and
    non-image files (licence sidecars, manifests). Links to folders are followed, each folder at
    most once: real folders are walked first, so a folder reachable both directly and through a
    link keeps its own name (species), and a link back to a folder containing it (a loop such as
    `self -> .`) is skipped instead of being walked until the path is too long. An unreadable
    entry is skipped with its reason; nothing here raises for a bad entry.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(
            f"The collection folder {root} does not exist. Set KONTROL_IMAGES_DIR to your "
            "<root>/<Scientific_name>/<photo>.jpg folder, or run `kontrol demo-data`."
        )
    return _Walk(root).run()


Key = tuple[int, int]  # (st_dev, st_ino): a folder's identity, whatever the path to it


class _Walk:
    """One scan: real folders first (a stack), then links to folders (in the order found)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.found: list[CollectionFile] = []
        self.skipped: list[SkippedEntry] = []
        key = _key(root.stat())
        self.seen: dict[Key, str] = {key: "the collection root"}
        self.real: list[tuple[Path, str, frozenset[Key]]] = [(root, "", frozenset({key}))]
        self.links: list[tuple[os.DirEntry[str], str, frozenset[Key]]] = []

    def run(self) -> ScanReport:
        while self.real or self.links:
            if self.real:
                self._scan(*self.real.pop())
            else:
                entry, species, parents = self.links.pop(0)
                key = self._folder_key(entry, parents)
                if key is not None:
                    self._scan(Path(entry.path), species, parents | {key})
        self.found.sort(key=lambda f: f.path)
        self.skipped.sort(key=lambda s: s.path)
        return ScanReport(self.found, self.skipped)

    def _scan(self, folder: Path, species: str, parents: frozenset[Key]) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            self._skip(folder, f"folder {_reason(exc)}")
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError as exc:  # a chain of links that never ends, EACCES
                self._skip(entry.path, _reason(exc))
                continue
            if is_dir:
                child = (entry, species or species_from_folder(entry.name), parents)
                if entry.is_symlink():
                    self.links.append(child)
                elif (key := self._folder_key(entry, parents)) is not None:
                    self.real.append((Path(entry.path), child[1], parents | {key}))
            elif species and is_image_file(entry.name):
                self._add_file(entry, species)

    def _folder_key(self, entry: os.DirEntry[str], parents: frozenset[Key]) -> Key | None:
        """The folder's identity, or None (skipped) if it is a loop or was scanned already."""
        try:
            key = _key(entry.stat(follow_symlinks=True))
        except OSError as exc:
            self._skip(entry.path, _reason(exc))
            return None
        if key in parents:
            self._skip(entry.path, "a link back to a folder that contains it (a loop)")
            return None
        if key in self.seen:
            self._skip(entry.path, f"the same folder as {self.seen[key]}, scanned once")
            return None
        self.seen[key] = f"'{self._rel(entry.path)}'"
        return key

    def _add_file(self, entry: os.DirEntry[str], species: str) -> None:
        try:
            stat = entry.stat(follow_symlinks=True)
        except OSError as exc:
            self._skip(entry.path, _reason(exc))
            return
        if not S_ISREG(stat.st_mode):
            self._skip(entry.path, "not a regular file")
            return
        self.found.append(
            CollectionFile(
                path=self._rel(entry.path),
                species=species,
                uuid=Path(entry.name).stem,
                mtime_ns=stat.st_mtime_ns,
                size=stat.st_size,
            )
        )

    def _rel(self, path: str | Path) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def _skip(self, path: str | Path, reason: str) -> None:
        self.skipped.append(SkippedEntry(self._rel(path), reason))


def _key(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a chain of links that never ends"
    if isinstance(exc, FileNotFoundError):
        return "a broken link (its target does not exist)"
    return f"cannot be read ({exc.strerror or 'I/O error'})"
