"""What the 'auto' named-answer threshold buys on collections with several photos per species.

The demo cannot show it (71 of its 78 taxa have one photo, so no threshold qualifies), so this
draws synthetic collections (`kontrol.evaluation.synthetic`, as `tests/test_risk_coverage.py`):
species as noisy clusters in 24 dimensions, 120 species x 4 photos, some species closer than
others. The vote calibration and its threshold are fitted on one collection
(`fit_vote_calibration`, as the engine does on a re-index) and applied to fresh collections drawn
with other seeds; for each, the named answers (count, precision with a bootstrap 95 % interval) at
the chosen threshold and at the fixed target. Writes nothing.

Run: PYTHONPATH=. python scripts/bench_named_threshold.py [--target 0.85] [--seeds 1 2 3 4 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.calibration import fit_vote_calibration, loo_vote_rows, top_predictions
from kontrol.evaluation.quality import bootstrap_ci
from kontrol.evaluation.synthetic import clustered_collection as collection


def named(correct: np.ndarray, conf: np.ndarray, threshold: float) -> str:
    hits = correct[conf >= threshold].astype(float)
    if not hits.size:
        return "0 named"
    lo, hi = bootstrap_ci(hits) or (float("nan"), float("nan"))
    return f"{hits.size} named, {hits.mean():.1%} right [{lo:.1%}, {hi:.1%}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    args = parser.parse_args()
    x, labels = collection(0)
    cal = fit_vote_calibration(
        labels,
        x,
        fingerprint="synthetic",
        key="synthetic",
        min_similarity=-1.0,
        target_precision=args.target,
    )
    assert cal is not None
    chosen = cal.named_threshold(args.target, -1.0)
    print(f"fitted on seed 0 ({len(labels)} photos): threshold {chosen} for {args.target:.0%}")
    print("| seed | top-1 right | auto threshold | fixed at target |")
    print("|---|---|---|---|")
    for seed in args.seeds:
        fx, fl = collection(seed)
        conf, correct, _ = top_predictions(loo_vote_rows(fx, fl, k=10), cal)
        auto = named(correct, conf, chosen) if chosen is not None else "n/a"
        print(f"| {seed} | {correct.mean():.1%} | {auto} | {named(correct, conf, args.target)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
