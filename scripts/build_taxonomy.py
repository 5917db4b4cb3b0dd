"""Build `core/data/imagenet_lineage.csv` and `core/data/genus_lineage.csv` from WordNet 3.0.

Run once, offline, after `apt-get install wordnet-base`; the CSVs it writes are committed so the
runtime needs neither WordNet nor the internet.

    python scripts/build_taxonomy.py [--wordnet /usr/share/wordnet] [--out core/data]

WordNet 3.0 is the hierarchy behind ImageNet-1k: each class is a noun synset, and WordNet also has
synsets for taxa ("genus Felis", "family Felidae", ...) linked by member-holonym pointers (`#m`:
"is a member of"): species -> genus -> family -> order -> class -> phylum -> kingdom. A taxon's
rank is the rank synset ("genus", "family", ...) its hypernym chain reaches ("genus Felis" ->
"mammal genus" -> "genus"); the category ("mammal genus") also gives the class where a genus's
own chain is broken. Where the curated table `core/data/imagenet_animals.csv` disagrees with
WordNet's 2006 classification (its genus, or the group a class stands for), the table wins.

The ImageNet wnids are not stored in the repository: ImageNet-1k class i is the i-th smallest of
its 1000 wnids, so the script finds, for each animal class name, the animal synset with that name
such that the offsets strictly increase with the index, and fails if that is not unique.
"""

from __future__ import annotations

import argparse
import csv
import heapq
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "core" / "data"
ANIMALS = DATA / "imagenet_animals.csv"
MAJOR = ("genus", "family", "order", "class", "phylum")
# The rank synsets of WordNet 3.0 (all hyponyms of "taxonomic group", 07992450).
RANK_SYNSETS = {
    "07940552": "kingdom",
    "08102555": "phylum",
    "08103299": "subphylum",
    "08106798": "superclass",
    "08103777": "class",
    "08106661": "subclass",
    "08107343": "superorder",
    "08106934": "order",
    "08107191": "suborder",
    "08108304": "superfamily",
    "08107499": "family",
    "08108627": "subfamily",
    "08108784": "tribe",
    "08108972": "genus",
    "08109624": "subgenus",
}
RANKS = frozenset(RANK_SYNSETS.values())
SUFFIXES = {"family": "idae", "subfamily": "inae", "superfamily": "oidea", "order": "formes"}
CATEGORY_CLASS = {
    "mammal": "Mammalia",
    "bird": "Aves",
    "reptile": "Reptilia",
    "amphibian": "Amphibia",
}
SPECIES_LIKE = frozenset({"species", "subspecies", "breed", "domestic"})
# The most specific major rank a class of each curated rank supports.
LOWEST_KEPT = {
    "tribe": "family",
    "subfamily": "family",
    "family": "family",
    "superfamily": "order",
    "clade": "order",
    "infraorder": "order",
    "suborder": "order",
    "order": "order",
    "class": "class",
    "phylum": "phylum",
}
Lineages = dict[str, dict[str, str]]
ANIMAL = "00015388"  # "animal, animate being, beast, brute, creature, fauna"
ANIMALIA = "01313093"  # "Animalia, kingdom Animalia, animal kingdom"
BACTERIA_GENUS = "01352574"  # WordNet files bacteria orders under "animal order"
# ImageNet names the table changed from WordNet's lemma.
ALIASES = {"crane bird": "crane"}
# ILSVRC-2012 wnids of the names that have several animal synsets inside their order window.
PINNED = {
    "goldfinch": "01531178",
    "green snake": "01729977",
    "partridge": "01807496",
    "echidna": "01872401",
    "jellyfish": "01910747",
    "king crab": "01981276",
    "red fox": "02119022",
    "kit fox": "02119789",
    "tabby": "02123045",
    "ox": "02403003",
}


@dataclass
class Synset:
    """One noun synset: its lemmas, hypernyms (`@`, `@i`) and member holonyms (`#m`)."""

    words: list[str]
    hypernyms: list[str] = field(default_factory=list)
    member_of: list[str] = field(default_factory=list)


def read_wordnet(directory: Path) -> dict[str, Synset]:
    """Parse `data.noun` (format: wndb(5WN)); offsets are kept as 8-digit strings."""
    synsets: dict[str, Synset] = {}
    text = (directory / "data.noun").read_text(encoding="latin-1")
    for line in text.splitlines():
        if line.startswith("  "):  # licence header
            continue
        fields = line.split(" | ", 1)[0].split()
        count = int(fields[3], 16)
        s = Synset([fields[4 + 2 * i] for i in range(count)])
        i = 4 + 2 * count
        for _ in range(int(fields[i])):
            symbol, target, pos = fields[i + 1 : i + 4]
            i += 4
            if pos != "n":
                continue
            if symbol in ("@", "@i"):
                s.hypernyms.append(target)
            elif symbol == "#m":
                s.member_of.append(target)
        synsets[fields[0]] = s
    return synsets


class Taxonomy:
    """Ranks, names and ancestors of WordNet's taxon synsets."""

    def __init__(self, synsets: dict[str, Synset]) -> None:
        self.synsets = synsets
        self.rank = cache(self._rank)
        self.ancestors = cache(self._ancestors)

    def hypernym_closure(self, offset: str) -> list[str]:
        """The synset and its hypernyms, nearest first (breadth-first)."""
        seen, queue = [offset], [offset]
        for current in queue:
            for h in self.synsets[current].hypernyms:
                if h not in seen:
                    seen.append(h)
                    queue.append(h)
        return seen

    def _rank(self, offset: str) -> str | None:
        """The taxonomic rank of a taxon synset, None for anything else (organisms, groups).

        A lemma such as "subclass_Teleostei" wins over the hypernym chain, which often names
        only the nearest major rank ("Teleostei" -> "class").
        """
        for w in self.synsets[offset].words:
            prefix, _, rest = w.partition("_")
            if prefix in RANKS and rest[:1].isupper():
                return prefix
        for h in self.hypernym_closure(offset)[1:]:
            if h in RANK_SYNSETS:
                return RANK_SYNSETS[h]
        return None

    def name(self, offset: str) -> str:
        """The scientific name: "Felis" from lemmas ("Felis", "genus_Felis").

        Of several ("order_Plectognathi", "order_Tetraodontiformes") the one with the rank's
        modern suffix is taken.
        """
        words = self.synsets[offset].words
        rank = self.rank(offset) or ""
        prefix = rank + "_"
        named = [w[len(prefix) :] for w in words if w.startswith(prefix) and w.count("_") == 1]
        if named:
            suffix = SUFFIXES.get(rank, "")
            return next((n for n in named if suffix and n.endswith(suffix)), named[0])
        plain = [w for w in words if "_" not in w and w[:1].isupper()]
        return plain[0] if plain else words[0].replace("_", " ")

    def _parents(self, offset: str) -> list[tuple[int, str]]:
        """Taxa the synset belongs to: its own `#m` (cost 1), then its categories' (cost 10)."""
        own = [(1, t) for t in self.synsets[offset].member_of if self.rank(t)]
        via = [
            (10, t)
            for h in self.hypernym_closure(offset)[1:]
            for t in self.synsets[h].member_of
            if self.rank(t) and h not in RANK_SYNSETS
        ]
        return own + via

    def _ancestors(self, offset: str) -> dict[str, str]:
        """Nearest ancestor taxon offset per rank (Dijkstra over membership), the synset excluded."""
        best: dict[str, tuple[int, str]] = {}
        done: set[str] = set()
        heap = [(0, offset)]
        while heap:
            cost, current = heapq.heappop(heap)
            if current in done:
                continue
            done.add(current)
            rank = self.rank(current)
            if current != offset and rank and (rank not in best or cost < best[rank][0]):
                best[rank] = (cost, current)
            for step, parent in self._parents(current):
                if parent not in done:
                    heapq.heappush(heap, (cost + step, parent))
        return {rank: off for rank, (_, off) in best.items()}

    def lineage(self, offset: str) -> dict[str, str]:
        """Major-rank names of a taxon or organism synset, the synset's own rank included."""
        found = {r: self.name(o) for r, o in self.ancestors(offset).items()}
        if own := self.rank(offset):
            found[own] = self.name(offset)
        if "class" not in found:
            found.update(self.category_class(offset))
        return {r: found[r] for r in MAJOR if r in found}

    def category_class(self, offset: str) -> dict[str, str]:
        """The class a category names ("mammal genus" -> Mammalia); its `#m` says only
        Vertebrata, so a genus whose own chain breaks would otherwise get no class."""
        for h in self.hypernym_closure(offset):
            for w in self.synsets[h].words:
                kind, _, rank = w.partition("_")
                if rank in ("genus", "family", "order") and kind in CATEGORY_CLASS:
                    return {"class": CATEGORY_CLASS[kind]}
        return {}

    def is_animal_taxon(self, offset: str) -> bool:
        """In kingdom Animalia and named like a taxon (not a category such as "fish genus")."""
        return (
            ANIMALIA in self.ancestors(offset).values()
            and BACTERIA_GENUS not in self.hypernym_closure(offset)
            and self.name(offset).isalpha()
            and self.name(offset)[0].isupper()
        )


def imagenet_wnids(synsets: dict[str, Synset], names: list[str]) -> list[str]:
    """The animal synset of each class name, offsets strictly increasing with the class index."""
    by_lemma: dict[str, list[str]] = defaultdict(list)
    for offset, s in synsets.items():
        for w in s.words:
            by_lemma[w.replace("_", " ").lower()].append(offset)
    tax = Taxonomy(synsets)
    candidates = []
    for name in names:
        key = ALIASES.get(name, name).lower()
        found = sorted(o for o in by_lemma[key] if ANIMAL in tax.hypernym_closure(o))
        if name in PINNED and PINNED[name] in found:
            found = [PINNED[name]]
        if not found:
            raise SystemExit(f"no animal synset named {name!r}")
        candidates.append(found)
    lowest, highest = _monotone(candidates), _monotone(candidates, from_end=True)
    ambiguous = [
        names[i] for i, (lo, hi) in enumerate(zip(lowest, highest, strict=True)) if lo != hi
    ]
    if ambiguous:
        raise SystemExit(f"ambiguous wnids for {ambiguous}")
    return lowest


def curate(wordnet: dict[str, str], name: str, rank: str, genera: Lineages) -> dict[str, str]:
    """Reconcile WordNet's 2006 lineage of a class with the table's curated, modern name.

    A class the table calls a group ("whiptail" -> family Teiidae) keeps no rank below the
    group, though WordNet's synset is one genus of it. The table's genus (the binomial's first
    word) or named rank wins; WordNet's ranks below one it disagrees on belong to another reading
    (its "bulbul" is a nightingale) and are dropped. A genus known to the genus table then
    supplies the higher ranks, so a collection species and the ImageNet fallback agree.
    """
    lowest = MAJOR.index(LOWEST_KEPT.get(rank, "genus"))
    lin = {r: v for r, v in wordnet.items() if MAJOR.index(r) >= lowest}
    given = {"genus": name.split()[0]} if rank in SPECIES_LIKE else {rank: name}
    for r, value in given.items():
        if r in MAJOR and lin.get(r) != value:
            for lower in MAJOR[: MAJOR.index(r)]:
                lin.pop(lower, None)
            lin[r] = value
    known = genera.get(lin.get("genus", ""), {})
    lin.update({r: v for r, v in known.items() if v})
    return lin


def animal_genera(tax: Taxonomy) -> Lineages:
    """Family, order and class of every animal genus WordNet names."""
    genera: Lineages = {}
    for offset in tax.synsets:
        if tax.rank(offset) == "genus" and tax.is_animal_taxon(offset):
            lin = tax.lineage(offset)
            genus = lin.pop("genus")
            lin.pop("phylum", None)
            # Homonyms (rare): keep the better-filled lineage.
            if len(lin) >= len(genera.get(genus, {})):
                genera[genus] = lin
    return genera


def _monotone(candidates: list[list[str]], *, from_end: bool = False) -> list[str]:
    """Greedy strictly increasing choice: each row's smallest offset above the previous row's
    (from_end: largest below the next row's). Rows where both agree are determined."""
    rows = candidates[::-1] if from_end else candidates
    chosen, bound = [], "99999999" if from_end else ""
    for found in rows:
        fits = [o for o in found if (o < bound if from_end else o > bound)]
        if not fits:
            raise SystemExit(f"no increasing choice of wnids among {found}")
        bound = fits[-1] if from_end else fits[0]
        chosen.append(bound)
    return chosen[::-1] if from_end else chosen


def build(wordnet: Path, out: Path) -> None:
    synsets = read_wordnet(wordnet)
    tax = Taxonomy(synsets)
    rows = list(csv.DictReader(ANIMALS.read_text(encoding="utf-8").splitlines()))
    wnids = imagenet_wnids(synsets, [r["imagenet_name"] for r in rows])
    genera = animal_genera(tax)
    from_wordnet = len(genera)

    lineage_rows, disagreements = [], 0
    for row, offset in zip(rows, wnids, strict=True):
        wn = tax.lineage(offset)
        lin = curate(wn, row["scientific_name"], row["rank"], genera)
        disagreements += any(wn.get(r) and wn[r] != lin.get(r) for r in MAJOR)
        if (genus := lin.get("genus")) and genus not in genera:
            genera[genus] = {r: lin[r] for r in MAJOR[1:4] if r in lin}
        lineage_rows.append(
            {
                "imagenet_index": row["index"],
                "wnid": "n" + offset,
                "scientific_name": row["scientific_name"],
                **{r: lin.get(r, "") for r in MAJOR},
            }
        )

    header = ["imagenet_index", "wnid", "scientific_name", *MAJOR]
    write(out / "imagenet_lineage.csv", header, lineage_rows)
    genus_rows = [
        {"genus": g, **{r: lin.get(r, "") for r in MAJOR[1:4]}} for g, lin in sorted(genera.items())
    ]
    write(out / "genus_lineage.csv", ["genus", "family", "order", "class"], genus_rows)

    print(
        f"imagenet_lineage.csv: {len(lineage_rows)} classes ({disagreements} differ from WordNet)"
    )
    for r in MAJOR:
        print(f"  {r:7s} {sum(1 for x in lineage_rows if x[r])}/{len(lineage_rows)}")
    added = len(genus_rows) - from_wordnet
    print(f"genus_lineage.csv: {len(genus_rows)} animal genera ({added} from the ImageNet table)")
    for r in MAJOR[1:4]:
        print(f"  {r:7s} {sum(1 for x in genus_rows if x[r])}/{len(genus_rows)}")


def write(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"))
    parser.add_argument("--out", type=Path, default=DATA)
    args = parser.parse_args()
    build(args.wordnet, args.out)


if __name__ == "__main__":
    main()
