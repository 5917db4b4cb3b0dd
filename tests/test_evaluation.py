"""Evaluation library: metrics on hand-made embeddings with known answers, labels, alterations,
and an end-to-end run of `evaluate()` with a toy embedder on a tiny collection on disk."""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kontrol.evaluation import ManifestError, evaluate, load_labels, metrics
from kontrol.evaluation.augment import ALTERATIONS, alter_all
from kontrol.evaluation.goals import GOALS
from kontrol.evaluation.served import AnswerPolicy


def _clusters(sizes: list[int], dim: int = 16, noise: float = 0.05, seed: int = 0):
    """Tight clusters around orthogonal centres: every neighbour question has an obvious answer."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for c, size in enumerate(sizes):
        centre = np.eye(dim)[c]
        rows.append(centre + noise * rng.standard_normal((size, dim)))
        labels += [f"species {c}"] * size
    emb = np.concatenate(rows).astype(np.float32)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), labels


# Hand-made case: labels A A B A; similarities chosen so query 0 ranks B first.
HAND_SIM = np.array(
    [
        [1.0, 0.5, 0.9, 0.4],
        [0.5, 1.0, 0.1, 0.8],
        [0.9, 0.1, 1.0, 0.2],
        [0.4, 0.8, 0.2, 1.0],
    ],
    dtype=np.float32,
)
HAND_LABELS = ["A", "A", "B", "A"]


def test_recall_and_map_perfect_on_clusters() -> None:
    emb, labels = _clusters([4, 3, 5, 1])
    sim = metrics.similarity_matrix(emb)
    recall = metrics.species_recall_at_1(sim, labels)
    mean_ap = metrics.species_map(sim, labels)
    assert recall.value == 1.0 and mean_ap.value == pytest.approx(1.0)
    assert recall.n == mean_ap.n == 12  # the singleton species is not a query


def test_hand_computed_recall_and_map() -> None:
    recall = metrics.species_recall_at_1(HAND_SIM, HAND_LABELS)
    assert recall.n == 3 and recall.value == pytest.approx(2 / 3)
    # Query 0 ranks B, A, A -> AP = (1/2 + 2/3) / 2; queries 1 and 3 rank A, A, B -> AP = 1.
    assert metrics.species_map(HAND_SIM, HAND_LABELS).value == pytest.approx((7 / 12 + 2) / 3)


def test_average_precision_basics() -> None:
    assert metrics.average_precision(np.array([True, False, True])) == pytest.approx(
        (1 + 2 / 3) / 2
    )
    assert metrics.average_precision(np.array([False, False])) == 0.0


def test_no_eligible_queries_gives_none() -> None:
    emb, labels = _clusters([1, 1, 1])
    sim = metrics.similarity_matrix(emb)
    assert metrics.species_recall_at_1(sim, labels) == metrics.Score(None, 0)
    assert metrics.species_map(sim, labels) == metrics.Score(None, 0)


def test_coarse_precision_excludes_small_groups() -> None:
    emb, labels = _clusters([20, 10])
    coarse = ["big" if lab == "species 0" else "small" for lab in labels]
    score = metrics.coarse_precision_at_k(metrics.similarity_matrix(emb), coarse, k=10)
    assert score.n == 20 and score.value == pytest.approx(1.0)
    none_big = metrics.coarse_precision_at_k(metrics.similarity_matrix(emb[20:]), coarse[20:], k=10)
    assert none_big == metrics.Score(None, 0)


def test_coarse_precision_counts_unlabelled_neighbours_as_misses() -> None:
    emb, _ = _clusters([16])
    coarse: list[str | None] = ["g"] * 15 + [None]
    score = metrics.coarse_precision_at_k(metrics.similarity_matrix(emb), coarse, k=15)
    # Each of the 15 queries sees 14 same-group photos and the unlabelled one among its 15.
    assert score.n == 15 and score.value == pytest.approx(14 / 15)


def test_top_k_is_leave_one_out_and_sorted() -> None:
    idx, sims = metrics.top_k(HAND_SIM, 2)
    assert idx.tolist() == [[2, 1], [3, 0], [0, 3], [1, 0]]
    assert np.all(np.diff(sims, axis=1) <= 0)


def test_near_duplicate_recall() -> None:
    gallery, _ = _clusters([1] * 8, noise=0.0)
    rng = np.random.default_rng(1)
    queries = np.repeat(gallery, 2, axis=0) + 0.05 * rng.standard_normal((16, 16))
    original = np.repeat(np.arange(8), 2)
    kinds = ["x", "y"] * 8
    score, per_kind = metrics.near_duplicate_recall_at_1(queries, original, gallery, kinds)
    assert score == metrics.Score(1.0, 16)
    assert per_kind == {"x": metrics.Score(1.0, 8), "y": metrics.Score(1.0, 8)}
    wrong, _ = metrics.near_duplicate_recall_at_1(queries, (original + 1) % 8, gallery)
    assert wrong.value == 0.0


def test_pair_similarities_split() -> None:
    same, diff = metrics.pair_similarities(HAND_SIM, HAND_LABELS)
    assert sorted(same.tolist()) == pytest.approx([0.4, 0.5, 0.8])
    assert sorted(diff.tolist()) == pytest.approx([0.1, 0.2, 0.9])


# --- alterations -----------------------------------------------------------------------------


def _photo(size=(200, 100), mode="RGB", seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(
        mode
    )


def test_alterations_sizes_and_modes() -> None:
    expected = {
        "crop70": (140, 70),
        "hflip": (200, 100),
        "jpeg25": (200, 100),
        "downscale4": (50, 25),
        "bright_desat": (200, 100),
        "rotate12": (200, 100),
    }
    for mode in ("RGB", "RGBA", "L"):
        out = dict(alter_all(_photo(mode=mode), seed=3))
        assert list(out) == list(ALTERATIONS)
        assert {k: v.size for k, v in out.items()} == expected
        assert all(v.mode == "RGB" for v in out.values())


def test_alterations_deterministic_per_seed() -> None:
    img = _photo()
    first = [v.tobytes() for _, v in alter_all(img, seed=7)]
    again = [v.tobytes() for _, v in alter_all(img, seed=7)]
    assert first == again
    crops = {alter_all(img, seed=s)[0][1].tobytes() for s in range(6)}
    assert len(crops) > 1  # the crop position follows the seed


def test_alterations_change_pixels() -> None:
    img = _photo(size=(64, 64))
    for name, fn in ALTERATIONS.items():
        if name in {"crop70", "downscale4"}:
            continue
        assert fn(img, random.Random(0)).tobytes() != img.tobytes(), name


# --- labels ----------------------------------------------------------------------------------


def _write_collection(root: Path, species: dict[str, tuple[int, tuple[int, int, int]]]) -> None:
    """Tiny photos: each species a base colour plus per-photo noise."""
    rng = np.random.default_rng(0)
    for name, (count, colour) in species.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(count):
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (40, 48, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:02d}.jpg", quality=90)


def test_labels_from_folders(tmp_path: Path) -> None:
    _write_collection(
        tmp_path, {"Canis_lupus": (2, (200, 0, 0)), "Vulpes vulpes": (1, (0, 0, 200))}
    )
    (tmp_path / "loose.jpg").write_bytes(b"no label at the root")
    (tmp_path / "Canis_lupus" / "notes.txt").write_text("not a photo")
    photos = load_labels(tmp_path)
    assert [(p.rel, p.label, p.coarse) for p in photos] == [
        ("Canis_lupus/00.jpg", "Canis lupus", None),
        ("Canis_lupus/01.jpg", "Canis lupus", None),
        ("Vulpes vulpes/00.jpg", "Vulpes vulpes", None),
    ]


def _manifest(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_labels_from_manifest(tmp_path: Path) -> None:
    _write_collection(tmp_path / "img", {"x": (2, (1, 2, 3))})
    csv_path = _manifest(
        tmp_path / "m.csv",
        ["file", "label", "coarse", "source"],
        [["x/00.jpg", "Canis_lupus", "mammal", "web"], ["x/01.jpg", "Pica pica", "", "web"]],
    )
    photos = load_labels(tmp_path / "img", csv_path)
    assert [(p.rel, p.label, p.coarse) for p in photos] == [
        ("x/00.jpg", "Canis lupus", "mammal"),
        ("x/01.jpg", "Pica pica", None),
    ]


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        (["file", "species"], [["x/00.jpg", "a"]], "lacks the column(s) label"),
        (["label"], [["a"]], "lacks the column(s) file"),
        (["file", "label"], [["x/00.jpg", "a"], ["x/missing.jpg", "b"]], "1 file(s) do not exist"),
        (["file", "label"], [["x/00.jpg", ""]], "empty file or label on line(s) 2"),
        (["file", "label"], [["x/00.jpg", "a"], ["x/00.jpg", "b"]], "lists a file twice"),
    ],
)
def test_manifest_errors(tmp_path: Path, header, rows, message) -> None:
    _write_collection(tmp_path / "img", {"x": (1, (1, 2, 3))})
    csv_path = _manifest(tmp_path / "m.csv", header, rows)
    with pytest.raises(ManifestError, match=re.escape(message)):
        load_labels(tmp_path / "img", csv_path)


def test_missing_dir_and_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        load_labels(tmp_path / "nope")
    with pytest.raises(ManifestError, match="does not exist"):
        load_labels(tmp_path, tmp_path / "nope.csv")
    with pytest.raises(ManifestError, match="No labelled photos"):
        load_labels(tmp_path)


# --- end to end ------------------------------------------------------------------------------


def _toy_embed(images: list[Image.Image]) -> np.ndarray:
    """Mean colour of a 4x4 grid, centred: photos of one base colour land close together."""
    rows = [np.asarray(img.resize((4, 4)), dtype=np.float32).ravel() - 128.0 for img in images]
    return np.stack(rows)


def test_evaluate_end_to_end(tmp_path: Path) -> None:
    species = {
        "Canis_lupus": (8, (220, 40, 40)),
        "Vulpes_vulpes": (8, (200, 90, 30)),
        "Pica_pica": (8, (30, 40, 220)),
        "Corvus_corax": (8, (40, 110, 200)),
        "Lonely_one": (1, (40, 200, 40)),
    }
    root = tmp_path / "img"
    _write_collection(root, species)
    (root / "Pica_pica" / "broken.jpg").write_bytes(b"not a jpeg")
    birds = {"Pica_pica", "Corvus_corax"}
    rows = [
        [
            p.relative_to(root).as_posix(),
            p.parent.name,
            "bird" if p.parent.name in birds else "mammal",
        ]
        for p in sorted(root.rglob("*.jpg"))
    ]
    manifest = _manifest(tmp_path / "m.csv", ["file", "label", "coarse"], rows)
    stages: set[str] = set()
    result = evaluate(
        root,
        manifest,
        embed_fn=_toy_embed,
        out_dir=tmp_path / "out",
        json_path=tmp_path / "metrics.json",
        batch_size=5,
        latency_queries=4,
        model="toy",
        progress=lambda stage, done, total: stages.add(stage),
    )
    assert result["collection"]["photos"] == 33
    assert [rel for rel, _ in result["collection"]["skipped"]] == ["Pica_pica/broken.jpg"]
    assert result["species_recall_at_1"] == 1.0
    assert result["queries"]["species_recall_at_1"] == 32  # the singleton is not a query
    assert result["queries"]["coarse_precision_at_10"] == 33  # both coarse groups >= 15 photos
    assert result["queries"]["near_duplicate_recall_at_1"] == 33 * 6
    assert set(result["near_duplicate_by_alteration"]) == set(ALTERATIONS)
    for key in (
        "species_map",
        "coarse_precision_at_10",
        "species_top1_accuracy",
        "open_set_not_sure_rate",
        "near_duplicate_recall_at_1",
    ):
        assert 0.0 <= result[key] <= 1.0, key
    assert result["query_latency_ms_p50"] > 0 and result["indexing_photos_per_s"] > 0
    assert stages >= {"embedding", "metrics", "latency", "report"}

    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(result))
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Species recall@1" in report and "contact_sheet.png" in report
    # every goal gets a verdict, in the JSON and in the report
    assert set(result["goals"]) == {g.metric for g in GOALS}
    recall_goal = result["goals"]["species_recall_at_1"]
    assert recall_goal["value"] == 1.0 and recall_goal["verdict"].startswith("met")
    assert "## Goals" in report and "| species_recall_at_1 | >= 0.65 |" in report
    median, p95 = result["ece_if_calibrated"]
    assert 0.0 <= median <= p95
    for name in ("contact_sheet.png", "similarity_histogram.png"):
        with Image.open(tmp_path / "out" / name) as img:
            img.verify()
            assert img.format == "PNG"


def test_evaluate_folder_labels_without_outputs(tmp_path: Path) -> None:
    _write_collection(tmp_path, {"A_a": (3, (250, 0, 0)), "B_b": (3, (0, 0, 250))})
    result = evaluate(
        tmp_path,
        embed_fn=_toy_embed,
        # no neighbour is ever similar enough: the engine never names one
        policy=AnswerPolicy(min_similarity=1.01),
        near_duplicates=False,
        latency_queries=0,
    )
    assert result["coarse_precision_at_10"] is None
    assert result["near_duplicate_recall_at_1"] is None
    assert result["species_top1_accuracy"] == 0.0  # "not sure" is never right ...
    assert result["known_species_not_sure_rate"] == 1.0
    assert result["open_set_not_sure_rate"] == 1.0  # ... but always right on unknown species
    assert result["query_latency_ms_p50"] is None and result["files"] == {}


def test_non_animal_photos_count_as_open_set_queries(tmp_path: Path) -> None:
    _write_collection(tmp_path / "c", {"A_a": (3, (250, 0, 0)), "B_b": (3, (0, 0, 250))})
    negatives = []
    for i, colour in enumerate([(0, 250, 0), (240, 240, 0), (250, 0, 5)]):
        path = tmp_path / f"neg{i}.png"
        Image.new("RGB", (40, 40), colour).save(path)
        negatives.append(path)

    result = evaluate(
        tmp_path / "c",
        embed_fn=_toy_embed,
        # the engine names a species only for a very close neighbour
        policy=AnswerPolicy(min_similarity=0.99, min_confidence=0.0),
        near_duplicates=False,
        latency_queries=0,
        negatives=negatives,
    )
    assert result["queries"]["non_animal_not_sure_rate"] == 3
    # the third "negative" is almost the red species: answered, so 2 of 3 are "not sure"
    assert result["non_animal_not_sure_rate"] == pytest.approx(2 / 3, abs=1e-3)


def test_evaluate_uses_the_stored_vectors_it_is_given(tmp_path: Path) -> None:
    """What is measured is what is served: originals come from the index, not a second pass."""
    _write_collection(tmp_path, {"A_a": (3, (250, 0, 0)), "B_b": (3, (0, 0, 250))})
    photos = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jpg"))
    embedded: list[int] = []

    def counting_embed(images: list[Image.Image]) -> np.ndarray:
        embedded.append(len(images))
        return _toy_embed(images)

    # stored vectors that differ from what the pixels would give: the run must not re-embed
    swap = {
        rel: _toy_embed([Image.new("RGB", (8, 8), (0, 0, 250) if "A_a" in rel else (250, 0, 0))])[0]
        for rel in photos
    }
    result = evaluate(
        tmp_path,
        embed_fn=counting_embed,
        near_duplicates=False,
        latency_queries=0,
        stored=swap,
    )
    assert sum(embedded) == 0  # nothing embedded a second time
    assert result["timing"]["vectors_from_index"] == 6
    assert result["indexing_photos_per_s"] is None
