"""Goal verdicts and the ECE that exact probabilities would show (`kontrol.evaluation`)."""

from __future__ import annotations

import numpy as np
import pytest

from core.calibration import expected_calibration_error
from kontrol.evaluation.goals import GOALS, Goal, goal_table, verdict
from kontrol.evaluation.quality import ece_if_calibrated

AT_LEAST = Goal("species_recall_at_1", 0.65)
AT_MOST = Goal("ece", 0.05, at_least=False)


@pytest.mark.parametrize(
    ("goal", "value", "interval", "expected"),
    [
        (AT_LEAST, 0.8, [0.7, 0.9], "met"),
        (AT_LEAST, 0.7, [0.5, 0.85], "met within noise"),
        (AT_LEAST, 0.6, [0.4, 0.7], "missed within noise"),
        (AT_LEAST, 0.3, [0.2, 0.5], "missed"),
        (AT_LEAST, 0.65, [0.65, 0.65], "met"),  # the target itself counts
        (AT_LEAST, None, None, "n/a"),
        (AT_LEAST, 0.7, None, "met (no interval)"),
        (AT_MOST, 0.03, [0.01, 0.045], "met"),
        (AT_MOST, 0.051, [0.023, 0.113], "missed within noise"),
        (AT_MOST, 0.2, [0.12, 0.3], "missed"),
    ],
)
def test_verdict_reads_the_interval(
    goal: Goal, value: float | None, interval: list[float] | None, expected: str
) -> None:
    assert verdict(goal, value, interval) == expected


def test_goal_table_covers_every_goal_of_a_result() -> None:
    result = {
        "species_recall_at_1": 0.7,
        "ece": 0.02,
        "ci95": {"species_recall_at_1": [0.66, 0.8], "ece": [0.01, 0.04]},
        "queries": {"species_recall_at_1": 14, "ece": 85},
    }
    table = goal_table(result)
    assert list(table) == [g.metric for g in GOALS]
    assert table["species_recall_at_1"] == {
        "target": ">= 0.65",
        "value": 0.7,
        "ci95": [0.66, 0.8],
        "queries": 14,
        "verdict": "met",
    }
    assert table["ece"]["target"] == "<= 0.05" and table["ece"]["verdict"] == "met"
    assert table["species_map"]["verdict"] == "n/a"


def test_exact_probabilities_stay_inside_their_ece_band() -> None:
    """Outcomes drawn from the stated probabilities give an ECE inside the band (most of the
    time); confident wrong answers fall far outside it."""
    rng = np.random.default_rng(7)
    conf = rng.uniform(0.05, 0.95, size=85)
    median, p95 = ece_if_calibrated(conf, reps=500, seed=1)
    assert 0.0 < median < p95 < 0.25
    inside = [expected_calibration_error(conf, rng.random(85) < conf) <= p95 for _ in range(200)]
    assert 0.88 <= np.mean(inside) <= 1.0
    overconfident = expected_calibration_error(np.full(85, 0.9), rng.random(85) < 0.5)
    assert overconfident > ece_if_calibrated(np.full(85, 0.9), reps=500)[1]


def test_the_band_narrows_with_more_queries() -> None:
    conf = np.linspace(0.05, 0.95, 40)
    small = ece_if_calibrated(conf, reps=300)
    large = ece_if_calibrated(np.tile(conf, 25), reps=300)
    assert large[1] < small[1] / 2
    assert ece_if_calibrated(np.zeros(0)) is None


def test_copies_drawn_together_widen_the_band() -> None:
    """Seven copies of each of 30 photos are 30 independent outcomes, not 210."""
    conf = np.repeat(np.linspace(0.05, 0.95, 30), 7)
    groups = np.repeat(np.arange(30), 7)
    independent = ece_if_calibrated(conf, reps=300)
    grouped = ece_if_calibrated(conf, groups=groups, reps=300)
    alone = ece_if_calibrated(conf[::7], reps=300)
    assert grouped[1] > 1.5 * independent[1]
    assert grouped[1] == pytest.approx(alone[1], rel=0.35)
