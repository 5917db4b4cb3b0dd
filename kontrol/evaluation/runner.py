"""`evaluate()`: run the product's own embedding and classification on a labelled collection.

The runner knows nothing about indexes: the caller passes `embed_fn` (a list of PIL images ->
(N, d) L2-normalised rows), optionally the vectors the engine stored and `query_fn` (one photo ->
whatever the product's search returns). Species answers go through the engine's own
classification path (`kontrol.evaluation.served`: the head or the calibrated vote, whichever the
engine would use, fitted held out and in memory), so the numbers measure the pipeline the bot
serves and this module can be tested with fake embeddings. Photos are streamed in batches, so
memory stays bounded by the batch size (the N x N similarity matrix aside, which is fine up to
tens of thousands of photos).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from core.answer import LineageFn, table_lineage
from core.calibration import expected_calibration_error
from core.errors import KontrolError
from core.imagenet import animal_share
from core.risk_coverage import MIN_NAMED, choose_threshold
from kontrol.evaluation import metrics, quality
from kontrol.evaluation.augment import alter_all
from kontrol.evaluation.goals import goal_table
from kontrol.evaluation.labels import LabelledPhoto, load_labels
from kontrol.evaluation.report import (
    Neighbour,
    SheetRow,
    contact_sheet,
    similarity_histogram,
    write_markdown,
)
from kontrol.evaluation.served import AnswerPolicy, held_out_answers, outsider_answers

#: The product's default classification settings (KONTROL_CLASSIFY_* unset).
DEFAULT_POLICY = AnswerPolicy()

#: Images -> (N, d) embeddings; an object with an `.embeddings` array (EmbedOutput) also works.
EmbedFn = Callable[[list[Image.Image]], Any]
LoadFn = Callable[[Path], Image.Image]
QueryFn = Callable[[Image.Image], object]
ProgressFn = Callable[[str, int, int], None]

REPORT_NAME = "report.md"
SHEET_NAME = "contact_sheet.png"
HISTOGRAM_NAME = "similarity_histogram.png"
JSON_NAME = "eval.json"
RELIABILITY_NAME = "reliability.png"
RISK_COVERAGE_NAME = "risk_coverage.png"


def default_load(path: Path) -> Image.Image:
    """Plain decode with EXIF orientation; pass `core.imageio.load_image` to match the product."""
    with Image.open(path) as img:
        return ImageOps.exif_transpose(img).convert("RGB")


def _as_matrix(output: Any, expected: int) -> np.ndarray:
    """Embeddings from `embed_fn`, re-normalised defensively (cosine must equal dot product)."""
    emb = np.asarray(getattr(output, "embeddings", output), dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != expected:
        raise ValueError(f"embed_fn returned shape {emb.shape} for {expected} images")
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


class _Embedder:
    """Streams images into `embed_fn` in batches and collects rows plus time spent."""

    def __init__(self, embed_fn: EmbedFn, batch_size: int) -> None:
        self.embed_fn, self.batch_size = embed_fn, batch_size
        self.pending: list[Image.Image] = []
        self.rows: list[np.ndarray] = []
        self.seconds = 0.0

    def add(self, images: Sequence[Image.Image]) -> None:
        self.pending.extend(images)
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            start = time.perf_counter()
            self.rows.append(_as_matrix(self.embed_fn(self.pending), len(self.pending)))
            self.seconds += time.perf_counter() - start
            self.pending = []

    def matrix(self, dim: int | None = None) -> np.ndarray:
        self.flush()
        if self.rows:
            return np.concatenate(self.rows)
        return np.zeros((0, dim or 0), dtype=np.float32)


def _embed_collection(
    photos: list[LabelledPhoto],
    embed_fn: EmbedFn,
    load_fn: LoadFn,
    batch_size: int,
    near_duplicates: bool,
    seed: int,
    progress: ProgressFn | None,
    stored: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Embed originals (timed as indexing) and, per photo, its six alterations (timed apart).

    `stored` (relative path -> vector) supplies the originals' vectors the engine already holds:
    what is measured is then what is served, and they are not embedded a second time.
    """
    originals = _Embedder(embed_fn, batch_size)
    reused: dict[int, np.ndarray] = {}
    altered = _Embedder(embed_fn, batch_size)
    kept: list[LabelledPhoto] = []
    skipped: list[tuple[str, str]] = []
    altered_of: list[int] = []
    kinds: list[str] = []
    load_seconds = alter_seconds = 0.0
    for number, photo in enumerate(photos, start=1):
        start = time.perf_counter()
        try:
            image = load_fn(photo.path)
        except (KontrolError, OSError, ValueError, Image.DecompressionBombError) as exc:
            skipped.append((photo.rel, str(exc) or type(exc).__name__))
            continue
        finally:
            load_seconds += time.perf_counter() - start
        vector = stored.get(photo.rel) if stored is not None else None
        if vector is not None:
            reused[len(kept)] = np.asarray(vector, dtype=np.float32)
        else:
            originals.add([image])
        if near_duplicates:
            start = time.perf_counter()
            # A per-photo seed: reproducible, yet each photo gets its own crop position.
            variants = alter_all(image, seed=seed * 1_000_003 + len(kept))
            alter_seconds += time.perf_counter() - start
            altered.add([img for _, img in variants])
            kinds.extend(name for name, _ in variants)
            altered_of.extend([len(kept)] * len(variants))
        kept.append(photo)
        if progress:
            progress("embedding", number, len(photos))
    gallery = originals.matrix()
    if reused:  # stored rows and freshly embedded ones, back in the photos' order
        fresh = iter(gallery)
        rows = [reused[i] if i in reused else next(fresh) for i in range(len(kept))]
        gallery = _as_matrix(np.stack(rows), len(kept))
    return {
        "photos": kept,
        "skipped": skipped,
        "gallery": gallery,
        "altered": altered.matrix(gallery.shape[1] if gallery.size else None),
        "altered_of": np.array(altered_of, dtype=np.int64),
        "kinds": kinds,
        "index_seconds": load_seconds + originals.seconds,
        "reused_vectors": len(reused),
        "near_dup_seconds": alter_seconds + altered.seconds,
    }


def _search_fn(gallery: np.ndarray, k: int) -> Callable[[np.ndarray], object]:
    """Top-k inner-product search over the run's embeddings (FAISS when present, as the engine)."""
    try:
        import faiss
    except ImportError:
        return lambda q: np.argsort(-(q @ gallery.T), axis=1)[:, :k]
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(np.ascontiguousarray(gallery, dtype=np.float32))
    return lambda q: index.search(np.ascontiguousarray(q, dtype=np.float32), k)


def _latencies(
    photos: list[LabelledPhoto],
    gallery: np.ndarray,
    *,
    embed_fn: EmbedFn,
    load_fn: LoadFn,
    query_fn: QueryFn | None,
    count: int,
    k: int,
    seed: int,
) -> list[float]:
    """Milliseconds per single-photo query (decode + embed + search, or decode + `query_fn`)."""
    if not photos or count <= 0:
        return []
    search = _search_fn(gallery, min(k, len(photos)))

    def one(path: Path) -> None:
        image = load_fn(path)
        if query_fn is not None:
            query_fn(image)
        else:
            search(_as_matrix(embed_fn([image]), 1))

    sample = random.Random(seed).sample(photos, min(count, len(photos)))
    one(sample[0].path)  # warm-up: first-call allocations are not a user's latency
    timings = []
    for photo in sample:
        start = time.perf_counter()
        one(photo.path)
        timings.append((time.perf_counter() - start) * 1000.0)
    return timings


def _sheet_rows(
    photos: list[LabelledPhoto], sim: np.ndarray, count: int, seed: int
) -> list[SheetRow]:
    """Sample queries (species with 2+ photos first, so green borders are possible) + top-5."""
    labels = [p.label for p in photos]
    mask = metrics.eligible(labels, 2)
    repeated, single = np.flatnonzero(mask).tolist(), np.flatnonzero(~mask).tolist()
    rng = random.Random(seed)
    chosen = rng.sample(repeated, min(count, len(repeated)))
    chosen += rng.sample(single, min(count - len(chosen), len(single)))
    idx, sims = metrics.top_k(sim, 5)
    return [
        SheetRow(
            photos[q].path,
            photos[q].label,
            [
                Neighbour(photos[j].path, photos[j].label, float(s))
                for j, s in zip(idx[q], sims[q], strict=True)
            ],
        )
        for q in chosen
    ]


def _non_animal_not_sure_rate(
    paths: Sequence[Path],
    gallery: np.ndarray,
    labels: list[str],
    embed_fn: EmbedFn,
    load_fn: LoadFn,
    policy: AnswerPolicy,
    lineage: LineageFn,
    seed: int,
) -> metrics.Score:
    """Read and embed the photos with no animal; the share the engine would not name a species."""
    images = []
    for path in paths:
        try:
            images.append(load_fn(Path(path)))
        except (KontrolError, OSError, ValueError):
            continue
    if not images:
        return metrics.Score(None, 0)
    output = embed_fn(images)
    queries = _as_matrix(output, len(images))
    logits = getattr(output, "logits", None)  # the engine's no-animal check, where known
    shares = None if logits is None else [animal_share(row) for row in logits]
    answers = outsider_answers(
        queries, gallery, labels, policy, seed=seed, lineage=lineage, animal_shares=shares
    )
    return metrics.Score.of(np.array([a.get("species") is None for a in answers], dtype=bool))


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def evaluate(
    images_dir: Path | str,
    manifest: Path | str | None = None,
    *,
    embed_fn: EmbedFn,
    out_dir: Path | str | None = None,
    json_path: Path | str | None = None,
    load_fn: LoadFn = default_load,
    query_fn: QueryFn | None = None,
    policy: AnswerPolicy = DEFAULT_POLICY,
    batch_size: int = 32,
    seed: int = 0,
    near_duplicates: bool = True,
    latency_queries: int = 30,
    sample_queries: int = 8,
    bootstrap_reps: int = quality.BOOTSTRAP_REPS,
    model: str | None = None,
    folds: int = 5,
    lineage: LineageFn = table_lineage,
    progress: ProgressFn | None = None,
    negatives: Sequence[Path] = (),
    stored: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Evaluate search and classification on a labelled collection; returns the metrics dict.

    Species answers follow the engine: `policy` is its KONTROL_CLASSIFY_* settings
    (`AnswerPolicy.from_settings`), `lineage` its taxonomy, e.g. from the index's payloads;
    `folds` is the cross-fitting of the head and calibration; `model` only labels the report.
    With `out_dir`, writes report.md, contact_sheet.png, similarity_histogram.png and eval.json
    there; `json_path` overrides where the JSON goes.
    Raises ManifestError for bad labels and KontrolError when no photo could be read.
    """
    began = time.perf_counter()
    images_dir = Path(images_dir)
    photos = load_labels(images_dir, manifest)
    run = _embed_collection(
        photos, embed_fn, load_fn, batch_size, near_duplicates, seed, progress, stored
    )
    kept: list[LabelledPhoto] = run["photos"]
    if not kept:
        raise KontrolError(
            f"None of the {len(photos)} labelled photos in {images_dir} could be read."
        )
    gallery: np.ndarray = run["gallery"]
    labels = [p.label for p in kept]
    coarse = [p.coarse for p in kept]
    has_coarse = any(c is not None for c in coarse)
    k, min_similarity, target_precision = (
        policy.k,
        policy.min_similarity,
        policy.target_precision,
    )

    if progress:
        progress("metrics", 0, 1)
    sim = metrics.similarity_matrix(gallery)
    recall = metrics.species_recall_at_1(sim, labels)
    mean_ap = metrics.species_map(sim, labels)
    coarse_p10 = (
        metrics.coarse_precision_at_k(sim, coarse, k=10) if has_coarse else metrics.Score(None, 0)
    )
    # Species answers, held out, through the engine's own path: as a new photo of what the
    # collection holds (singletons stand for animals it lacks), and as an unknown species.
    served = held_out_answers(gallery, labels, policy, folds=folds, seed=seed, lineage=lineage)
    unknown = held_out_answers(
        gallery, labels, policy, folds=folds, seed=seed, lineage=lineage, hide_species=True
    )
    known = metrics.eligible(labels, 2)[served.queries]
    named_mask, right = served.named(), served.right()
    top1 = metrics.Score.of(right[known])
    known_unsure = metrics.Score.of(~named_mask[known])
    open_set = metrics.Score.of(~unknown.named())
    non_animal = _non_animal_not_sure_rate(
        negatives, gallery, labels, embed_fn, load_fn, policy, lineage, seed
    )
    near_dup, by_kind = (metrics.Score(None, 0), {})
    if near_duplicates and len(run["altered_of"]):
        near_dup, by_kind = metrics.near_duplicate_recall_at_1(
            run["altered"], run["altered_of"], gallery, run["kinds"]
        )
    same, different = metrics.pair_similarities(sim, labels, seed=seed)

    # Answer quality over every photo asked as new, singletons included.
    named_hits = metrics.Score.of(right[named_mask])
    rank_graded, rank_right = served.rank_outcomes(lineage)  # answers whose truth is known there
    rank_hits = metrics.Score.of(rank_right[rank_graded])
    asked = len(served.queries)
    held = None
    if asked >= MIN_NAMED:
        held = quality.HeldOut(
            confidence=served.confidence(),
            raw=served.raw_share(),
            correct=served.top_correct(),
            best_similarity=served.best_similarity(),
            fold=np.zeros(asked, dtype=np.int64),
        )
    ece = ece_raw = ece_null = None
    threshold_for_target = None
    curve = None
    if held is not None:
        ece = expected_calibration_error(held.confidence, held.correct)
        ece_null = quality.ece_if_calibrated(held.confidence, reps=bootstrap_reps, seed=seed)
        ece_raw = expected_calibration_error(held.raw, held.correct)
        curve = quality.curve_of(held, min_similarity)
        threshold_for_target = choose_threshold(
            curve, target=target_precision, min_coverage=MIN_NAMED / asked
        )
    genus_hits, _ = quality.genus_recall_at_1(sim, labels)
    genus_recall = metrics.Score.of(genus_hits)

    if progress:
        progress("latency", 0, 1)
    lat = _latencies(
        kept,
        gallery,
        embed_fn=embed_fn,
        load_fn=load_fn,
        query_fn=query_fn,
        count=latency_queries,
        k=k,
        seed=seed,
    )
    scores = {
        "species_recall_at_1": recall,
        "species_map": mean_ap,
        "coarse_precision_at_10": coarse_p10,
        "species_top1_accuracy": top1,
        "known_species_not_sure_rate": known_unsure,
        "open_set_not_sure_rate": open_set,
        "non_animal_not_sure_rate": non_animal,
        "near_duplicate_recall_at_1": near_dup,
        "named_answer_precision": named_hits,
        "rank_answer_precision": rank_hits,
        "genus_recall_at_1": genus_recall,
    }

    def ci(values: Any, stat: Any = np.mean) -> list[float] | None:
        if values is None or len(values) == 0:
            return None
        got = quality.bootstrap_ci(values, stat, reps=bootstrap_reps, seed=seed)
        return None if got is None else [round(got[0], 4), round(got[1], 4)]

    ci95: dict[str, list[float] | None] = {key: ci(sc.values) for key, sc in scores.items()}
    if held is not None:
        pairs = np.stack([held.confidence, held.correct.astype(np.float64)], axis=1)
        ci95["ece"] = ci(pairs, quality.ece_of)
    if lat:
        ci95["query_latency_ms_p50"] = ci(lat, lambda v: float(np.percentile(v, 50)))
        ci95["query_latency_ms_p95"] = ci(lat, lambda v: float(np.percentile(v, 95)))
    sizes = metrics.group_sizes(labels)
    coarse_sizes = metrics.group_sizes(coarse)
    result: dict[str, Any] = {
        "species_recall_at_1": _round(recall.value),
        "species_map": _round(mean_ap.value),
        "coarse_precision_at_10": _round(coarse_p10.value),
        "species_top1_accuracy": _round(top1.value),
        "known_species_not_sure_rate": _round(known_unsure.value),
        "open_set_not_sure_rate": _round(open_set.value),
        "non_animal_not_sure_rate": _round(non_animal.value),
        "near_duplicate_recall_at_1": _round(near_dup.value),
        "ece": _round(ece),
        "ece_raw_share": _round(ece_raw),
        # [median, 95th percentile] of the ECE exact probabilities would show on these queries
        "ece_if_calibrated": None if ece_null is None else [_round(v) for v in ece_null],
        "named_answer_precision": _round(named_hits.value),
        "named_answer_coverage": _round(named_hits.n / asked) if asked else None,
        "rank_answer_precision": _round(rank_hits.value),
        "rank_answer_coverage": _round(float(served.rank_answered().mean())) if asked else None,
        "genus_recall_at_1": _round(genus_recall.value),
        "query_latency_ms_p50": _round(float(np.percentile(lat, 50)), 2) if lat else None,
        "query_latency_ms_p95": _round(float(np.percentile(lat, 95)), 2) if lat else None,
        # with the engine's stored vectors nothing was embedded here: its own report has the rate
        "indexing_photos_per_s": None
        if run["reused_vectors"]
        else _round(len(kept) / max(run["index_seconds"], 1e-9), 2),
        "queries": {
            "species_recall_at_1": recall.n,
            "species_map": mean_ap.n,
            "coarse_precision_at_10": coarse_p10.n,
            "species_top1_accuracy": top1.n,
            "known_species_not_sure_rate": known_unsure.n,
            "open_set_not_sure_rate": open_set.n,
            "non_animal_not_sure_rate": non_animal.n,
            "near_duplicate_recall_at_1": near_dup.n,
            "ece": asked if held is not None else 0,
            "named_answer_precision": named_hits.n,
            "rank_answer_precision": rank_hits.n,
            "genus_recall_at_1": genus_recall.n,
        },
        "ci95": ci95,
        "risk_coverage": {
            "target_precision": target_precision,
            "threshold_for_target": threshold_for_target,
            # what the engine's 'auto' chose in each fold, from that fold's training photos
            "thresholds_used": [round(t, 2) for t in served.thresholds],
            "curve": (
                []
                if curve is None
                else [
                    [float(t), _round(c), _round(None if np.isnan(p) else p)]
                    for t, c, p in zip(curve.grid, curve.coverage, curve.precision, strict=True)
                ]
            ),
        },
        "near_duplicate_by_alteration": {kind: _round(s.value) for kind, s in by_kind.items()},
        "similarity": {
            "same_species_mean": _round(float(same.mean())) if same.size else None,
            "different_species_mean": _round(float(different.mean())) if different.size else None,
            "same_pairs": int(same.size),
            "different_pairs": int(different.size),
        },
        "collection": {
            "images_dir": str(images_dir),
            "manifest": str(manifest) if manifest else None,
            "photos": len(kept),
            "species": len(set(labels)),
            "species_with_2plus": len(
                {lab for lab, n in zip(labels, sizes, strict=True) if n >= 2}
            ),
            "coarse_groups": len({c for c in coarse if c is not None}),
            "coarse_groups_15plus": len(
                {c for c, n in zip(coarse, coarse_sizes, strict=True) if c is not None and n >= 15}
            ),
            "skipped": [list(item) for item in run["skipped"]],
        },
        "timing": {
            "indexing_seconds": _round(run["index_seconds"], 3),
            "near_duplicate_seconds": _round(run["near_dup_seconds"], 3),
            "latency_queries": len(lat),
            "vectors_from_index": run["reused_vectors"],
        },
        "config": {
            "model": model,
            "classifier": "engine path (core.answer.classify_neighbours), held out",
            "answer_sources": served.sources,
            "folds": folds,
            "k": k,
            "seed": seed,
            "batch_size": batch_size,
            "min_similarity": min_similarity,
            "min_confidence": policy.min_confidence,
            "min_probability": policy.min_probability,
            "target_precision": target_precision,
            "min_animal_share": policy.min_animal_share,
            "vote_temperature": policy.temperature,
            "bootstrap_reps": bootstrap_reps,
        },
        "files": {},
    }
    if out_dir is not None:
        if progress:
            progress("report", 0, 1)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        rows = _sheet_rows(kept, sim, sample_queries, seed)
        result["files"]["contact_sheet"] = str(contact_sheet(out / SHEET_NAME, rows))
        result["files"]["histogram"] = str(
            similarity_histogram(out / HISTOGRAM_NAME, same, different, threshold=min_similarity)
        )
        if held is not None and curve is not None:
            result["files"]["reliability"] = str(
                quality.reliability_diagram(out / RELIABILITY_NAME, held)
            )
            result["files"]["risk_coverage"] = str(
                quality.risk_coverage_plot(
                    out / RISK_COVERAGE_NAME,
                    curve,
                    threshold=float(np.median(served.thresholds)) if served.thresholds else None,
                    target=target_precision,
                )
            )
        result["files"]["report"] = str(out / REPORT_NAME)
    json_target = Path(json_path) if json_path else (Path(out_dir) / JSON_NAME if out_dir else None)
    if json_target is not None:
        result["files"]["json"] = str(json_target)
    result["timing"]["total_seconds"] = _round(time.perf_counter() - began, 3)
    result["goals"] = goal_table(result)
    if out_dir is not None:
        write_markdown(result["files"]["report"], result)
    if json_target is not None:
        json_target.parent.mkdir(parents=True, exist_ok=True)
        json_target.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return result
