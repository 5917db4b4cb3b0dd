"""Taxonomic lineage (genus, family, order, class) of a scientific name, from packaged tables.

A near miss is worth telling apart from a wild one: a lynx returned for a cat shares the family
Felidae. The tables are built offline from WordNet 3.0 by `scripts/build_taxonomy.py`, so the
runtime needs neither WordNet nor the internet:

- `data/genus_lineage.csv`: genus -> family, order, class for about 1600 animal genera;
- `data/imagenet_lineage.csv`: the lineage of each of the 398 ImageNet animal classes.

A collection corrects or extends them with `taxonomy.csv` in its root (columns scientific_name,
genus, family, order, class; an empty cell defers to the tables). Names follow WordNet's 2006
classification where the table has no better one ("Salientia" for frogs, "Osteichthyes").
"""

from __future__ import annotations

import csv
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from core.errors import ConfigError

DATA = Path(__file__).parent / "data"
GENUS_TABLE = DATA / "genus_lineage.csv"
IMAGENET_TABLE = DATA / "imagenet_lineage.csv"
OVERRIDES_FILE = "taxonomy.csv"
RANKS = ("species", "genus", "family", "order", "class")
# The payload fields the vector store indexes and filters on.
PAYLOAD_RANKS = ("genus", "family", "order", "class")
IMAGENET_HEADER = ["imagenet_index", "wnid", "scientific_name", *PAYLOAD_RANKS, "phylum"]
_LATIN = re.compile(r"[A-Z][A-Za-z-]*")

Overrides = Mapping[str, Mapping[str, str]]


class TaxonomyFileError(ConfigError):
    """A collection's taxonomy.csv cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Lineage:
    """What is known of one taxon's ranks; None where unknown."""

    species: str | None = None
    genus: str | None = None
    family: str | None = None
    order: str | None = None
    class_: str | None = None

    def get(self, rank: str) -> str | None:
        """The name at `rank` (one of RANKS; "class" reads `class_`)."""
        if rank not in RANKS:
            raise ValueError(f"unknown rank {rank!r}; ranks are {', '.join(RANKS)}")
        return getattr(self, "class_" if rank == "class" else rank)


def normalize_name(name: str) -> str:
    """ "Felis_catus " -> "Felis catus": folder names and CSV cells compare alike."""
    return " ".join(name.replace("_", " ").split())


def _read(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text(encoding="utf-8").splitlines()))


@lru_cache(maxsize=1)
def _imagenet_rows() -> tuple[dict[str, str], ...]:
    rows = _read(IMAGENET_TABLE)
    if [int(r["imagenet_index"]) for r in rows] != list(range(len(rows))):
        raise ValueError(f"{IMAGENET_TABLE.name} must list ImageNet classes in index order")
    return tuple(rows)


@lru_cache(maxsize=1)
def _parents() -> dict[str, dict[str, dict[str, str]]]:
    """Per rank, name -> its higher ranks: genera from their table, families and orders by
    majority over every genus and ImageNet class that names them."""
    genera = _read(GENUS_TABLE)
    parents: dict[str, dict[str, dict[str, str]]] = {
        "genus": {r["genus"]: {k: v for k, v in r.items() if k != "genus" and v} for r in genera}
    }
    votes: dict[tuple[str, str], dict[str, Counter[str]]] = defaultdict(
        lambda: defaultdict(Counter)
    )
    for row in [*genera, *_imagenet_rows()]:
        for i, lower in enumerate(("family", "order"), start=2):
            if row[lower]:
                for higher in RANKS[i + 1 :]:
                    if row[higher]:
                        votes[lower, row[lower]][higher][row[higher]] += 1
    for (rank, name), by_rank in votes.items():
        parents.setdefault(rank, {})[name] = {h: c.most_common(1)[0][0] for h, c in by_rank.items()}
    parents.setdefault("class", {})
    for row in [*genera, *_imagenet_rows()]:
        if row["class"]:
            parents["class"].setdefault(row["class"], {})
    return parents


def _rank_of_single(word: str) -> str | None:
    """The rank a one-word name ("Oncorhynchus", "Tetraodontidae", "Strigiformes") stands for."""
    parents = _parents()
    for rank in PAYLOAD_RANKS:
        if word in parents[rank]:
            return rank
    if word.endswith("idae"):
        return "family"
    if word.endswith("formes"):
        return "order"
    if word.endswith(("inae", "ini", "oidea")):
        return None  # subfamily, tribe, superfamily: no field to put it in
    return "genus"


def lineage_for(species: str, overrides: Overrides | None = None) -> Lineage:
    """The lineage of a collection's scientific name ("Panthera tigris", "Panthera_tigris").

    The genus is the binomial's first word (a one-word name is placed by the tables or its
    suffix), an override row for the name sets any rank, and each missing higher rank comes from
    the nearest known lower one: genus -> family -> order -> class.
    """
    name = normalize_name(species)
    words = name.split()
    found: dict[str, str] = {}
    if len(words) >= 2:
        found = {"species": name, "genus": words[0]}
    elif words and (rank := _rank_of_single(words[0])):
        found = {rank: words[0]}
    found.update({r: v for r, v in (overrides or {}).get(name, {}).items() if v})
    parents = _parents()
    for i, rank in enumerate(RANKS[2:], start=2):
        nearest_first = reversed(RANKS[1:i])
        known = (parents[lower].get(found[lower], {}) for lower in nearest_first if lower in found)
        if rank not in found and (value := next((k[rank] for k in known if rank in k), None)):
            found[rank] = value
    return _make(found)


def imagenet_lineage(index: int, overrides: Overrides | None = None) -> Lineage:
    """The lineage of ImageNet animal class `index` (0..397), for the fallback's answer.

    A collection's override of the class's scientific name applies here too, so the fallback
    and the collection agree.
    """
    rows = _imagenet_rows()
    if not 0 <= index < len(rows):
        raise IndexError(f"ImageNet animal classes are 0..{len(rows) - 1}, not {index}")
    row = rows[index]
    name = row["scientific_name"]
    if overrides and name in overrides:
        return lineage_for(name, overrides)
    found = {r: row[r] for r in PAYLOAD_RANKS if row[r]}
    if len(name.split()) >= 2:
        found["species"] = name
    return _make(found)


def _make(found: Mapping[str, str]) -> Lineage:
    return Lineage(**{("class_" if r == "class" else r): found.get(r) for r in RANKS})


def shared_rank(a: Lineage, b: Lineage) -> str | None:
    """The most specific rank two lineages share, None when not even the class.

    Species compare by binomial: a dog (Canis lupus familiaris) is a Canis lupus.
    """
    if a.species and b.species and a.species.split()[:2] == b.species.split()[:2]:
        return "species"
    for rank in PAYLOAD_RANKS:
        if (value := a.get(rank)) and value == b.get(rank):
            return rank
    return None


def rank_names(lineage: Lineage) -> dict[str, str]:
    """Payload fields `genus`, `family`, `order`, `class` of a lineage; unknown ranks left out."""
    return {r: v for r in PAYLOAD_RANKS if (v := lineage.get(r))}


def collection_lineage(root: Path | str) -> Callable[[str], dict[str, str]]:
    """Genus, family, order and class of a species name as indexing stores them for the
    collection at `root`: the packaged tables with its taxonomy.csv on top (TaxonomyFileError
    for a broken file)."""
    overrides = load_taxonomy_csv(root)

    def lineage(name: str) -> dict[str, str]:
        return rank_names(lineage_for(name, overrides))

    return lineage


def load_taxonomy_csv(root: Path | str) -> dict[str, dict[str, str]]:
    """A collection's overrides from `<root>/taxonomy.csv`, keyed by scientific name; {} if none.

    Raises TaxonomyFileError, one sentence naming the file, line and fault, for a file that
    cannot be read as intended: a misspelt column would otherwise be ignored in silence.
    """
    path = Path(root) / OVERRIDES_FILE
    if not path.is_file():
        return {}

    def fail(reason: str) -> TaxonomyFileError:
        return TaxonomyFileError(f"{path} {reason}.")

    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise fail(f"cannot be read as UTF-8 text ({err.__class__.__name__})") from err
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in reader.fieldnames or []]
    allowed = ("scientific_name", *PAYLOAD_RANKS)
    if "scientific_name" not in header or not set(header) <= set(allowed):
        raise fail(f"must have a header row of {', '.join(allowed)}; it has {', '.join(header)}")
    reader.fieldnames = header
    out: dict[str, dict[str, str]] = {}
    for row in reader:
        where = f"line {reader.line_num}"
        if None in row:
            raise fail(f"{where} has more cells than the header")
        name = normalize_name(row["scientific_name"] or "")
        if not name:
            raise fail(f"{where} has no scientific_name")
        if name in out:
            raise fail(f"{where} repeats {name!r}")
        values = {r: (row.get(r) or "").strip() for r in PAYLOAD_RANKS}
        for rank, value in values.items():
            if value and not _LATIN.fullmatch(value):
                raise fail(f"{where} has {rank} {value!r}, which is not one capitalised Latin name")
        out[name] = {r: v for r, v in values.items() if v}
    return out
