"""Issue 10: a collection with a link loop, unreadable folders or broken links still scans.

`ln -s . coll/Panthera_tigris/self` used to crash `kontrol index` with an OSError traceback
("Too many levels of symbolic links") after walking self/self/self/... 40 levels deep.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from PIL import Image

from core.collection import ScanReport, SkippedEntry, scan_collection, scan_collection_report


def _photo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 40), (200, 10, 10)).save(path)
    return path


@pytest.fixture
def coll(tmp_path: Path) -> Path:
    root = tmp_path / "coll"
    _photo(root / "Panthera_tigris" / "t1.jpg")
    _photo(root / "Panthera_tigris" / "sub" / "t2.jpg")
    _photo(root / "Canis_lupus" / "w1.jpg")
    return root


def _paths(report: ScanReport) -> list[str]:
    return [f.path for f in report.files]


def test_link_loop_is_skipped_and_reported(coll: Path, caplog: pytest.LogCaptureFixture) -> None:
    (coll / "Panthera_tigris" / "self").symlink_to(".")
    (coll / "Panthera_tigris" / "sub" / "up").symlink_to("../..")  # back to the root
    report = scan_collection_report(coll)
    assert _paths(report) == [
        "Canis_lupus/w1.jpg",
        "Panthera_tigris/sub/t2.jpg",
        "Panthera_tigris/t1.jpg",
    ]
    loop = "a link back to a folder that contains it (a loop)"
    assert report.skipped == [
        SkippedEntry("Panthera_tigris/self", loop),
        SkippedEntry("Panthera_tigris/sub/up", loop),
    ]
    with caplog.at_level(logging.WARNING, logger="core.collection"):
        files = scan_collection(coll)  # the old entry point: same files, warnings logged
    assert files == report.files
    assert "Panthera_tigris/self" in caplog.text and "loop" in caplog.text


def test_chain_of_links_that_never_ends(coll: Path) -> None:
    (coll / "Canis_lupus" / "a").symlink_to("b")
    (coll / "Canis_lupus" / "b").symlink_to("a")
    report = scan_collection_report(coll)
    assert len(report.files) == 3
    reasons = {s.path: s.reason for s in report.skipped}
    assert reasons == {
        "Canis_lupus/a": "a chain of links that never ends",
        "Canis_lupus/b": "a chain of links that never ends",
    }


def test_linked_folders_are_followed_once_and_the_real_one_names_the_species(
    coll: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere" / "Ursus_arctos"
    _photo(outside / "b1.jpg")
    (coll / "Ursus_arctos").symlink_to(outside)  # a species kept on another disk
    (coll / "Aardvark_link").symlink_to(coll / "Canis_lupus")  # sorts first, still not wolves
    report = scan_collection_report(coll)
    by_path = {f.path: f.species for f in report.files}
    assert by_path["Ursus_arctos/b1.jpg"] == "Ursus arctos"
    assert by_path["Canis_lupus/w1.jpg"] == "Canis lupus"
    assert not any(p.startswith("Aardvark_link/") for p in by_path)
    assert report.skipped == [
        SkippedEntry("Aardvark_link", "the same folder as 'Canis_lupus', scanned once")
    ]


def test_unreadable_folder_is_skipped_with_its_reason(
    coll: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # chmod 000 does not stop root (as in containers), so the refusal is simulated.
    real_scandir = os.scandir

    def scandir(path):  # type: ignore[no-untyped-def]
        if Path(path).name == "Canis_lupus":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = scan_collection_report(coll)
    assert _paths(report) == ["Panthera_tigris/sub/t2.jpg", "Panthera_tigris/t1.jpg"]
    assert report.skipped == [
        SkippedEntry("Canis_lupus", "folder cannot be read (Permission denied)")
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their mode")
def test_unreadable_folder_for_real(coll: Path) -> None:
    folder = coll / "Canis_lupus"
    folder.chmod(0)
    try:
        report = scan_collection_report(coll)
    finally:
        folder.chmod(0o755)
    assert [s.path for s in report.skipped] == ["Canis_lupus"]


def test_broken_links_and_odd_files(coll: Path) -> None:
    (coll / "Canis_lupus" / "gone.jpg").symlink_to("nowhere.jpg")
    os.mkfifo(coll / "Canis_lupus" / "pipe.jpg")
    (coll / "Canis_lupus" / "IMG_0002.HEIC").write_bytes(b"")  # iPhone photos count too
    report = scan_collection_report(coll)
    assert "Canis_lupus/IMG_0002.HEIC" in _paths(report)
    assert report.skipped == [
        SkippedEntry("Canis_lupus/gone.jpg", "a broken link (its target does not exist)"),
        SkippedEntry("Canis_lupus/pipe.jpg", "not a regular file"),
    ]


def test_plain_collection_is_unchanged(coll: Path) -> None:
    (coll / "loose.jpg").write_bytes(b"x")  # no species folder: ignored, not reported
    (coll / "Canis_lupus" / ".hidden.jpg").write_bytes(b"x")
    (coll / "Canis_lupus" / "w1.json").write_text("{}")
    report = scan_collection_report(coll)
    assert report.skipped == []
    assert [(f.path, f.species, f.uuid) for f in report.files] == [
        ("Canis_lupus/w1.jpg", "Canis lupus", "w1"),
        ("Panthera_tigris/sub/t2.jpg", "Panthera tigris", "t2"),
        ("Panthera_tigris/t1.jpg", "Panthera tigris", "t1"),
    ]
