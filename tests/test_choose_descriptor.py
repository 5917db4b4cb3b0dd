"""The descriptor-choice procedure (scripts/choose_descriptor.py): its metrics run through the
served path and its rule picks what it says it picks, on small synthetic inputs (no model)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from core.settings import Settings
from kontrol.evaluation.served import AnswerPolicy

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def choose() -> ModuleType:
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location(
            "choose_descriptor", SCRIPTS / "choose_descriptor.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPTS))


def _cluster(rng: np.random.Generator, centres: np.ndarray, which: list[int], noise: float):
    x = centres[which] + noise * rng.normal(size=(len(which), centres.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_per_query_values_line_up_with_their_photos(choose: ModuleType) -> None:
    """Every metric has one value per query its owner list names (the bootstrap relies on it),
    and well separated species score what they should."""
    rng = np.random.default_rng(0)
    species = [f"Genus{i // 2} sp{i}" for i in range(8)]
    labels = [s.replace(" ", "_") for s in species for _ in range(4)] + ["Lonely one"]
    coarse = [f"group{(i // 4) % 2}" for i in range(32)] + [None]
    centres = rng.normal(size=(9, 32))
    gallery = _cluster(rng, centres, [i // 4 for i in range(32)] + [8], 0.05)
    altered_of = np.repeat(np.arange(len(labels)), 2)
    copies = _cluster(rng, gallery, list(altered_of), 0.001)
    policy = AnswerPolicy.from_settings(Settings())
    values = choose.per_query(gallery, copies, altered_of, labels, coarse, policy)
    owners = choose.query_owners(labels, coarse, altered_of)
    assert set(values) == set(choose.METRICS) == set(owners)
    for key in values:
        assert len(values[key]) == len(owners[key]), key
    assert values["species_r1"].mean() == 1.0
    assert values["species_r1_copies"].mean() == 1.0
    assert len(values["species_r1_copies"]) == 64  # the lonely photo's copies are no species query
    assert values["near_dup_r1"].mean() == 1.0
    # a photo far from everything is kept unnamed below the top gate; a copy of a collection
    # photo passes every gate, and the guard sees it named
    gate, named = choose.similarity_gate(
        -gallery[:1], gallery, labels, policy, choose.table_lineage
    )
    assert gate < choose.GATES[-1] and not named.any()
    gate, named = choose.similarity_gate(gallery[:1], gallery, labels, policy, choose.table_lineage)
    assert gate == choose.GATES[-1] and named.tolist() == [1.0]
    # ... unless the backbone sees no animal in it: the served no-animal check keeps it unnamed
    low = np.array([policy.min_animal_share / 2])
    gate, named = choose.similarity_gate(
        gallery[:1], gallery, labels, policy, choose.table_lineage, low
    )
    assert gate == choose.GATES[0] and not named.any()


def _row(choose: ModuleType, gain: float, near_dup: float = 1.0, worse: bool = False):
    row = {}
    for key in choose.METRICS:
        value = near_dup if key == "near_dup_r1" else 0.5
        high = -0.01 if worse and key == "species_map" else gain + 0.1
        row[key] = {"value": value, "diff_vs_default": (gain, gain - 0.1, high)}
    return row


def test_guard_and_flat_optimum(choose: ModuleType) -> None:
    """A variant below the near-duplicate goal or worse beyond noise never qualifies, and a lone
    peak among poor neighbours loses to a variant whose neighbours are good too."""
    assert choose.qualifies(_row(choose, 0.1))
    assert not choose.qualifies(_row(choose, 0.1, near_dup=0.99))
    assert not choose.qualifies(_row(choose, 0.1, worse=True))
    named = _row(choose, 0.1)
    named[choose.NEGATIVES] = {"value": 0.25, "n": 4, "diff_vs_default": (0.25, 0.0, 0.5)}
    assert not choose.qualifies(named)  # one of four photos with no animal got a name
    named[choose.NEGATIVES] = {"value": 0.0, "n": 4, "diff_vs_default": (-0.25, -0.5, -0.1)}
    assert choose.qualifies(named)  # fewer named than the default is no loss
    d = "imagenet_fusion"
    gains = {0.0: 0.0, 0.25: 0.3, 0.5: 0.0, 0.75: 0.2, 1.0: 0.2}  # a spike at 0.25
    summary = {(d, 0.2, lam, 1.0): _row(choose, g) for lam, g in gains.items()}
    assert choose.neighbours((d, 0.2, 0.25, 1.0), list(summary)) == [
        (d, 0.2, 0.0, 1.0),
        (d, 0.2, 0.5, 1.0),
    ]
    chosen, _ = choose.recommend(summary, {}, {}, 1, (d, 0.2, 0.0, 1.0))
    assert chosen == (d, 0.2, 1.0, 1.0)  # averaged with 0.75 it beats the spike's 0.1


def test_second_pass_needs_a_gain_beyond_noise(choose: ModuleType) -> None:
    """flip_fusion costs a second model pass: it wins only when its gain over the best one-pass
    variant, resampling photos, lies above 0."""
    photos = 40
    owners = {key: np.arange(photos) for key in choose.METRICS}
    base = {key: np.zeros(photos) for key in choose.METRICS}
    clear = {key: np.ones(photos) for key in choose.METRICS}
    noisy = {key: np.where(np.arange(photos) % 2 == 0, 1.0, -1.0) for key in choose.METRICS}
    mean, low, _ = choose.objective_diff_ci(clear, base, owners, photos)
    assert mean == pytest.approx(len(choose.OBJECTIVE)) and low > 0
    _, low, high = choose.objective_diff_ci(noisy, base, owners, photos)
    assert low < 0 < high
    one, two = ("imagenet_fusion", 0.2, 0.0, 1.0), ("flip_fusion", 0.2, 0.0, 1.0)
    summary = {one: _row(choose, 0.1), two: _row(choose, 0.3)}
    assert choose.recommend(summary, {one: base, two: clear}, owners, photos, one)[0] == two
    assert choose.recommend(summary, {one: base, two: noisy}, owners, photos, one)[0] == one
