"""Labels for an evaluation run: from folder names or from a manifest CSV.

Folder labels follow the collection layout (`<root>/Canis_lupus/x.jpg` -> "Canis lupus"), so any
collection the bot serves can be evaluated as is; a manifest adds labels the layout cannot carry
(the coarse group) or relabels files. Every problem with a manifest is reported as one readable
`ManifestError` that names the rows at fault, never as a KeyError deep in the metrics.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from core.errors import KontrolError

#: File suffixes treated as photos when labels come from folders.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
REQUIRED_COLUMNS = ("file", "label")
_MAX_LISTED = 5


class ManifestError(KontrolError):
    """The labels cannot be read: a bad manifest CSV or a collection with no labelled photos."""


@dataclass(frozen=True)
class LabelledPhoto:
    """One evaluation photo.

    path: absolute file path; rel: path relative to the collection root (POSIX form);
    label: species with spaces ("Canis lupus"); coarse: coarse group or None when not given.
    """

    path: Path
    rel: str
    label: str
    coarse: str | None = None


def normalize_label(name: str) -> str:
    """Folder-style names and manifest labels compare equal: underscores become spaces."""
    return " ".join(name.replace("_", " ").split())


def load_labels(images_dir: Path | str, manifest: Path | str | None = None) -> list[LabelledPhoto]:
    """Labelled photos of a collection, sorted by relative path (stable order = stable metrics).

    Raises ManifestError when the directory or manifest is unusable or nothing is labelled.
    """
    root = Path(images_dir).expanduser().resolve()
    if not root.is_dir():
        raise ManifestError(f"Images directory {root} does not exist or is not a directory.")
    photos = _from_manifest(root, Path(manifest)) if manifest else _from_folders(root)
    if not photos:
        where = f"manifest {manifest}" if manifest else f"sub-folders of {root}"
        raise ManifestError(f"No labelled photos found in the {where}.")
    return sorted(photos, key=lambda p: p.rel)


def _from_folders(root: Path) -> list[LabelledPhoto]:
    """Every image below a sub-folder; the label is the name of its first-level folder."""
    photos = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if len(rel.parts) < 2 or any(part.startswith(".") for part in rel.parts):
            continue  # loose files at the root have no label; hidden files are not photos
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            photos.append(LabelledPhoto(path, rel.as_posix(), normalize_label(rel.parts[0])))
    return photos


def _from_manifest(root: Path, manifest: Path) -> list[LabelledPhoto]:
    """Rows of a CSV with columns file,label[,coarse]; extra columns are ignored."""
    if not manifest.is_file():
        raise ManifestError(f"Manifest {manifest} does not exist.")
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [(name or "").strip().lower() for name in reader.fieldnames or []]
            missing = [col for col in REQUIRED_COLUMNS if col not in header]
            if missing:
                raise ManifestError(
                    f"Manifest {manifest} lacks the column(s) {', '.join(missing)}; "
                    f"it needs a header row with {', '.join(REQUIRED_COLUMNS)} (and optionally "
                    f"coarse), found: {', '.join(header) or 'nothing'}."
                )
            reader.fieldnames = header
            rows = list(reader)
    except UnicodeDecodeError as exc:
        raise ManifestError(f"Manifest {manifest} is not UTF-8 text: {exc.reason}.") from None
    except csv.Error as exc:
        raise ManifestError(f"Manifest {manifest} is not valid CSV: {exc}.") from None
    has_coarse = "coarse" in header
    photos: list[LabelledPhoto] = []
    empty: list[int] = []
    absent: list[str] = []
    seen: dict[str, int] = {}
    duplicates: list[str] = []
    for line_no, row in enumerate(rows, start=2):  # line 1 is the header
        file = (row.get("file") or "").strip()
        label = normalize_label(row.get("label") or "")
        if not file or not label:
            empty.append(line_no)
            continue
        path = (root / file).resolve()
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else file
        if rel in seen:
            duplicates.append(f"{file} (lines {seen[rel]} and {line_no})")
            continue
        seen[rel] = line_no
        if not path.is_file():
            absent.append(file)
            continue
        coarse = normalize_label(row.get("coarse") or "") if has_coarse else ""
        photos.append(LabelledPhoto(path, rel, label, coarse or None))
    if empty:
        raise ManifestError(
            f"Manifest {manifest}: empty file or label on line(s) {_listing(map(str, empty))}."
        )
    if duplicates:
        raise ManifestError(f"Manifest {manifest} lists a file twice: {_listing(duplicates)}.")
    if absent:
        raise ManifestError(
            f"Manifest {manifest}: {len(absent)} file(s) do not exist under {root}: "
            f"{_listing(absent)}."
        )
    return photos


def _listing(items: Iterable[str]) -> str:
    """First few items and how many more, so a long list stays one readable sentence."""
    items = list(items)
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")
