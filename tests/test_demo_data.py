"""kontrol.demo.demo_data on a synthetic package (offline), plus one slow end-to-end build with apt."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from PIL import Image

import kontrol.demo.demo_data as demo
from core.errors import ImageError, KontrolError
from kontrol.demo.demo_data import (
    DemoDataError,
    build_demo_collection,
    parse_readme,
    read_labels,
    read_rcc_from_deb,
    split_licence_line,
)
from tests.test_rcc import write_rcc

FARM = "gcompris/src/activities/explore_farm_animals/resource/animals"
ERASE = "gcompris/src/activities/erase/resource"

FARM_README = """Copyright: Someone, 2020
License: CC-BY-SA 4.0
Files:
cat.svg

Copyright: Loliloli
License: Public Domain
Source: https://example.org/cat.jpg
Files:
cat.webp

Copyright: Rob
License: CC0-1.0
Source: https://example.org/sheep.jpg
Files:
sheep.webp
"""

ERASE_README = """Copyright: Charles
Source: https://example.org/cheetah.jpg
License: CC-BY-SA-4.0
Comments: cropping, sharpening
Files: cheetah.webp

Files: kitten.webp
Source: https://example.org/kitten.jpg
License: CC-BY-2.0
Copyright: GalgenTX
Comments: cropping
"""

LABELS = [
    ["rcc_file", "resource_path", "scientific_name", "rank", "coarse_group",
     "licence_author_source", "note"],
    ["farm.rcc", f"{FARM}/cat.webp", "Felis_catus", "species", "Carnivora",
     "Public Domain; Loliloli; https://example.org/cat.jpg", ""],
    ["farm.rcc", f"{FARM}/sheep.webp", "Ovis_aries", "species", "Artiodactyla",
     "CC-BY-4.0; Rob; https://example.org/sheep.jpg", "licence disagrees with README"],
    ["farm.rcc", f"{FARM}/owl.webp", "Strigiformes", "order", "Aves",
     "CC0-1.0; Lepale; https://example.org/owl.jpg", "no README entry"],
    ["erase.rcc", f"{ERASE}/cheetah.webp", "Acinonyx_jubatus", "species", "Carnivora",
     "CC-BY-SA-4.0; Charles; https://example.org/cheetah.jpg", ""],
    ["erase.rcc", f"{ERASE}/kitten.webp", "Felis_catus", "species", "Carnivora",
     "", "credit only in README"],
]  # fmt: skip
COLOURS = {"cat": (200, 120, 40), "sheep": (240, 240, 230), "owl": (90, 70, 50)}


def _webp(colour: tuple[int, int, int], size: tuple[int, int] = (96, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "WEBP", quality=90)
    return buf.getvalue()


def fake_rcc() -> dict[str, bytes]:
    farm = {f"{FARM}/{n}.webp": _webp(c) for n, c in COLOURS.items()}
    farm[f"{FARM}/README"] = FARM_README.encode()
    farm[f"{FARM}/cat.svg"] = b"<svg/>"
    erase = {
        f"{ERASE}/cheetah.webp": _webp((220, 180, 60), (64, 96)),
        f"{ERASE}/kitten.webp": _webp((150, 150, 150)),
        f"{ERASE}/README": ERASE_README.encode(),
    }
    return {
        "farm.rcc": write_rcc(farm, version=3, compressed={f"{FARM}/README"}),
        "erase.rcc": write_rcc(erase, version=2),
    }


def _ar_member(name: str, data: bytes) -> bytes:
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
    return header + data + (b"\n" if len(data) % 2 else b"")


def _tar_xz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def fake_deb(path: Path, rcc: dict[str, bytes]) -> Path:
    control = _tar_xz({"./control": b"Package: gcompris-qt-data\nVersion: 9.9-1\n"})
    data = _tar_xz({f"./{demo.RCC_DIR}/{name}": blob for name, blob in rcc.items()})
    path.write_bytes(
        b"!<arch>\n"
        + _ar_member("debian-binary", b"2.0\n")
        + _ar_member("control.tar.xz", control)
        + _ar_member("data.tar.xz", data)
    )
    return path


@pytest.fixture
def labels(tmp_path: Path) -> Path:
    path = tmp_path / "labels.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(LABELS)
    return path


@pytest.fixture
def built(tmp_path: Path, labels: Path) -> tuple[Path, demo.DemoReport]:
    dest = tmp_path / "demo"
    return dest, build_demo_collection(dest, rcc=fake_rcc(), labels=labels)


# --- parsing --------------------------------------------------------------------------------------


def test_split_licence_line() -> None:
    assert split_licence_line("CC0-1.0; Jane Doe; https://x.org/a") == (
        "CC0-1.0",
        "Jane Doe",
        "https://x.org/a",
    )
    assert split_licence_line("Public Domain; A; B; http://x") == (
        "Public Domain",
        "A; B",
        "http://x",
    )
    assert split_licence_line("CC-BY-2.0; Someone") == ("CC-BY-2.0", "Someone", "")
    assert split_licence_line("") == ("", "", "")


def test_parse_readme_both_file_styles() -> None:
    farm = parse_readme(FARM_README)
    assert farm["cat.webp"].copyright == "Loliloli"
    assert farm["cat.webp"].licence == "Public Domain"
    assert farm["sheep.webp"].source == "https://example.org/sheep.jpg"
    assert farm["cat.svg"].licence == "CC-BY-SA 4.0"
    erase = parse_readme(ERASE_README)
    assert erase["cheetah.webp"].comments == "cropping, sharpening"
    assert erase["kitten.webp"].copyright == "GalgenTX"  # `Files:` first in its block
    assert erase["kitten.webp"].licence == "CC-BY-2.0"


def test_bundled_labels_table() -> None:
    photos = read_labels()
    assert len(photos) == 85
    assert len({p.scientific_name for p in photos}) == 78
    assert {p.rcc_file for p in photos} == set(demo.RCC_FILES)
    assert len({p.uuid for p in photos}) == 85
    assert all(p.licence and p.author and p.source for p in photos)
    assert all(" " not in p.scientific_name for p in photos)


def test_uuid_is_stable() -> None:
    a, b = read_labels()[0], read_labels()[0]
    assert a.uuid == b.uuid and a.relpath == f"{a.scientific_name}/{a.uuid}.jpg"


# --- building -------------------------------------------------------------------------------------


def test_build_layout(built: tuple[Path, demo.DemoReport]) -> None:
    dest, report = built
    assert (report.photos, report.taxa, report.rebuilt) == (5, 4, True)
    jpgs = sorted(dest.glob("*/*.jpg"))
    assert len(jpgs) == 5
    assert sorted(p.name for p in dest.iterdir() if p.is_dir()) == [
        "Acinonyx_jubatus",
        "Felis_catus",
        "Ovis_aries",
        "Strigiformes",
    ]
    for jpg in jpgs:
        with Image.open(jpg) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
        assert jpg.with_suffix(".json").is_file()
    with Image.open(next((dest / "Acinonyx_jubatus").glob("*.jpg"))) as im:
        assert im.size == (64, 96)
        r, g, b = im.getpixel((30, 40))  # type: ignore[misc]
        assert abs(r - 220) < 8 and abs(g - 180) < 8 and abs(b - 60) < 8


def test_manifest(built: tuple[Path, demo.DemoReport]) -> None:
    dest, _ = built
    with (dest / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["file", "label", "coarse"]
    assert len(rows) == 5
    for row in rows:
        assert (dest / row["file"]).is_file()
        assert row["file"].split("/")[0] == row["label"]
    assert {r["coarse"] for r in rows} == {"Carnivora", "Artiodactyla", "Aves"}


def test_sidecars_and_attribution(built: tuple[Path, demo.DemoReport]) -> None:
    dest, report = built
    cheetah = json.loads(next((dest / "Acinonyx_jubatus").glob("*.json")).read_text())
    assert cheetah["scientific_name"] == "Acinonyx_jubatus"
    assert cheetah["licence"] == "CC-BY-SA-4.0" and cheetah["author"] == "Charles"
    assert cheetah["resource_path"] == f"{ERASE}/cheetah.webp"
    assert "cropping, sharpening" in cheetah["modifications"]
    keys = {"scientific_name", "rank", "coarse_group", "licence", "author", "source"}
    assert keys | {"resource_path", "note"} <= set(cheetah)

    cats = [json.loads(p.read_text()) for p in (dest / "Felis_catus").glob("*.json")]
    kitten = next(c for c in cats if c["resource_path"].endswith("kitten.webp"))
    # The table left the credit empty: the README completed it.
    assert (kitten["licence"], kitten["author"]) == ("CC-BY-2.0", "GalgenTX")
    assert kitten["source"] == "https://example.org/kitten.jpg"

    text = (dest / "ATTRIBUTION.md").read_text()
    assert text.count("\n- `") == 5
    assert "*Acinonyx jubatus*" in text and "Charles, CC-BY-SA-4.0" in text
    assert "https://example.org/cheetah.jpg" in text

    assert any("sheep.webp" in w and "licence" in w for w in report.warnings)
    assert any("owl.webp" in w and "no README" in w for w in report.warnings)
    assert not any("cat.webp" in w for w in report.warnings)


def test_rebuild_is_stable_and_skipped_when_complete(
    tmp_path: Path, labels: Path, built: tuple[Path, demo.DemoReport]
) -> None:
    dest, _ = built
    files = sorted(p.relative_to(dest) for p in dest.rglob("*"))
    other = tmp_path / "other"
    build_demo_collection(other, rcc=fake_rcc(), labels=labels)
    assert sorted(p.relative_to(other) for p in other.rglob("*")) == files

    again = build_demo_collection(dest, labels=labels)  # no rcc, no deb: must not need them
    assert again.rebuilt is False and again.photos == 5

    victim = next(dest.glob("*/*.jpg"))
    victim.unlink()
    with pytest.raises(DemoDataError):  # incomplete -> rebuild -> needs the package
        build_demo_collection(
            dest, labels=labels, cache_dir=tmp_path / "nocache", deb=tmp_path / "x.deb"
        )
    rebuilt = build_demo_collection(dest, rcc=fake_rcc(), labels=labels)
    assert rebuilt.rebuilt and victim.is_file()

    forced = build_demo_collection(dest, rcc=fake_rcc(), labels=labels, force=True)
    assert forced.rebuilt
    assert sorted(p.relative_to(dest) for p in dest.rglob("*")) == files


def test_failed_build_leaves_old_collection_and_no_temp(
    tmp_path: Path,
    labels: Path,
    built: tuple[Path, demo.DemoReport],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dest, _ = built
    before = sorted(p.relative_to(dest) for p in dest.rglob("*"))
    calls = {"n": 0}
    real = demo.load_image

    def flaky(data: bytes, **kw: object) -> Image.Image:
        calls["n"] += 1
        if calls["n"] == 3:
            raise ImageError("The image is damaged: its picture data cannot be decoded.")
        return real(data, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(demo, "load_image", flaky)
    with pytest.raises(DemoDataError, match="damaged"):
        build_demo_collection(dest, rcc=fake_rcc(), labels=labels, force=True)
    assert sorted(p.relative_to(dest) for p in dest.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".demo")) == []

    fresh = tmp_path / "fresh"
    calls["n"] = 0
    with pytest.raises(DemoDataError):
        build_demo_collection(fresh, rcc=fake_rcc(), labels=labels)
    assert not fresh.exists()


def test_leftover_temp_dirs_are_cleaned(tmp_path: Path, labels: Path) -> None:
    stale = tmp_path / ".demo.tmp-abc"
    stale.mkdir()
    (stale / "half.jpg").write_bytes(b"x")
    build_demo_collection(tmp_path / "demo", rcc=fake_rcc(), labels=labels)
    assert not stale.exists()


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path, labels: Path) -> None:
    dest = tmp_path / "photos"
    dest.mkdir()
    (dest / "my_holiday.jpg").write_bytes(b"precious")
    with pytest.raises(DemoDataError, match="not a demo collection"):
        build_demo_collection(dest, rcc=fake_rcc(), labels=labels)
    assert (dest / "my_holiday.jpg").read_bytes() == b"precious"


def test_missing_resource_is_reported(tmp_path: Path, labels: Path) -> None:
    rcc = fake_rcc()
    del rcc["erase.rcc"]
    with pytest.raises(DemoDataError, match=r"erase\.rcc"):
        build_demo_collection(tmp_path / "d", rcc=rcc, labels=labels)
    rcc = fake_rcc()
    rcc["erase.rcc"] = b"garbage"
    with pytest.raises(DemoDataError, match="not a valid Qt resource"):
        build_demo_collection(tmp_path / "d", rcc=rcc, labels=labels)
    assert issubclass(DemoDataError, KontrolError)


# --- the package ----------------------------------------------------------------------------------


def test_read_rcc_from_fake_deb_pure_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rcc = fake_rcc()
    deb = fake_deb(tmp_path / "gcompris-qt-data_9.9-1_all.deb", rcc)
    monkeypatch.setattr(demo.shutil, "which", lambda _name: None)
    assert read_rcc_from_deb(deb, ["farm.rcc", "erase.rcc"]) == rcc
    with pytest.raises(DemoDataError, match=r"does not contain nope\.rcc"):
        read_rcc_from_deb(deb, ["farm.rcc", "nope.rcc"])


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_read_rcc_from_fake_deb_with_dpkg(tmp_path: Path) -> None:
    rcc = fake_rcc()
    deb = fake_deb(tmp_path / "gcompris-qt-data_9.9-1_all.deb", rcc)
    assert read_rcc_from_deb(deb, ["farm.rcc", "erase.rcc"]) == rcc


@pytest.mark.parametrize("use_dpkg", [True, False])
def test_not_a_deb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_dpkg: bool) -> None:
    if not use_dpkg:
        monkeypatch.setattr(demo.shutil, "which", lambda _name: None)
    elif shutil.which("dpkg-deb") is None:
        pytest.skip("needs dpkg-deb")
    bogus = tmp_path / "bogus.deb"
    bogus.write_text("hello")
    with pytest.raises(DemoDataError, match=r"bogus\.deb"):
        read_rcc_from_deb(bogus)
    with pytest.raises(DemoDataError, match="does not exist"):
        read_rcc_from_deb(tmp_path / "absent.deb")


def test_build_from_deb(tmp_path: Path, labels: Path) -> None:
    rcc = fake_rcc()
    deb = fake_deb(tmp_path / "gcompris-qt-data_9.9-1_all.deb", rcc)
    report = build_demo_collection(tmp_path / "demo", deb=deb, labels=labels)
    assert (report.photos, report.taxa) == (5, 4)
    assert "gcompris-qt-data 9.9-1" in (tmp_path / "demo" / "ATTRIBUTION.md").read_text()


def test_download_uses_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = tmp_path / "gcompris-qt-data_3.1-2_all.deb"
    cached.write_bytes(b"x")
    monkeypatch.setattr(demo, "_run", lambda *a, **k: pytest.fail("apt must not run"))
    assert demo.download_deb(tmp_path) == cached


def test_download_without_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo.shutil, "which", lambda _name: None)
    with pytest.raises(DemoDataError, match="--deb FILE"):
        demo.download_deb(tmp_path / "cache")


def test_download_runs_update_once_when_lists_are_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        calls.append(cmd[1:])
        if cmd[1:] == ["download", demo.PACKAGE] and len(calls) == 1:
            return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package x\n")
        if cmd[1] == "download":
            (cwd / "gcompris-qt-data_3.1-2_all.deb").write_bytes(b"deb")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(demo.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(demo, "_run", fake_run)
    deb = demo.download_deb(tmp_path / "cache")
    assert deb.name == "gcompris-qt-data_3.1-2_all.deb"
    assert calls == [["download", demo.PACKAGE], ["update"], ["download", demo.PACKAGE]]


def test_download_failure_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 100, "", "E: Failed to fetch http://mirror\n")

    monkeypatch.setattr(demo.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(demo, "_run", fake_run)
    with pytest.raises(DemoDataError, match=r"Failed to fetch.*--deb FILE"):
        demo.download_deb(tmp_path / "cache")


# --- end to end -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_build_end_to_end(tmp_path: Path) -> None:
    """Downloads gcompris-qt-data with apt (or reuses data/cache) and builds the real collection."""
    cache = Path(__file__).resolve().parents[1] / "data" / "cache"
    if shutil.which("apt-get") is None and demo._cached_deb(cache) is None:
        pytest.skip("needs apt-get or a cached gcompris-qt-data .deb in data/cache")
    dest = tmp_path / "demo"
    report = build_demo_collection(dest, cache_dir=cache)
    assert (report.photos, report.taxa) == (85, 78)
    assert report.warnings == ()
    assert len(list(dest.glob("*/*.jpg"))) == 85
    assert len(list(dest.glob("*/*.json"))) == 85
    with (dest / "manifest.csv").open(newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 85
    for jpg in list(dest.glob("*/*.jpg"))[:10]:
        with Image.open(jpg) as im:
            assert im.mode == "RGB" and min(im.size) >= 100
    assert build_demo_collection(dest, cache_dir=cache).rebuilt is False


def test_taxonomy_rows_cover_the_demo_taxa_the_tables_lack(tmp_path: Path) -> None:
    """The bundled taxonomy rows parse as a collection's taxonomy.csv and complete the lineage
    of every demo taxon below order level (Strigiformes is an order: it has no family)."""
    import shutil

    from core.taxonomy import lineage_for, load_taxonomy_csv

    shutil.copy(demo.TAXONOMY_CSV, tmp_path / "taxonomy.csv")
    overrides = load_taxonomy_csv(tmp_path)
    photos = demo.read_labels()
    taxa = {p.scientific_name.replace("_", " ") for p in photos}
    assert set(overrides) <= taxa
    for name in taxa - {"Strigiformes"}:
        lineage = lineage_for(name, overrides)
        assert lineage.family and lineage.order and lineage.class_, name


def test_build_writes_the_taxonomy_of_its_taxa(
    tmp_path: Path, labels: Path, built: tuple[Path, demo.DemoReport]
) -> None:
    dest, _ = built
    assert (dest / "taxonomy.csv").read_text().splitlines() == [
        "scientific_name,genus,family,order,class"
    ]  # none of the test collection's taxa needs a row
    (dest / "taxonomy.csv").unlink()
    again = build_demo_collection(dest, labels=labels)  # complete: not rebuilt, file restored
    assert again.rebuilt is False and (dest / "taxonomy.csv").is_file()
