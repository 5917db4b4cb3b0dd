"""The product's quality goals (issue 9) and a verdict per goal that says how sure it is.

A point estimate on a few dozen queries can sit on either side of a target by chance, so each
goal's verdict reads the bootstrap interval too: "met" / "missed" when the whole interval lies on
one side of the target, "met within noise" / "missed within noise" when the point estimate does
but the interval straddles the target, "n/a" when the collection cannot measure it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Goal:
    """`metric` (an `evaluate()` key) must be at least (`at_least`) or at most `target`."""

    metric: str
    target: float
    at_least: bool = True

    @property
    def text(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.target:g}"

    def meets(self, value: float) -> bool:
        return value >= self.target if self.at_least else value <= self.target


#: Issue 9's goals for the served answers (its acceptance set is kept outside the project).
GOALS: tuple[Goal, ...] = (
    Goal("species_recall_at_1", 0.65),
    Goal("species_map", 0.65),
    Goal("coarse_precision_at_10", 0.85),
    Goal("near_duplicate_recall_at_1", 0.995),
    Goal("species_top1_accuracy", 0.55),
    Goal("named_answer_precision", 0.85),
    Goal("ece", 0.05, at_least=False),
)


def verdict(goal: Goal, value: float | None, interval: Sequence[float] | None) -> str:
    """How `value` (with its 95 % interval, if any) stands against `goal`."""
    if value is None:
        return "n/a"
    met = goal.meets(value)
    word = "met" if met else "missed"
    if interval is None:
        return f"{word} (no interval)"
    low, high = (float(v) for v in interval)
    return word if goal.meets(low) == goal.meets(high) == met else f"{word} within noise"


def goal_table(
    result: Mapping[str, Any], goals: Sequence[Goal] = GOALS
) -> dict[str, dict[str, Any]]:
    """Per goal: target, value, interval, queries and verdict, from an `evaluate()` result."""
    cis = result.get("ci95") or {}
    queries = result.get("queries") or {}
    return {
        g.metric: {
            "target": g.text,
            "value": result.get(g.metric),
            "ci95": cis.get(g.metric),
            "queries": queries.get(g.metric),
            "verdict": verdict(g, result.get(g.metric), cis.get(g.metric)),
        }
        for g in goals
    }
