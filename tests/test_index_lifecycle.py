"""The index over its life: migration from the seed format, export/import, empty roots, damage
and repair, unreadable files, filters on lineage - all through the engine and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from core import seed_format
from core.cli import main
from core.engine import Engine
from core.indexer import EmptyCollectionError
from core.settings import Settings
from tests.helpers import TinyEmbedder, make_image


def _engine(settings: Settings, embedder: TinyEmbedder | None = None) -> Engine:
    return Engine(settings, embedder=embedder or TinyEmbedder())


@pytest.fixture
def tiny_cli(monkeypatch: pytest.MonkeyPatch, tiny_settings: Settings) -> Settings:
    """The CLI on the tiny collection with the tiny embedder (no model weights)."""
    import core.embedders

    monkeypatch.setattr(core.embedders, "create_embedder", lambda settings: TinyEmbedder())
    for key, value in (
        ("KONTROL_IMAGES_DIR", tiny_settings.images_dir),
        ("KONTROL_INDEX_DIR", tiny_settings.index_dir),
        ("KONTROL_MODELS_DIR", tiny_settings.models_dir),
        ("KONTROL_INDEX_TYPE", "flat"),
    ):
        monkeypatch.setenv(key, str(value))
    return tiny_settings


def test_export_then_import_serves_the_same_answers(tiny_cli: Settings, tmp_path: Path, capsys):
    assert main(["index", "--quiet"]) == 0
    query = make_image(3)
    before = _engine(tiny_cli).find_similar(query, top_k=5)
    out = tmp_path / "seed"
    assert main(["export", "--format", "seed", "--out", str(out)]) == 0
    doc = json.loads((out / seed_format.METADATA_FILE).read_text())
    assert len(doc["images"]) == 13 and {"uuid", "path", "scientific_name"} <= set(doc["images"][0])
    assert np.load(out / seed_format.EMBEDDINGS_FILE).shape == (13, TinyEmbedder.dim)
    # a fresh index directory served from the exported files, no re-embedding
    other = tmp_path / "other-index"
    capsys.readouterr()
    assert main(["import", str(out), "--index-dir", str(other)]) == 0
    assert "Imported 13 records" in capsys.readouterr().out
    settings = tiny_cli.model_copy(update={"index_dir": other})
    after = _engine(settings).find_similar(query, top_k=5)
    assert [h["uuid"] for h in after] == [h["uuid"] for h in before]
    assert [h["similarity"] for h in after] == pytest.approx([h["similarity"] for h in before])


def test_previous_index_format_is_migrated_without_re_embedding(tiny_settings: Settings) -> None:
    embedder = TinyEmbedder()
    _engine(tiny_settings, embedder).reindex()
    exported = Path(tiny_settings.index_dir).parent / "old"
    from core.catalog import Catalog

    catalog = Catalog(tiny_settings.index_dir, read_only=True)
    seed_format.export_from(_engine(tiny_settings).store, exported, catalog=catalog)
    # an index directory as the previous version left it: only the three files
    legacy = Path(tiny_settings.index_dir).parent / "legacy"
    shutil.copytree(exported, legacy)
    settings = tiny_settings.model_copy(update={"index_dir": legacy})
    embedder.embedded = 0
    engine = _engine(settings, embedder)
    report = engine.reindex()
    assert embedder.embedded == 0 and report.added == 0 and report.unchanged == 13
    assert engine.store.count() == 13
    assert (legacy / seed_format.MIGRATED_DIR / seed_format.METADATA_FILE).exists()
    assert not (legacy / seed_format.METADATA_FILE).exists()


def test_empty_or_unmounted_root_never_empties_the_index(tiny_settings: Settings) -> None:
    engine = _engine(tiny_settings)
    engine.reindex()
    root = Path(tiny_settings.images_dir)
    moved = root.parent / "elsewhere"
    root.rename(moved)
    root.mkdir()  # an empty mount point
    with pytest.raises(EmptyCollectionError, match="mounted"):
        engine.reindex()
    assert engine.store.count() == 13
    report = engine.reindex(allow_empty=True)
    assert report.removed == 13 and engine.store.count() == 0


def test_one_unreadable_file_does_not_rewrite_anything_on_later_runs(
    tiny_settings: Settings,
) -> None:
    root = Path(tiny_settings.images_dir)
    (root / "Canis_lupus" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    embedder = TinyEmbedder()
    engine = _engine(tiny_settings, embedder)
    first = engine.reindex()
    assert [p for p, _ in first.skipped] == ["Canis_lupus/broken.jpg"]
    generation = engine.store.info().generation
    embedder.embedded = 0
    again = engine.reindex()
    assert not again.changed and embedder.embedded == 0
    assert engine.store.info().generation == generation  # no new generation, no retraining
    assert [p for p, _ in again.skipped] == ["Canis_lupus/broken.jpg"]  # still listed


def test_damaged_vectors_are_found_and_repaired_by_an_incremental_run(
    tiny_settings: Settings, capsys
) -> None:
    embedder = TinyEmbedder()
    engine = _engine(tiny_settings, embedder)
    engine.reindex()
    store = engine.store
    meta = store._meta()
    path = Path(tiny_settings.index_dir) / meta["vectors_file"]
    raw = bytearray(path.read_bytes())
    dim = TinyEmbedder.dim
    raw[2 * dim * 4 : 3 * dim * 4] = np.zeros(dim, np.float32).tobytes()  # a zeroed row
    raw[5 * dim * 4 + 1] ^= 0x40  # one flipped bit
    path.write_bytes(bytes(raw))
    assert len(store.verify()["bad_ids"]) == 2
    embedder.embedded = 0
    report = engine.reindex()
    assert report.repaired == 2 and embedder.embedded == 2
    assert store.verify()["bad_ids"] == [] and store.count() == 13


def test_lineage_filters_through_the_engine(tiny_settings: Settings) -> None:
    engine = _engine(tiny_settings)
    engine.reindex()
    hits = engine.find_similar(make_image(1), top_k=10, where={"family": "Canidae"})
    assert len(hits) == 9  # 5 Canis lupus + 4 Vulpes vulpes
    assert {h["class"] for h in hits} == {"Canis lupus", "Vulpes vulpes"}
    hits = engine.find_similar(make_image(1), top_k=10, where={"order": "Carnivora"})
    assert len(hits) == 10


def test_search_cli_takes_many_images_and_checks_top_k(tiny_cli: Settings, tmp_path, capsys):
    assert main(["index", "--quiet"]) == 0
    paths = []
    for i in range(3):
        p = tmp_path / f"q{i}.png"
        make_image(100 + i).save(p)
        paths.append(str(p))
    capsys.readouterr()
    assert main(["search", *paths, "--json", "--top-k", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == paths and all(len(v) == 2 for v in out.values())
    assert main(["search", paths[0], "--top-k", "0"]) == 2
    assert "--top-k must be at least 1" in capsys.readouterr().err
    assert main(["search", paths[0], "--where", "family=Felidae", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits and {h["class"] for h in hits} == {"Felis catus"}


def test_symlink_loop_is_skipped_and_listed_not_a_crash(tiny_cli: Settings, capsys) -> None:
    root = Path(tiny_cli.images_dir)
    (root / "Canis_lupus" / "self").symlink_to(".")
    assert main(["index", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "Indexed 13 photos" in captured.out
    assert "Canis_lupus/self" in captured.err


def test_migrate_cli_copies_the_store_without_re_embedding(tiny_cli: Settings, tmp_path, capsys):
    assert main(["index", "--quiet"]) == 0
    target = tmp_path / "qdrant-copy"
    capsys.readouterr()
    assert main(["migrate", "--to", "qdrant", "--to-index-dir", str(target)]) == 0
    out = capsys.readouterr().out
    assert "Copied 13 records" in out and "overlap" in out
    settings = tiny_cli.model_copy(update={"store": "qdrant", "index_dir": target})
    engine = _engine(settings)
    hits = engine.find_similar(make_image(2), top_k=3)
    engine.close()
    assert len(hits) == 3
    assert main(["migrate", "--to", "faiss"]) == 2  # the target is the source
    assert "target is the source" in capsys.readouterr().err
