"""What a person reads after `kontrol eval`: a Markdown summary and two pictures.

The contact sheet shows sample queries next to their top-5 neighbours with green (same species) or
red (other species) borders, so a failure mode is visible at a glance; the histogram of same- vs
different-species similarities shows where an open-set threshold can sit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from kontrol import sheets

THUMB = 160
BORDER = 6
GAP = 10
CAPTION_H = 36
HEADER_H = 24
SAME_COLOUR = (34, 160, 60)
DIFF_COLOUR = (210, 40, 40)
QUERY_COLOUR = (40, 90, 200)
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (20, 20, 20)


@dataclass(frozen=True)
class Neighbour:
    """One retrieved photo on the contact sheet."""

    path: Path
    label: str
    similarity: float


@dataclass(frozen=True)
class SheetRow:
    """A query photo and its neighbours, best first."""

    query_path: Path
    query_label: str
    neighbours: Sequence[Neighbour]


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """Shorten with an ellipsis until the caption fits under its tile."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def contact_sheet(path: Path | str, rows: Sequence[SheetRow], top: int = 5) -> Path:
    """PNG grid: per row the query (blue border) then `top` neighbours with similarity captions."""
    path = Path(path)
    font, bold = sheets.font(13), sheets.font(15)
    cell_w, cell_h = THUMB + 2 * BORDER, THUMB + 2 * BORDER + CAPTION_H
    width = GAP + (top + 1) * (cell_w + GAP)
    height = HEADER_H + GAP + max(len(rows), 1) * (cell_h + GAP)
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    headers = ["query", *(f"#{i + 1}" for i in range(top))]
    for col, header in enumerate(headers):
        draw.text((GAP + col * (cell_w + GAP) + BORDER, 5), header, fill=TEXT_COLOUR, font=bold)
    for r, row in enumerate(rows):
        y = HEADER_H + GAP + r * (cell_h + GAP)
        cells = [(row.query_path, row.query_label, None, QUERY_COLOUR)]
        for nb in list(row.neighbours)[:top]:
            colour = SAME_COLOUR if nb.label == row.query_label else DIFF_COLOUR
            cells.append((nb.path, nb.label, nb.similarity, colour))
        for col, (img_path, label, sim, colour) in enumerate(cells):
            x = GAP + col * (cell_w + GAP)
            draw.rectangle((x, y, x + cell_w - 1, y + THUMB + 2 * BORDER - 1), fill=colour)
            sheet.paste(sheets.thumbnail(img_path, THUMB), (x + BORDER, y + BORDER))
            line2 = "query" if sim is None else f"similarity {sim:.3f}"
            ty = y + THUMB + 2 * BORDER + 2
            draw.text((x, ty), _fit_text(draw, label, font, cell_w), fill=TEXT_COLOUR, font=font)
            draw.text((x, ty + 16), line2, fill=colour, font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG", optimize=True)
    return path


def similarity_histogram(
    path: Path | str,
    same: np.ndarray,
    different: np.ndarray,
    threshold: float | None = None,
    title: str = "Cosine similarity of photo pairs",
) -> Path:
    """PNG with density histograms of same- and different-species pair similarities."""
    path = Path(path)
    fig = Figure(figsize=(8, 4.5), dpi=110)
    ax = fig.add_subplot()
    values = [np.asarray(v, dtype=np.float64) for v in (same, different)]
    nonempty = [v for v in values if v.size]
    low = min((float(v.min()) for v in nonempty), default=0.0)
    bins = np.linspace(min(low, 0.0), 1.0, 51)
    for data, name, colour in zip(
        values, ("same species", "different species"), ("g", "r"), strict=True
    ):
        if data.size:
            ax.hist(
                data,
                bins=bins,
                density=True,
                alpha=0.55,
                color=colour,
                label=f"{name} (n={data.size}, mean {data.mean():.3f})",
            )
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", label=f"open-set threshold {threshold:g}")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title(title)
    if nonempty or threshold is not None:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _fmt(value: Any, percent: bool = False, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.1%}" if percent else f"{value:.{digits}f}"
    return str(value)


_METRIC_ROWS = [
    ("species_recall_at_1", "Species recall@1 (nearest other photo, same species)", True),
    ("species_map", "Species mAP (all other photos ranked)", False),
    ("coarse_precision_at_10", "Coarse-group precision@10", True),
    ("species_top1_accuracy", "Species top-1 accuracy (engine's answer, held out)", True),
    ("known_species_not_sure_rate", "'Not sure' rate on known species", True),
    ("open_set_not_sure_rate", "'Not sure' rate on left-out species (open set)", True),
    ("near_duplicate_recall_at_1", "Near-duplicate recall@1 (6 alterations)", True),
    ("genus_recall_at_1", "Genus recall@1 (nearest other photo, same genus)", True),
    ("named_answer_precision", "Precision of named answers (calibrated, held-out)", True),
    ("rank_answer_precision", "Precision of genus/family/order/class answers (held-out)", True),
    ("ece", "Calibration error ECE, 15 bins (held-out; lower is better)", False),
]


def _with_ci(value: Any, interval: Any, percent: bool) -> str:
    text = _fmt(value, percent)
    if value is not None and interval:
        text += f" [{_fmt(float(interval[0]), percent)}, {_fmt(float(interval[1]), percent)}]"
    return text


def _null_ece(band: Sequence[float] | None) -> str:
    if not band:
        return "n/a"
    return f"{_fmt(band[0])} (median), up to {_fmt(band[1])} (95th percentile)"


def _goal_lines(goals: dict[str, dict[str, Any]]) -> list[str]:
    """The goals table (`kontrol.evaluation.goals`): target, value [CI], verdict."""
    if not goals:
        return []
    lines = [
        "",
        "## Goals",
        "",
        "'met' / 'missed': the whole 95 % interval is on that side of the target; "
        "'within noise': only the point estimate is.",
        "",
        "| Goal | Target | Value [95% CI] | Queries | Verdict |",
        "|---|---|---|---|---|",
    ]
    for metric, row in goals.items():
        value = _with_ci(row.get("value"), row.get("ci95"), False)
        lines.append(
            f"| {metric} | {row['target']} | {value} | {row.get('queries', 'n/a')} | "
            f"{row['verdict']} |"
        )
    return lines


def write_markdown(path: Path | str, result: dict[str, Any]) -> Path:
    """Markdown summary of an `evaluate()` result; picture links are relative to the report."""
    path = Path(path)
    queries = result.get("queries", {})
    coll, timing, cfg = result["collection"], result["timing"], result["config"]
    lines = [
        "# kontrol evaluation",
        "",
        f"Collection `{coll['images_dir']}`"
        + (
            f" (labels from `{coll['manifest']}`)"
            if coll.get("manifest")
            else " (labels from folders)"
        )
        + f": {coll['photos']} photos, {coll['species']} species, "
        f"{coll['species_with_2plus']} with 2+ photos. Model: {cfg.get('model') or 'n/a'}; "
        f"classifier: {cfg['classifier']}"
        + (f" (answers by {cfg['answer_sources']})" if cfg.get("answer_sources") else "")
        + f"; k = {cfg['k']}; seed = {cfg['seed']}.",
        "",
        "| Metric | Value [95% CI] | Queries |",
        "|---|---|---|",
    ]
    cis = result.get("ci95") or {}
    for key, name, percent in _METRIC_ROWS:
        value = _with_ci(result.get(key), cis.get(key), percent)
        lines.append(f"| {name} | {value} | {queries.get(key, 'n/a')} |")
    rc = result.get("risk_coverage") or {}
    if result.get("ece") is not None:
        lines += [
            "",
            f"Named answers at the threshold {cfg.get('min_probability')} "
            f"(used per fold: {rc.get('thresholds_used')}; target precision "
            f"{_fmt(cfg.get('target_precision'), True)}): "
            f"coverage {_fmt(result.get('named_answer_coverage'), True)} of queries; answers at "
            f"a higher rank: {_fmt(result.get('rank_answer_coverage'), True)}; raw vote "
            f"share ECE {_fmt(result.get('ece_raw_share'))}. Exact probabilities on as many "
            f"queries would show ECE {_null_ece(result.get('ece_if_calibrated'))}. Lowest "
            "threshold keeping "
            f"precision >= {_fmt(rc.get('target_precision'), True)} on a plateau (+-0.05): "
            f"{_fmt(rc.get('threshold_for_target'), digits=2)}. Intervals: bootstrap over "
            f"queries, {cfg.get('bootstrap_reps')} reps, seed {cfg['seed']}.",
        ]
    lines += _goal_lines(result.get("goals") or {})
    lines += [
        "",
        "| Speed | Value |",
        "|---|---|",
        f"| Query latency p50 / p95 (decode + embed + search) | "
        f"{_fmt(result.get('query_latency_ms_p50'), digits=1)} / "
        f"{_fmt(result.get('query_latency_ms_p95'), digits=1)} ms "
        f"({timing.get('latency_queries', 0)} queries) |",
        f"| Indexing throughput (decode + embed) | "
        f"{_fmt(result.get('indexing_photos_per_s'), digits=1)} photos/s |",
        f"| Whole run | {_fmt(timing.get('total_seconds'), digits=1)} s |",
    ]
    by_kind = result.get("near_duplicate_by_alteration") or {}
    if by_kind:
        lines += ["", "| Alteration | Near-duplicate recall@1 |", "|---|---|"]
        lines += [f"| {kind} | {_fmt(value, True)} |" for kind, value in by_kind.items()]
    sims = result.get("similarity") or {}
    lines += [
        "",
        "Same-species pairs: mean similarity "
        f"{_fmt(sims.get('same_species_mean'))} over {sims.get('same_pairs', 0)} pairs; "
        f"different species: {_fmt(sims.get('different_species_mean'))} over "
        f"{sims.get('different_pairs', 0)} pairs.",
        "",
        "Eligibility: species metrics use photos whose species has at least 2 photos; coarse "
        "precision uses photos whose coarse group has at least 15 photos (n/a without a coarse "
        "column); the open-set rate hides each species in turn from the gallery and counts "
        "how often its photos get 'not sure'. A metric over few queries is noisy.",
    ]
    skipped = coll.get("skipped") or []
    if skipped:
        lines += ["", f"Skipped {len(skipped)} unreadable photo(s):"]
        lines += [f"- `{rel}`: {reason}" for rel, reason in skipped[:20]]
    files = result.get("files") or {}
    for key, caption in (
        ("contact_sheet", "Sample queries"),
        ("histogram", "Similarities"),
        ("reliability", "Reliability"),
        ("risk_coverage", "Risk-coverage"),
    ):
        if files.get(key):
            rel = Path(files[key]).name if Path(files[key]).parent == path.parent else files[key]
            lines += ["", f"## {caption}", "", f"![{caption}]({rel})"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
