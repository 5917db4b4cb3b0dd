"""The `kontrol` command line: JSON output, and errors as one sentence without a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kontrol.cli import main
from tests.helpers import make_collection, make_image


@pytest.fixture
def env_collection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_models_dir: Path
) -> Path:
    root = tmp_path / "photos"
    make_collection(root, {"Canis_lupus": 3, "Vulpes_vulpes": 3})
    monkeypatch.setenv("KONTROL_IMAGES_DIR", str(root))
    monkeypatch.setenv("KONTROL_INDEX_DIR", str(tmp_path / "index"))
    monkeypatch.setenv("KONTROL_MODELS_DIR", str(shared_models_dir))
    return root


def test_index_search_classify_json(env_collection: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["index", "--quiet"]) == 0
    assert "Indexed 6 photos" in capsys.readouterr().out
    query = next((env_collection / "Vulpes_vulpes").glob("*.jpg"))
    assert main(["search", str(query), "--top-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and hits[0]["uuid"] == query.stem and hits[0]["class"] == "Vulpes vulpes"
    assert main(["search", str(query), "--species", "Canis lupus", "--json"]) == 0
    assert {h["class"] for h in json.loads(capsys.readouterr().out)} == {"Canis lupus"}
    assert main(["classify", str(query), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"species", "confidence", "probabilities"} <= set(result)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["search", "{missing}"], {}, "not indexed yet"),
        (["search", "{text}"], {}, "not an image"),
        (["index"], {"KONTROL_BATCH_SIZE": "many"}, "KONTROL_BATCH_SIZE"),
        (["index"], {"KONTROL_MODEL": "resnet9000"}, "KONTROL_MODEL"),
        (["index"], {"KONTROL_IMAGES_DIR": "/nonexistent/photos"}, "does not exist"),
    ],
)
def test_errors_are_one_clear_line(
    env_collection: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a photo")
    image = tmp_path / "query.jpg"
    make_image(3).save(image)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    argv = [a.format(missing=image, text=text) for a in argv]
    if "{text}" in " ".join(argv) or argv[-1] == str(text):
        assert main(["index", "--quiet"]) == 0
        capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert message.lower() in err.lower() and "Traceback" not in err
    assert err.startswith("kontrol: ")


def test_unknown_species_suggests_names(
    env_collection: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["index", "--quiet"]) == 0
    query = next((env_collection / "Canis_lupus").glob("*.jpg"))
    assert main(["search", str(query), "--species", "Canis lupis"]) == 2
    assert "Canis lupus" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).with_name("kontrol")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("demo-data", "index", "search", "classify", "eval", "train", "bot", "run"):
        assert command in out


def test_run_without_token_indexes_answers_and_explains(
    env_collection: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["run"]) == 0
    out = capsys.readouterr().out
    assert "Index: 6 photos of 2 species" in out
    assert "Demo query:" in out and "Most similar photos:" in out
    assert "@BotFather" in out and "KONTROL_BOT_TOKEN" in out
    assert main(["run"]) == 0  # second start: incremental, nothing re-embedded
    assert "(0 embedded now" in capsys.readouterr().out
