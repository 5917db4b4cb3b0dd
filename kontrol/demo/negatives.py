"""Photos with no animal, for the open-set checks, from the package the demo comes from.

Beside its animals, GCompris ships real photographs of monuments, tools, household objects and
renewable-energy plants (Wikimedia Commons and publicdomainpictures.net, each credited in its
folder's README). `build_negatives` writes them as `<dest>/<source>-<name>.jpg` with a credit
sidecar and ATTRIBUTION.md. They are what the no-animal gate and the similarity gate are chosen
and measured against (`scripts/choose_defaults.py --negatives`, `kontrol eval --negatives`); the
four sample photos inside installed packages were all there was before.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kontrol.demo.demo_data import (
    ATTRIBUTION,
    JPEG_QUALITY,
    PACKAGE,
    Attribution,
    check_replaceable,
    open_archives,
    package_resources,
    readme_credits,
    save_as_jpeg,
    staged_build,
)
from kontrol.demo.rcc import RccArchive

#: Resource file -> folders (with a README each, or below one) whose photos show no animal.
SOURCES: Mapping[str, tuple[str, ...]] = {
    "explore_monuments.rcc": ("gcompris/src/activities/explore_monuments/resource",),
    "categorization.rcc": tuple(
        f"gcompris/src/activities/categorization/resource/images/{folder}"
        for folder in ("monuments", "others", "renewable", "tools")
    ),
}
#: Photos whose subject includes sculpted animals (a quadriga on top): not clean negatives.
EXCLUDED = frozenset({"brandenburgGate.webp", "arcDeTriomphe.webp"})
IMAGE_SUFFIXES = (".webp", ".jpg", ".jpeg", ".png")
LIST_FILE = "negatives.csv"
#: Where `kontrol demo-data` puts them; `kontrol eval` and the tuning scripts look here first.
DEFAULT_DIR = Path("data/demo_negatives")


@dataclass(frozen=True)
class NegativePhoto:
    """One photo with no animal: where it came from, where it goes, and its credit."""

    rcc_file: str
    resource_path: str
    credit: Attribution

    @property
    def file(self) -> str:
        """Stable file name: source folder and photo name (`france-eiffelTower.jpg`)."""
        path = PurePosixPath(self.resource_path)
        return f"{path.parent.name}-{path.stem}.jpg"


@dataclass(frozen=True)
class NegativesReport:
    photos: int
    dest: Path
    seconds: float
    rebuilt: bool = True
    uncredited: tuple[str, ...] = ()

    def __str__(self) -> str:
        state = "built" if self.rebuilt else "already present"
        left = f"; {len(self.uncredited)} left out, uncredited" if self.uncredited else ""
        return (
            f"{self.photos} photos with no animal in {self.dest} "
            f"({state}, {self.seconds:.1f} s{left})"
        )


def list_negatives(archives: Mapping[str, RccArchive]) -> tuple[list[NegativePhoto], list[str]]:
    """The photos of `SOURCES` with their README credit, and those left out for lack of one."""
    photos: list[NegativePhoto] = []
    uncredited: list[str] = []
    for rcc_file, folders in SOURCES.items():
        archive = archives[rcc_file]
        for folder in folders:
            credits = readme_credits(archive, folder)
            for path in sorted(archive.paths()):
                name = PurePosixPath(path).name
                inside = path.startswith(f"{folder}/")
                if not inside or not path.lower().endswith(IMAGE_SUFFIXES) or name in EXCLUDED:
                    continue
                credit = credits.get(path.removeprefix(f"{folder}/")) or credits.get(name)
                if credit is None or not credit.licence:
                    uncredited.append(path)
                    continue
                photos.append(NegativePhoto(rcc_file, path, credit))
    return photos, uncredited


def complete_build(dest: Path) -> list[str] | None:
    """The photos of a finished build in `dest` (its list, credits and every listed photo
    present), else None."""
    listing = dest / LIST_FILE
    if not listing.is_file() or not (dest / ATTRIBUTION).is_file():
        return None
    try:
        with listing.open(newline="", encoding="utf-8") as fh:
            files = [row["file"] for row in csv.DictReader(fh)]
    except (OSError, KeyError, csv.Error, UnicodeDecodeError):
        return None
    return files if files and all((dest / f).is_file() for f in files) else None


def is_complete(dest: Path) -> bool:
    """True if `dest` holds a finished build."""
    return complete_build(dest) is not None


def build_negatives(
    dest: Path,
    *,
    deb: Path | None = None,
    cache_dir: Path | None = None,
    force: bool = False,
    rcc: Mapping[str, bytes] | None = None,
) -> NegativesReport:
    """Write the photos with no animal into `dest` (built beside it, then renamed into place).

    Returns at once when `dest` is complete (unless `force`). `rcc` (file name -> bytes) skips
    the package step; tests use it."""
    started = time.perf_counter()
    dest = Path(dest)
    built = None if force else complete_build(dest)
    if built is not None:
        return NegativesReport(len(built), dest, time.perf_counter() - started, rebuilt=False)
    check_replaceable(dest)
    version = ""
    if rcc is None:
        rcc, version = package_resources(SOURCES, deb, cache_dir)
    archives = open_archives(rcc, SOURCES)
    photos, uncredited = list_negatives(archives)
    with staged_build(dest) as tmp:
        for photo in photos:
            _write_photo(tmp, photo, archives[photo.rcc_file])
        _write_attribution(tmp / ATTRIBUTION, photos, version)
        _write_list(tmp / LIST_FILE, photos)  # last: its presence marks a complete build
    return NegativesReport(
        len(photos), dest, time.perf_counter() - started, uncredited=tuple(uncredited)
    )


def _write_photo(root: Path, photo: NegativePhoto, archive: RccArchive) -> None:
    target = root / photo.file
    save_as_jpeg(archive, photo.resource_path, target)
    sidecar = {
        "licence": photo.credit.licence,
        "author": photo.credit.copyright,
        "source": photo.credit.source,
        "resource_path": photo.resource_path,
        "modifications": f"converted from WebP to JPEG (quality {JPEG_QUALITY}) by kontrol",
    }
    target.with_suffix(".json").write_text(
        json.dumps(sidecar, ensure_ascii=False, indent=2) + "\n", "utf-8"
    )


def _write_list(path: Path, photos: list[NegativePhoto]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["file", "licence", "author", "source"])
        for p in sorted(photos, key=lambda p: p.file):
            writer.writerow([p.file, p.credit.licence, p.credit.copyright, p.credit.source])


def _write_attribution(path: Path, photos: list[NegativePhoto], version: str) -> None:
    package = f"{PACKAGE} {version}".strip()
    lines = [
        "# Photos with no animal: credits",
        "",
        f"{len(photos)} photographs (monuments, tools, household objects, energy plants) from the "
        f"Debian package `{package}` (GCompris, KDE), which took them from Wikimedia Commons or",
        "publicdomainpictures.net. Each keeps its own licence, listed below; CC-BY and CC-BY-SA",
        "photos may be reused only with this credit. The same data sits beside each photo in",
        "`<name>.json`. Changes: converted from WebP to JPEG by kontrol.",
        "",
    ]
    for p in sorted(photos, key=lambda p: p.file):
        credit = ", ".join(x for x in (p.credit.copyright or "unknown author", p.credit.licence))
        lines.append(f"- `{p.file}`: {credit}. Source: {p.credit.source or 'unknown'}.")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
