"""Collection insight (`kontrol clusters`): duplicates, clusters, suspicious labels, split species.

A synthetic store with a known structure (families of species, planted wrong labels, planted
near-duplicates) checks that the analysis finds what was planted; a tiny real collection checks the
command end to end (JSON, HTML page, contact sheets). No timing is asserted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.insight import Options, UnionFind, analyse, label_vote
from core.vectorstore import StoreInfo
from core.vectorstore.faiss_store import FaissStore, Tuning
from tests.helpers import TinyEmbedder, make_collection

DIM = 64
FAMILIES = 4
SPECIES_PER_FAMILY = 2
PHOTOS = 12


def _unit(rng: np.random.Generator, n: int = 1) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _lineage(f: int, s: int) -> dict[str, str]:
    return {
        "species": f"Genus{f}{s} species{s}",
        "genus": f"Genus{f}{s}",
        "family": f"Family{f}",
        "order": f"Order{f // 2}",
        "class": "Mammalia",
    }


@pytest.fixture
def planted(tmp_path: Path) -> tuple[FaissStore, set[str], dict[str, str]]:
    """A store of 4 families x 2 species x 12 photos, 6 wrong labels and 5 duplicated photos."""
    rng = np.random.default_rng(7)
    fam = _unit(rng, FAMILIES)
    ids, vecs, payloads = [], [], []
    for f in range(FAMILIES):
        for s in range(SPECIES_PER_FAMILY):
            sp = _unit(rng)[0]
            for j in range(PHOTOS):
                v = fam[f] + 0.7 * sp + 1.2 * _unit(rng)[0]
                ids.append(f"p-{f}-{s}-{j}")
                vecs.append(v / np.linalg.norm(v))
                payloads.append({**_lineage(f, s), "path": f"x/{f}{s}{j}.jpg"})
    wrong: set[str] = set()
    for n in range(6):  # photo j=n of species (n%4, 0) labelled as species ((n%4)+1)%4, 1
        f = n % FAMILIES
        i = ids.index(f"p-{f}-0-{n}")
        payloads[i] = {**_lineage((f + 1) % FAMILIES, 1), "path": payloads[i]["path"]}
        wrong.add(ids[i])
    copy_of: dict[str, str] = {}
    for n in range(5):
        src = ids.index(f"p-{n % FAMILIES}-1-{n + 6}")
        for c in range(2):
            v = vecs[src] + 0.03 * _unit(rng)[0]
            ids.append(f"{ids[src]}-copy{c}")
            vecs.append(v / np.linalg.norm(v))
            payloads.append({**payloads[src], "path": f"x/copy{n}{c}.jpg"})
            copy_of[ids[-1]] = ids[src]
    store = FaissStore(tmp_path / "store", tuning=Tuning(mode="flat"))
    store.initialise(StoreInfo(fingerprint="synthetic", dim=DIM))
    store.upsert(ids, np.asarray(vecs, np.float32), payloads)
    return store, wrong, copy_of


def test_finds_planted_duplicates_and_wrong_labels(planted) -> None:
    store, wrong, copy_of = planted
    insight = analyse(store, Options(batch_size=16, clusters=8))
    assert insight.count == store.count()

    groups = [{m["id"] for m in g["members"]} for g in insight.duplicate_groups]
    for copy, src in copy_of.items():
        assert any({copy, src} <= g for g in groups), copy
    assert all(len({i.split("-copy")[0] for i in g}) == 1 for g in groups)  # nothing else merged

    flagged = {s["id"] for s in insight.suspicious}
    recall = len(flagged & wrong) / len(wrong)
    precision = len(flagged & wrong) / max(1, len(flagged))
    assert recall >= 0.8 and precision >= 0.7, (recall, precision)
    evidence = next(s for s in insight.suspicious if s["id"] in wrong)
    assert evidence["neighbours"] and evidence["likely"] != evidence["label"]
    assert {"path", "species", "similarity"} <= set(evidence["neighbours"][0])

    # Each wrongly labelled photo sits apart from its (new) species' photos.
    split = {sp["species"]: sp for sp in insight.split_species}
    for wid in wrong:
        species = next(
            p["species"] for i, p in zip(insight.ids, insight.payloads, strict=True) if i == wid
        )
        assert species in split
        minority = [m["id"] for part in split[species]["parts"][1:] for m in part["members"]]
        assert wid in minority

    # k-means: every photo in exactly one cluster; clusters are mostly one family.
    members = [m["id"] for c in insight.clusters for m in c["members"]]
    assert sorted(members) == sorted(insight.ids)
    assert len(insight.clusters) <= 8
    big = [c for c in insight.clusters if c["size"] >= 5]
    fam_of = {i: p["family"] for i, p in zip(insight.ids, insight.payloads, strict=True)}
    purity = [
        max(
            sum(1 for m in c["members"] if fam_of[m["id"]] == f)
            for f in {fam_of[m["id"]] for m in c["members"]}
        )
        / c["size"]
        for c in big
    ]
    assert np.mean(purity) >= 0.7


def test_clean_store_has_few_false_alarms(planted) -> None:
    store, wrong, _ = planted
    batch = store.fetch(sorted(wrong))
    fixed = []
    for id_, p in zip(batch.ids, batch.payloads, strict=True):
        f, s = int(id_.split("-")[1]), int(id_.split("-")[2])
        fixed.append({**p, **_lineage(f, s)})
    store.upsert(batch.ids, batch.vectors, fixed)
    insight = analyse(store, Options(clusters=8))
    assert len(insight.suspicious) <= 2
    assert not any(g["conflicting_labels"] for g in insight.duplicate_groups)


def test_union_find_groups() -> None:
    uf = UnionFind(6)
    uf.union(0, 1)
    uf.union(1, 2)
    uf.union(4, 5)
    assert uf.groups() == [[0, 1, 2], [4, 5]]


def test_label_vote_needs_support() -> None:
    from collections import Counter

    own = {"species": "A a", "family": "F"}
    nbs = [({"species": "B b", "family": "G"}, 0.5)] * 5
    # The own species has no other photo: the species rank cannot be judged, the family can.
    support = {r: Counter() for r in ("species", "genus", "family", "order", "class")}
    support["species"].update({"A a": 1, "B b": 5})
    support["family"].update({"F": 4, "G": 5})
    vote = label_vote(own, nbs, support, min_support=2)
    assert vote["rank"] == "family" and vote["likely"] == "G" and vote["score"] == 1.0
    support["family"]["F"] = 2
    assert label_vote(own, nbs, support, min_support=2) is None


def test_clusters_command_writes_json_and_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.engine import Engine
    from core.settings import load_settings
    from kontrol.cli import main

    root = tmp_path / "photos"
    make_collection(root, {"Canis_lupus": 4, "Vulpes_vulpes": 4, "Felis_catus": 3})
    src = sorted((root / "Felis_catus").glob("*.jpg"))[0]
    with Image.open(src) as img:
        img.convert("RGB").save(src.parent / "0000aaaa-dup.jpg", quality=60)
    shutil.copy(src, root / "Canis_lupus" / "0000bbbb-dup.jpg")  # same photo, another label
    settings = load_settings(
        images_dir=root, index_dir=tmp_path / "index", models_dir=tmp_path / "models"
    )
    Engine(settings, embedder=TinyEmbedder()).reindex(train="skip")
    monkeypatch.setattr("core.embedders.create_embedder", lambda s: TinyEmbedder())
    out, js = tmp_path / "report", tmp_path / "insight.json"
    argv = ["clusters", "--images", str(root), "--index-dir", str(tmp_path / "index")]
    assert main([*argv, "--out", str(out), "--json", str(js), "--k", "3"]) == 0
    doc = json.loads(js.read_text())
    assert doc["count"] == 13
    group = next(
        g
        for g in doc["duplicate_groups"]
        if src.name in {Path(m["path"]).name for m in g["members"]}
    )
    assert group["size"] == 3 and group["conflicting_labels"]
    assert {"Canis lupus", "Felis catus"} == set(group["species"])
    assert sum(c["size"] for c in doc["clusters"]) == 13
    page = (out / "index.html").read_text()
    assert "Near-duplicate groups" in page and "CONFLICTING LABELS" in page
    sheets = sorted((out / "sheets").glob("*.png"))
    assert any(p.name.startswith("duplicates_") for p in sheets)
    assert any(p.name.startswith("cluster_") for p in sheets)
    with Image.open(sheets[0]) as img:
        assert img.width > 100 and img.height > 100
