"""Adding, removing and restoring single photos without a collection scan (core.curation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from core import curation
from core.catalog import Catalog
from core.curation import (
    CurationError,
    PhotoGoneError,
    add_photo,
    clean_species_name,
    remove_photo,
    restore_photo,
)
from core.engine import Engine
from core.settings import Settings
from tests.helpers import TinyEmbedder, make_image


@pytest.fixture
def engine(tiny_settings: Settings) -> Engine:
    engine = Engine(tiny_settings, embedder=TinyEmbedder())
    engine.reindex(train="skip")
    return engine


def test_clean_species_name() -> None:
    assert clean_species_name("canis  LUPUS") == "Canis lupus"
    assert clean_species_name("Canis_lupus_familiaris") == "Canis lupus familiaris"
    for bad in ("", "Canis", "<b>Canis</b> lupus", "Canis/../x y", "x" * 500 + " y", ".a b"):
        assert clean_species_name(bad) is None, bad


def test_add_indexes_one_photo_without_a_scan(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("core.indexer.scan_collection_report", _no_scan)
    root = Path(engine.settings.images_dir)
    embedded_before = engine.embedder.embedded
    image = make_image(4321)
    image.info["exif"] = b"Exif\x00\x00fake"
    added = add_photo(engine, image, "vulpes VULPES", {"added_by": {"id": 7}})
    assert engine.embedder.embedded == embedded_before + 1
    assert added.species == "Vulpes vulpes" and added.count == 5
    saved = root / added.path
    assert saved.parent.name == "Vulpes_vulpes" and saved.suffix == ".jpg"
    with Image.open(saved) as reopened:
        assert reopened.format == "JPEG" and "exif" not in reopened.info
    assert json.loads(saved.with_suffix(".json").read_text())["added_by"] == {"id": 7}
    hits = engine.find_similar(Image.open(saved), top_k=1)
    assert hits[0]["uuid"] == added.uuid and hits[0]["similarity"] > 0.999
    catalog = Catalog(engine.settings.index_dir)
    assert catalog.entries()[added.path].id == added.uuid
    catalog.close()
    monkeypatch.undo()
    report = engine.reindex(train="skip")  # a later re-index sees nothing new
    assert report.added == 0 and report.unchanged == 14


def test_add_new_species_then_remove_and_restore(engine: Engine) -> None:
    root = Path(engine.settings.images_dir)
    added = add_photo(engine, make_image(1), "Lynx lynx")
    assert added.count == 1 and "Lynx lynx" in engine.species()
    removed = remove_photo(engine, added.uuid)
    assert removed.trash_path.startswith(".trash/Lynx_lynx/")
    assert (root / removed.trash_path).is_file() and not (root / added.path).exists()
    assert (root / removed.trash_path).with_suffix(".json").is_file()
    assert "Lynx lynx" not in engine.species() and removed.count == 0
    with pytest.raises(PhotoGoneError):
        remove_photo(engine, added.uuid)
    assert engine.reindex(train="skip").added == 0  # the trash is not scanned
    back = restore_photo(engine, removed.trash_path, removed.path)
    assert back.uuid == added.uuid and back.count == 1 and (root / added.path).is_file()
    with pytest.raises(PhotoGoneError):
        restore_photo(engine, removed.trash_path, removed.path)


def test_failed_add_leaves_nothing(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(engine.settings.images_dir)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(curation.Catalog, "put", broken)
    with pytest.raises(OSError):
        add_photo(engine, make_image(2), "Lynx lynx")
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert engine.store.count() == 13
    with pytest.raises(CurationError):
        add_photo(engine, make_image(2), "<script>")


def _no_scan(root: Path) -> list:
    raise AssertionError("the collection must not be scanned for one photo")
