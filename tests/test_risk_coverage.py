"""The named-answer threshold chosen from the collection's risk-coverage curve (issue 9)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from core.answer import named_threshold
from core.calibration import (
    VoteCalibrator,
    fit_vote_calibration,
    loo_vote_rows,
    top_predictions,
)
from core.risk_coverage import Curve, choose_threshold, named_mask
from core.settings import Settings
from kontrol.evaluation.synthetic import clustered_collection as _collection


def test_choose_threshold_prefers_a_plateau_over_a_spike() -> None:
    grid = np.round(np.arange(0, 1.0, 0.01), 2)
    precision = np.full(len(grid), 0.7)
    precision[30] = 0.95  # a lucky spike
    precision[60:] = 0.9  # a plateau
    t = choose_threshold(Curve(grid, 1 - grid, precision), target=0.85, window=0.05)
    assert t == 0.65
    assert choose_threshold(Curve(grid, 1 - grid, precision), target=0.95) is None
    everywhere = Curve(grid, 1 - grid, np.full(len(grid), 1.0))  # every answer right
    assert choose_threshold(everywhere, target=0.85) == 0.5  # still never below even odds
    assert choose_threshold(everywhere, target=0.85, floor=0.0) == 0.0


def test_the_chosen_threshold_keeps_the_target_on_unseen_photos() -> None:
    x, labels = _collection(0)
    cal = fit_vote_calibration(
        labels, x, fingerprint="m", key="k", min_similarity=-1.0, target_precision=0.85
    )
    assert cal is not None
    chosen = cal.named_threshold(0.85, -1.0)
    assert chosen is not None and chosen < 0.85  # the data allow more answers than the bound
    assert cal.report["named_precision"] >= 0.85 and cal.report["named_coverage"] > 0

    # a fresh collection drawn the same way: named answers at that threshold stay near target
    fresh_x, fresh_labels = _collection(1)
    conf, correct, _ = top_predictions(loo_vote_rows(fresh_x, fresh_labels, k=10), cal)
    best = np.ones_like(conf)
    named = named_mask(conf, best, chosen, -1.0)
    assert named.sum() >= 30
    assert correct[named].mean() >= 0.78  # target 0.85 less sampling noise


def test_the_threshold_is_only_used_for_the_settings_it_was_chosen_for() -> None:
    cal = VoteCalibrator(
        np.zeros(3),
        report={"named_threshold": 0.6, "target_precision": 0.85, "min_similarity": 0.5},
    )
    assert cal.named_threshold(0.85, 0.5) == 0.6
    assert cal.named_threshold(0.9, 0.5) is None
    assert cal.named_threshold(0.85, 0.4) is None
    assert named_threshold("auto", 0.85, cal, 0.5) == 0.6
    assert named_threshold("auto", 0.9, cal, 0.5) == 0.9  # falls back to the target
    assert named_threshold("auto", 0.85, None, 0.5) == 0.85
    assert named_threshold(0.7, 0.85, cal, 0.5) == 0.7  # a number configured wins


def test_settings_take_auto_or_a_probability() -> None:
    assert Settings(classify_min_probability="auto").classify_min_probability == "auto"
    assert Settings(classify_min_probability="0.7").classify_min_probability == 0.7
    for bad in ("1.5", "sure", "-0.1"):
        with pytest.raises(ValidationError):
            Settings(classify_min_probability=bad)
    with pytest.raises(ValidationError):
        Settings(classify_target_precision=0.3)
