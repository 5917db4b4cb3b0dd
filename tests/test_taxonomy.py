"""Lineage of scientific names from the packaged WordNet-derived tables and a collection's overrides."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from core.errors import ConfigError, KontrolError
from core.imagenet import NUM_ANIMALS, animal_classes
from core.taxonomy import (
    GENUS_TABLE,
    IMAGENET_TABLE,
    Lineage,
    TaxonomyFileError,
    collection_lineage,
    imagenet_lineage,
    lineage_for,
    load_taxonomy_csv,
    rank_names,
    shared_rank,
)


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text(encoding="utf-8").splitlines()))


def test_genus_table_shape() -> None:
    rows = _rows(GENUS_TABLE)
    assert list(rows[0]) == ["genus", "family", "order", "class"]
    assert len(rows) >= 1500
    genera = [r["genus"] for r in rows]
    assert len(set(genera)) == len(genera)
    assert all(g.isalpha() and g[0].isupper() for g in genera)
    assert sum(1 for r in rows if r["family"]) >= 1400


def test_imagenet_table_matches_the_animal_table() -> None:
    rows = _rows(IMAGENET_TABLE)
    assert list(rows[0]) == [
        "imagenet_index",
        "wnid",
        "scientific_name",
        "genus",
        "family",
        "order",
        "class",
        "phylum",
    ]
    assert len(rows) == NUM_ANIMALS
    assert [r["scientific_name"] for r in rows] == [a.scientific_name for a in animal_classes()]
    assert rows[0]["wnid"] == "n01440764"  # tench
    assert rows[-1]["wnid"] == "n02655020"  # puffer
    wnids = [r["wnid"] for r in rows]
    assert wnids == sorted(wnids)  # ImageNet class i is the i-th smallest wnid
    assert all(r["phylum"] for r in rows)
    assert sum(1 for r in rows if r["family"]) >= 350


@pytest.mark.parametrize(
    ("name", "genus", "family", "order", "class_"),
    [
        ("Felis catus", "Felis", "Felidae", "Carnivora", "Mammalia"),
        ("Canis lupus", "Canis", "Canidae", "Carnivora", "Mammalia"),
        ("Panthera_tigris", "Panthera", "Felidae", "Carnivora", "Mammalia"),
        ("Turdus merula", "Turdus", "Turdidae", "Passeriformes", "Aves"),
        ("Gallus gallus domesticus", "Gallus", "Phasianidae", "Galliformes", "Aves"),
        # A modern genus WordNet lacks (it says Carpodacus), added from the ImageNet table.
        ("Haemorhous mexicanus", "Haemorhous", "Fringillidae", "Passeriformes", "Aves"),
    ],
)
def test_lineage_from_binomial(name: str, genus: str, family: str, order: str, class_: str) -> None:
    lin = lineage_for(name)
    assert lin == Lineage(name.replace("_", " "), genus, family, order, class_)


def test_unknown_genus_gives_genus_only() -> None:
    assert lineage_for("Papilio machaon") == Lineage("Papilio machaon", "Papilio")


def test_one_word_names_are_placed_by_rank() -> None:
    assert lineage_for("Oncorhynchus").genus == "Oncorhynchus"
    assert lineage_for("Oncorhynchus").species is None
    tetra = lineage_for("Tetraodontidae")
    assert (tetra.genus, tetra.family, tetra.class_) == (None, "Tetraodontidae", "Osteichthyes")
    owls = lineage_for("Strigiformes")
    assert (owls.family, owls.order, owls.class_) == (None, "Strigiformes", "Aves")
    assert lineage_for("") == Lineage()


def test_imagenet_lineage() -> None:
    tabby = imagenet_lineage(281)
    assert tabby == Lineage("Felis catus", "Felis", "Felidae", "Carnivora", "Mammalia")
    assert tabby == lineage_for("Felis catus")  # fallback and collection agree
    crane = imagenet_lineage(134)  # a family-level class has no genus or species
    assert (crane.species, crane.genus, crane.family, crane.class_) == (
        None,
        None,
        "Gruidae",
        "Aves",
    )
    with pytest.raises(IndexError):
        imagenet_lineage(NUM_ANIMALS)


def test_shared_rank() -> None:
    cat, lion = lineage_for("Felis catus"), lineage_for("Panthera leo")
    assert shared_rank(cat, lineage_for("Felis_catus")) == "species"
    assert shared_rank(lineage_for("Canis lupus familiaris"), lineage_for("Canis lupus")) == (
        "species"
    )
    assert shared_rank(cat, lineage_for("Felis silvestris")) == "genus"
    assert shared_rank(cat, lion) == "family"
    assert shared_rank(cat, lineage_for("Canis lupus")) == "order"
    assert shared_rank(cat, lineage_for("Equus caballus")) == "class"
    assert shared_rank(cat, lineage_for("Turdus merula")) is None
    assert shared_rank(Lineage(), Lineage()) is None


def test_rank_names() -> None:
    assert rank_names(lineage_for("Felis catus")) == {
        "genus": "Felis",
        "family": "Felidae",
        "order": "Carnivora",
        "class": "Mammalia",
    }
    assert rank_names(lineage_for("Papilio machaon")) == {"genus": "Papilio"}


def _write(root: Path, text: str) -> None:
    (root / "taxonomy.csv").write_text(text, encoding="utf-8")


def test_override_wins_and_fills_higher_ranks(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "scientific_name,genus,family,order,class\n"
        "Papilio_machaon,,Papilionidae,Lepidoptera,Insecta\n"
        "Felis concolor,Puma,,,\n"
        "Felis catus,,Felidae,,\n",
    )
    overrides = load_taxonomy_csv(tmp_path)
    assert lineage_for("Papilio machaon", overrides) == Lineage(
        "Papilio machaon", "Papilio", "Papilionidae", "Lepidoptera", "Insecta"
    )
    puma = lineage_for("Felis concolor", overrides)  # a new genus brings its own family
    assert (puma.genus, puma.family, puma.order) == ("Puma", "Felidae", "Carnivora")
    assert imagenet_lineage(281, overrides) == lineage_for("Felis catus")


def test_no_taxonomy_csv_means_no_overrides(tmp_path: Path) -> None:
    assert load_taxonomy_csv(tmp_path) == {}
    assert collection_lineage(tmp_path)("Felis catus") == rank_names(lineage_for("Felis catus"))


def test_collection_lineage_reads_the_collection_file(tmp_path: Path) -> None:
    """What the tuning scripts grade rank answers by: the ranks indexing would store."""
    _write(
        tmp_path,
        "scientific_name,genus,family,order,class\nPapilio_machaon,,Papilionidae,Lepidoptera,Insecta\n",
    )
    lineage = collection_lineage(tmp_path)
    assert lineage("Papilio machaon") == {
        "genus": "Papilio",
        "family": "Papilionidae",
        "order": "Lepidoptera",
        "class": "Insecta",
    }


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("scientific_name,familly\nFelis catus,Felidae\n", "header row"),
        ("genus,family\nFelis,Felidae\n", "header row"),
        ("scientific_name,family\nFelis catus,Felidae,extra\n", "line 2 has more cells"),
        ("scientific_name,family\n,Felidae\n", "line 2 has no scientific_name"),
        ("scientific_name,family\nFelis catus,Felidae\nFelis_catus,Felidae\n", "line 3 repeats"),
        ("scientific_name,family\nFelis catus,Feli dae\n", "not one capitalised Latin name"),
    ],
)
def test_malformed_taxonomy_csv(tmp_path: Path, text: str, fault: str) -> None:
    _write(tmp_path, text)
    with pytest.raises(TaxonomyFileError, match=fault) as err:
        load_taxonomy_csv(tmp_path)
    assert isinstance(err.value, ConfigError) and isinstance(err.value, KontrolError)
    message = str(err.value)
    assert message.endswith(".") and "taxonomy.csv" in message and "\n" not in message


def test_undecodable_taxonomy_csv(tmp_path: Path) -> None:
    (tmp_path / "taxonomy.csv").write_bytes(b"scientific_name,family\n\xff\xfe,Felidae\n")
    with pytest.raises(TaxonomyFileError, match="UTF-8"):
        load_taxonomy_csv(tmp_path)
