"""The photos with no animal built from the demo's package (`kontrol.demo.negatives`)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from kontrol.demo.demo_data import ATTRIBUTION, DemoDataError
from kontrol.demo.negatives import DEFAULT_DIR, LIST_FILE, build_negatives, is_complete
from tests.test_rcc import write_rcc

MONUMENTS = "gcompris/src/activities/explore_monuments/resource"
TOOLS = "gcompris/src/activities/categorization/resource/images/tools"
OTHERS = "gcompris/src/activities/categorization/resource/images/others"
FISHES = "gcompris/src/activities/categorization/resource/images/fishes"


def _webp(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (80, 60), colour).save(buf, "WEBP")
    return buf.getvalue()


def fake_rcc(damaged: bool = False) -> dict[str, bytes]:
    monuments = {
        f"{MONUMENTS}/README": (
            b"Copyright: A. Author\nLicense: CC-BY-SA 4.0\nSource: https://example.org/petra\n"
            b"Files:\nwonders/petra.webp\n\n"
            b"Copyright: B. Author\nLicense: Public Domain\nFiles: germany/brandenburgGate.webp\n"
        ),
        f"{MONUMENTS}/wonders/petra.webp": _webp((200, 150, 90)),
        f"{MONUMENTS}/germany/brandenburgGate.webp": _webp((90, 90, 90)),  # sculpted horses
        f"{MONUMENTS}/key.svg": b"<svg/>",
    }
    categorization = {
        f"{TOOLS}/README": b"Copyright: C. Author\nLicense: CC0-1.0\nFiles:\nhammer1.webp\n",
        f"{TOOLS}/hammer1.webp": b"not a webp" if damaged else _webp((180, 60, 30)),
        f"{TOOLS}/screwDriver.webp": _webp((10, 10, 200)),  # no README entry: left out
        f"{OTHERS}/README": b"Copyright: D. Author\nLicense: CC0-1.0\nFiles: cup.webp\n",
        f"{OTHERS}/cup.webp": _webp((240, 240, 240)),
        f"{FISHES}/README": b"Copyright: E.\nLicense: CC0-1.0\nFiles: tuna.webp\n",
        f"{FISHES}/tuna.webp": _webp((0, 0, 100)),  # an animal folder: never taken
    }
    return {
        "explore_monuments.rcc": write_rcc(monuments),
        "categorization.rcc": write_rcc(categorization, version=2),
    }


def test_builds_credited_photos_with_no_animal(tmp_path: Path) -> None:
    dest = tmp_path / "neg"
    report = build_negatives(dest, rcc=fake_rcc())
    files = sorted(p.name for p in dest.glob("*.jpg"))
    assert files == ["others-cup.jpg", "tools-hammer1.jpg", "wonders-petra.jpg"]
    assert report.photos == 3 and report.rebuilt
    assert report.uncredited == (f"{TOOLS}/screwDriver.webp",)
    sidecar = json.loads((dest / "wonders-petra.json").read_text())
    assert sidecar["licence"] == "CC-BY-SA 4.0" and sidecar["author"] == "A. Author"
    assert sidecar["source"] == "https://example.org/petra"
    with (dest / LIST_FILE).open(newline="") as fh:
        assert [row["file"] for row in csv.DictReader(fh)] == files
    credits = (dest / ATTRIBUTION).read_text()
    assert "`wonders-petra.jpg`: A. Author, CC-BY-SA 4.0" in credits
    with Image.open(dest / "others-cup.jpg") as img:
        assert img.format == "JPEG" and img.size == (80, 60)


def test_a_complete_build_is_kept_and_a_forced_one_redone(tmp_path: Path) -> None:
    dest = tmp_path / "neg"
    build_negatives(dest, rcc=fake_rcc())
    again = build_negatives(dest, rcc={})  # complete: the package is not even read
    assert not again.rebuilt and again.photos == 3
    (dest / "others-cup.jpg").unlink()
    assert not is_complete(dest)
    assert build_negatives(dest, rcc=fake_rcc()).rebuilt and is_complete(dest)


def test_a_failed_build_keeps_the_old_folder_and_leaves_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "neg"
    build_negatives(dest, rcc=fake_rcc())
    before = sorted(p.name for p in dest.iterdir())
    with pytest.raises(DemoDataError, match="hammer1"):
        build_negatives(dest, rcc=fake_rcc(damaged=True), force=True)
    assert sorted(p.name for p in dest.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["neg"]


def test_refuses_a_foreign_folder_and_a_wrong_package(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(DemoDataError, match="not a demo collection"):
        build_negatives(foreign, rcc=fake_rcc())
    assert (foreign / "holiday.jpg").exists()
    monuments_only = {"explore_monuments.rcc": fake_rcc()["explore_monuments.rcc"]}
    with pytest.raises(DemoDataError, match=r"categorization\.rcc is missing"):
        build_negatives(tmp_path / "neg", rcc=monuments_only)
    with pytest.raises(DemoDataError, match="not a valid Qt resource file"):
        build_negatives(tmp_path / "neg", rcc={**fake_rcc(), "categorization.rcc": b"qres"})
    assert not (tmp_path / "neg").exists()


def test_eval_uses_the_built_negatives_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kontrol.evaluation.cli import non_animal_photos

    monkeypatch.chdir(tmp_path)
    samples = non_animal_photos(None)  # nothing built here: the packages' sample photos
    assert all(p.is_file() and "site-packages" in str(p) for p in samples)
    build_negatives(DEFAULT_DIR, rcc=fake_rcc())
    assert [p.name for p in non_animal_photos(None)] == [
        "others-cup.jpg",
        "tools-hammer1.jpg",
        "wonders-petra.jpg",
    ]
    other = tmp_path / "mine"
    other.mkdir()
    Image.new("RGB", (40, 40)).save(other / "wall.png")
    assert [p.name for p in non_animal_photos(str(other))] == ["wall.png"]
