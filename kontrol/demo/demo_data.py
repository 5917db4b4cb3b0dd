"""Build the labelled demo collection (85 photos, 78 taxa) from Debian's `gcompris-qt-data`.

No registry package ships an animal photo data set, but GCompris does: Wikimedia Commons photos,
each with licence, author and source, stored as WebP inside Qt resource files. We fetch the .deb
with apt (or take one the user supplies), pull the photos out, label them from the bundled table
and write a collection the indexer understands, with every photo's credit kept beside it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from core.errors import ImageError, KontrolError
from core.imageio import load_image
from kontrol.demo.rcc import RccArchive, RccError

PACKAGE = "gcompris-qt-data"
RCC_DIR = "usr/share/gcompris-qt/rcc"
RCC_FILES = (
    "explore_farm_animals.rcc",
    "explore_world_animals.rcc",
    "erase.rcc",
    "categorization.rcc",
)
LABELS_CSV = Path(__file__).parent / "data" / "demo_collection_labels.csv"
DEFAULT_CACHE_DIR = Path("data/cache")
MANIFEST = "manifest.csv"
#: Lineage of the demo taxa the packaged WordNet tables lack (WordNet's 2006 names, as the tables
#: use: wrasses and mullets in Perciformes, ray-finned fish in Osteichthyes), written into the
#: collection as its `taxonomy.csv` (core/taxonomy.py reads it as overrides).
TAXONOMY_CSV = Path(__file__).parent / "data" / "demo_taxonomy.csv"
ATTRIBUTION = "ATTRIBUTION.md"
JPEG_QUALITY = 92
# Stable ids: the same resource always becomes the same file name, so rebuilds and indexes agree.
_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://invent.kde.org/education/gcompris")


class DemoDataError(KontrolError):
    """The demo collection cannot be fetched or built; the message says what to do."""


@dataclass(frozen=True)
class DemoPhoto:
    """One labelled photo of the table, with its credit (README fills what the table lacks)."""

    rcc_file: str
    resource_path: str
    scientific_name: str
    rank: str
    coarse_group: str
    licence: str
    author: str
    source: str
    note: str = ""
    modifications: str = ""

    @property
    def uuid(self) -> str:
        return str(uuid.uuid5(_UUID_NAMESPACE, self.resource_path))

    @property
    def relpath(self) -> str:
        """Photo path inside the collection, `/`-separated."""
        return f"{self.scientific_name}/{self.uuid}.jpg"


@dataclass(frozen=True)
class DemoReport:
    """What `build_demo_collection` produced; `rebuilt` is False when dest was already complete."""

    photos: int
    taxa: int
    dest: Path
    seconds: float
    rebuilt: bool = True
    warnings: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class Attribution:
    """One README block's credit for one file."""

    copyright: str = ""
    licence: str = ""
    source: str = ""
    comments: str = ""


# --- labels and attribution -----------------------------------------------------------------------


def read_labels(path: Path = LABELS_CSV) -> list[DemoPhoto]:
    """Parse the labels table; the licence column reads `licence; author; source`."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise DemoDataError(f"Cannot read the demo labels table {path}: {exc.strerror}.") from None
    photos = []
    for row in rows:
        licence, author, source = split_licence_line(row.get("licence_author_source", ""))
        photos.append(
            DemoPhoto(
                rcc_file=row["rcc_file"].strip(),
                resource_path=row["resource_path"].strip().lstrip("/"),
                scientific_name=row["scientific_name"].strip(),
                rank=row.get("rank", "").strip(),
                coarse_group=row.get("coarse_group", "").strip(),
                licence=licence,
                author=author,
                source=source,
                note=(row.get("note") or "").strip(),
            )
        )
    return photos


def split_licence_line(text: str) -> tuple[str, str, str]:
    """`'CC0-1.0; Jane Doe; https://...'` -> (licence, author, source); missing parts are ''."""
    parts = [p.strip() for p in text.split(";")]
    if len(parts) < 2:
        return parts[0] if parts else "", "", ""
    source = parts[-1] if re.match(r"https?://", parts[-1]) else ""
    middle = parts[1:-1] if source else parts[1:]
    return parts[0], "; ".join(p for p in middle if p), source


def parse_readme(text: str) -> dict[str, Attribution]:
    """Map file name -> credit from a GCompris README (blank-line separated `Key: value` blocks).

    `Files:` takes its value on the same line or as the following lines, one name each.
    """
    result: dict[str, Attribution] = {}
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        fields: dict[str, str] = {}
        files: list[str] = []
        in_files = False
        for raw in block.splitlines():
            line = raw.strip()
            if not line:
                continue
            key, sep, value = line.partition(":")
            if sep and key.strip().lower() in (
                "copyright",
                "license",
                "licence",
                "source",
                "files",
            ):
                key = key.strip().lower()
                in_files = key == "files"
                if in_files:
                    files.extend(value.split())
                else:
                    fields[key] = value.strip()
            elif sep and re.fullmatch(r"[A-Za-z-]+", key.strip()):
                fields[key.strip().lower()] = value.strip()
                in_files = False
            elif in_files:
                files.extend(line.split())
        credit = Attribution(
            copyright=fields.get("copyright", ""),
            licence=fields.get("license", fields.get("licence", "")),
            source=fields.get("source", ""),
            comments=fields.get("comments", ""),
        )
        for name in files:
            result[name] = credit
    return result


def _same_licence(a: str, b: str) -> bool:
    def norm(s: str) -> str:
        return re.sub(r"[\s_-]+", "", s).lower()

    return norm(a) == norm(b)


def merge_attribution(photo: DemoPhoto, credit: Attribution | None) -> tuple[DemoPhoto, list[str]]:
    """Fill the table's empty credit fields from the README and report disagreements."""
    if credit is None:
        return photo, [f"{photo.resource_path}: no README entry; using the table's credit only"]
    problems = []
    if credit.licence and photo.licence and not _same_licence(credit.licence, photo.licence):
        problems.append(
            f"{photo.resource_path}: licence {photo.licence!r} in table, "
            f"{credit.licence!r} in README"
        )
    if credit.source and photo.source and credit.source != photo.source:
        problems.append(f"{photo.resource_path}: source differs between table and README")
    merged = DemoPhoto(
        **{
            **asdict(photo),
            "licence": photo.licence or credit.licence,
            "author": photo.author or credit.copyright,
            "source": photo.source or credit.source,
            "modifications": credit.comments,
        }
    )
    return merged, problems


# --- getting the package --------------------------------------------------------------------------


def download_deb(cache_dir: Path) -> Path:
    """Return the cached `gcompris-qt-data` .deb, fetching it with `apt-get download` if needed."""
    cached = _cached_deb(cache_dir)
    if cached is not None:
        return cached
    apt = shutil.which("apt-get")
    if apt is None:
        raise DemoDataError(
            f"apt-get is not available here, so {PACKAGE} cannot be downloaded. Get "
            f"{PACKAGE}_*.deb from any Debian mirror and pass it with --deb FILE."
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Download into a private folder so an interrupted transfer never looks like a cached .deb.
    work = Path(tempfile.mkdtemp(prefix=".download-", dir=cache_dir))
    try:
        result = _run([apt, "download", PACKAGE], cwd=work)
        if result.returncode != 0 and _needs_update(result.stderr):
            update = _run([apt, "update"], cwd=work)
            if update.returncode != 0:
                raise DemoDataError(
                    f"apt has no package lists and 'apt-get update' failed "
                    f"({_last_line(update)}). Run 'apt-get update' as root, or pass the "
                    f"{PACKAGE} .deb with --deb FILE."
                )
            result = _run([apt, "download", PACKAGE], cwd=work)
        fetched = _cached_deb(work)
        if result.returncode != 0 or fetched is None:
            raise DemoDataError(
                f"'apt-get download {PACKAGE}' failed ({_last_line(result)}). "
                f"Get {PACKAGE}_*.deb from a Debian mirror and pass it with --deb FILE."
            )
        return fetched.replace(cache_dir / fetched.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _cached_deb(cache_dir: Path) -> Path | None:
    debs = sorted(cache_dir.glob(f"{PACKAGE}_*.deb")) if cache_dir.is_dir() else []
    return debs[-1] if debs else None


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, check=False, timeout=900
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(cmd, 1, "", str(exc))


def _needs_update(stderr: str) -> bool:
    text = stderr.lower()
    return "unable to locate package" in text or "no installation candidate" in text


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [ln.strip() for ln in (result.stderr or result.stdout or "").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("E:")]
    return (errors or lines or [f"exit status {result.returncode}"])[-1]


def deb_version(deb: Path) -> str:
    """Version from a Debian file name (`name_1.2-3_all.deb` -> `1.2-3`), or '' if not one."""
    parts = deb.name.split("_")
    return parts[1] if len(parts) == 3 and deb.suffix == ".deb" else ""


def read_rcc_from_deb(deb: Path, names: Iterable[str] = RCC_FILES) -> dict[str, bytes]:
    """The named `.rcc` files from the package, read straight from its data archive.

    Uses `dpkg-deb --fsys-tarfile` when present (any compression dpkg knows), else parses the
    `ar` container in Python (data.tar.xz/gz/bz2).
    """
    wanted = {f"{RCC_DIR}/{n}": n for n in names}
    if not deb.is_file():
        raise DemoDataError(f"The package file {deb} does not exist.")
    dpkg = shutil.which("dpkg-deb")
    if dpkg is not None:
        found = _rcc_via_dpkg(dpkg, deb, wanted)
    else:
        data_tar = io.BytesIO(_ar_data_tar(deb))
        try:
            with tarfile.open(fileobj=data_tar, mode="r:*") as tar:
                found = _rcc_from_tar(tar, wanted)
        except tarfile.TarError:
            raise DemoDataError(f"{deb.name} has a damaged data archive.") from None
    missing = sorted(set(wanted.values()) - set(found))
    if missing:
        raise DemoDataError(f"{deb.name} does not contain {', '.join(missing)}; is it {PACKAGE}?")
    return found


def package_resources(
    names: Iterable[str], deb: Path | None, cache_dir: Path | None
) -> tuple[dict[str, bytes], str]:
    """The named `.rcc` files of the package (`deb`, else the cached or apt-fetched one) and its
    version."""
    deb = Path(deb) if deb is not None else download_deb(Path(cache_dir or DEFAULT_CACHE_DIR))
    return read_rcc_from_deb(deb, sorted(names)), deb_version(deb)


def _rcc_via_dpkg(dpkg: str, deb: Path, wanted: Mapping[str, str]) -> dict[str, bytes]:
    with subprocess.Popen(
        [dpkg, "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                found = _rcc_from_tar(tar, wanted)
        except tarfile.TarError:
            found = {}
        proc.stdout.read()  # drain so dpkg-deb exits cleanly
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        code = proc.wait()
    if code != 0:
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {code}"
        raise DemoDataError(f"{deb.name} is not a readable Debian package ({detail}).")
    return found


def _rcc_from_tar(tar: tarfile.TarFile, wanted: Mapping[str, str]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for member in tar:
        name = member.name.removeprefix("./")
        if name in wanted and member.isfile():
            fh = tar.extractfile(member)
            if fh is not None:
                found[wanted[name]] = fh.read()
    return found


def _ar_data_tar(deb: Path) -> bytes:
    """The `data.tar.*` member of a .deb (an `ar` archive), parsed without binutils."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise DemoDataError(f"{deb.name} is not a Debian package (no ar archive header).")
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            break
        start = pos + 60
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                raise DemoDataError(
                    f"{deb.name} uses zstd compression; install dpkg (dpkg-deb) to read it."
                )
            return raw[start : start + size]
        pos = start + size + (size & 1)
    raise DemoDataError(f"{deb.name} is not a Debian package (no data.tar member).")


# --- building -------------------------------------------------------------------------------------


def build_demo_collection(
    dest: Path,
    *,
    deb: Path | None = None,
    cache_dir: Path | None = None,
    force: bool = False,
    rcc: Mapping[str, bytes] | None = None,
    labels: Path = LABELS_CSV,
) -> DemoReport:
    """Create `dest/<Scientific_name>/<uuid>.jpg` (+ `.json` credit), `manifest.csv`, `ATTRIBUTION.md`.

    Returns at once if `dest` already holds the complete collection (unless `force`). The new
    collection is written beside `dest` and renamed into place, so an interrupted run never leaves
    a half-built one. `rcc` (file name -> bytes) skips the package step; tests use it.
    """
    started = time.perf_counter()
    dest = Path(dest)
    photos = read_labels(labels)
    if not force and is_complete(dest, photos):
        _write_taxonomy(dest, photos)  # a collection built before the table shipped gets it too
        return DemoReport(
            photos=len(photos),
            taxa=len({p.scientific_name for p in photos}),
            dest=dest,
            seconds=time.perf_counter() - started,
            rebuilt=False,
        )
    check_replaceable(dest)
    version = ""
    if rcc is None:
        rcc, version = package_resources({p.rcc_file for p in photos}, deb, cache_dir)
    archives = open_archives(rcc, {p.rcc_file for p in photos})

    with staged_build(dest) as tmp:
        final, warnings = _write_collection(tmp, photos, archives)
        _write_attribution(tmp / ATTRIBUTION, final, version)
        _write_taxonomy(tmp, final)
        _write_manifest(tmp / MANIFEST, final)  # last: its presence marks a complete collection
    return DemoReport(
        photos=len(final),
        taxa=len({p.scientific_name for p in final}),
        dest=dest,
        seconds=time.perf_counter() - started,
        warnings=tuple(warnings),
    )


def is_complete(dest: Path, photos: list[DemoPhoto]) -> bool:
    """True if `dest` holds this table's collection: manifest, credits and every photo present."""
    manifest = dest / MANIFEST
    if not manifest.is_file() or not (dest / ATTRIBUTION).is_file():
        return False
    try:
        with manifest.open(newline="", encoding="utf-8") as fh:
            listed = {row["file"] for row in csv.DictReader(fh)}
    except (OSError, KeyError, csv.Error, UnicodeDecodeError):
        return False
    expected = {p.relpath for p in photos}
    return listed == expected and all((dest / rel).is_file() for rel in expected)


def check_replaceable(dest: Path) -> None:
    """Never delete a folder we did not make: only an empty one or a previous demo build."""
    if not dest.exists():
        return
    if not dest.is_dir():
        raise DemoDataError(f"{dest} exists and is not a folder; choose another destination.")
    if (
        any(dest.iterdir())
        and not (dest / MANIFEST).is_file()
        and not (dest / ATTRIBUTION).is_file()
    ):
        raise DemoDataError(
            f"{dest} already contains files that are not a demo collection; "
            "choose an empty or new folder."
        )


def open_archives(rcc: Mapping[str, bytes], names: Iterable[str]) -> dict[str, RccArchive]:
    """The named resource files parsed (`DemoDataError` for a missing or damaged one)."""
    archives = {}
    for name in sorted(names):
        if name not in rcc:
            raise DemoDataError(f"The resource file {name} is missing from the package.")
        try:
            archives[name] = RccArchive(rcc[name], name=name)
        except RccError as exc:
            raise DemoDataError(str(exc)) from None
    return archives


def readme_credits(archive: RccArchive, folder: str) -> dict[str, Attribution]:
    """File name -> credit from `<folder>/README` in `archive` (empty when there is none)."""
    readme = f"{folder}/README"
    return parse_readme(
        archive.read(readme).decode("utf-8", "replace") if readme in archive else ""
    )


def save_as_jpeg(archive: RccArchive, resource_path: str, target: Path) -> None:
    """Decode one photo of `archive` and write it as JPEG (`DemoDataError` if it cannot be read)."""
    try:
        image = load_image(archive.read(resource_path), min_side=32)
    except (ImageError, RccError) as exc:
        raise DemoDataError(f"{resource_path}: {exc}") from None
    image.save(target, "JPEG", quality=JPEG_QUALITY, optimize=True)


def _write_collection(
    root: Path, photos: list[DemoPhoto], archives: Mapping[str, RccArchive]
) -> tuple[list[DemoPhoto], list[str]]:
    warnings: list[str] = []
    readmes: dict[tuple[str, str], dict[str, Attribution]] = {}
    final = []
    for photo in photos:
        archive = archives[photo.rcc_file]
        folder = str(PurePosixPath(photo.resource_path).parent)
        key = (photo.rcc_file, folder)
        if key not in readmes:
            readmes[key] = readme_credits(archive, folder)
        credit = readmes[key].get(PurePosixPath(photo.resource_path).name)
        photo, problems = merge_attribution(photo, credit)
        warnings.extend(problems)
        if photo.resource_path not in archive:
            raise DemoDataError(f"{photo.rcc_file} has no photo {photo.resource_path}.")
        target = root / photo.relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        save_as_jpeg(archive, photo.resource_path, target)
        sidecar = target.with_suffix(".json")
        sidecar.write_text(
            json.dumps(_sidecar(photo), ensure_ascii=False, indent=2) + "\n", "utf-8"
        )
        final.append(photo)
    return final, warnings


def _sidecar(photo: DemoPhoto) -> dict[str, str]:
    return {
        "scientific_name": photo.scientific_name,
        "rank": photo.rank,
        "coarse_group": photo.coarse_group,
        "licence": photo.licence,
        "author": photo.author,
        "source": photo.source,
        "resource_path": photo.resource_path,
        "note": photo.note,
        "modifications": _modifications(photo),
    }


def _modifications(photo: DemoPhoto) -> str:
    upstream = f"{photo.modifications} by GCompris; " if photo.modifications else ""
    return f"{upstream}converted from WebP to JPEG (quality {JPEG_QUALITY}) by kontrol"


def _write_taxonomy(root: Path, photos: list[DemoPhoto]) -> None:
    """`taxonomy.csv`: the bundled lineage rows of the taxa in the collection (kept if current)."""
    from core.atomic import atomic_file

    taxa = {p.scientific_name for p in photos}
    lines = TAXONOMY_CSV.read_text(encoding="utf-8").splitlines()
    text = "\n".join([lines[0], *(ln for ln in lines[1:] if ln.split(",")[0] in taxa)]) + "\n"
    target = root / "taxonomy.csv"
    if target.is_file() and target.read_text(encoding="utf-8") == text:
        return
    with atomic_file(target, "w", encoding="utf-8") as handle:
        handle.write(text)


def _write_manifest(path: Path, photos: list[DemoPhoto]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["file", "label", "coarse"])
        for photo in sorted(photos, key=lambda p: p.relpath):
            writer.writerow([photo.relpath, photo.scientific_name, photo.coarse_group])


def _write_attribution(path: Path, photos: list[DemoPhoto], version: str) -> None:
    package = f"{PACKAGE} {version}".strip()
    taxa = len({p.scientific_name for p in photos})
    lines = [
        "# Demo collection: photo credits",
        "",
        f"{len(photos)} photographs of {taxa} animal taxa, taken from the Debian package "
        f"`{package}` (GCompris, KDE), which took them from Wikimedia Commons or Flickr.",
        "Each photo keeps its own licence, listed below; CC-BY and CC-BY-SA photos may be reused",
        "only with this credit, and changed CC-BY-SA photos stay under CC-BY-SA. The same data sits",
        "beside each photo in `<uuid>.json`.",
        "",
    ]
    for photo in sorted(photos, key=lambda p: (p.scientific_name, p.relpath)):
        name = photo.scientific_name.replace("_", " ")
        credit = ", ".join(x for x in (photo.author or "unknown author", photo.licence) if x)
        lines.append(
            f"- `{photo.relpath}`: *{name}*. {credit}. Source: {photo.source or 'unknown'}. "
            f"Changes: {_modifications(photo)}."
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@contextmanager
def staged_build(dest: Path) -> Iterator[Path]:
    """A folder beside `dest` to build into: renamed onto `dest` when the block succeeds, removed
    when it fails, so an interrupted build never leaves a half-built folder. Refuses a `dest`
    that holds anything but a previous build (`check_replaceable`)."""
    check_replaceable(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the collection is meant to be shared
    try:
        yield tmp
        _swap_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_leftovers(dest: Path) -> None:
    """Clear temp folders an interrupted earlier run left beside `dest`."""
    for pattern in (f".{dest.name}.tmp-*", f".{dest.name}.old-*"):
        for stale in dest.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def _swap_into_place(tmp: Path, dest: Path) -> None:
    """Rename the finished build onto `dest`; an old collection is moved aside, then deleted."""
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.replace(dest, old / "collection")
    try:
        os.replace(tmp, dest)
    except OSError:
        if old is not None:  # put the previous collection back
            os.replace(old / "collection", dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
