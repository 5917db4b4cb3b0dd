"""Retrieval metrics on a labelled collection, in plain numpy.

Everything is leave-one-out over one cosine similarity matrix (`S = E @ E.T` of L2-normalised
embeddings): a photo is never its own neighbour, so the numbers say how the product behaves when
a *new* photo of a known species arrives. Eligibility rules keep the numbers honest: a species
with one photo cannot be found by another photo, so it is not a query, and a coarse group not
much larger than the neighbour list caps precision below 1, so groups under 15 are left out.
Each metric returns a `Score` with its number of queries: a recall over 6 queries means little.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

_BLOCK = 512  # rows handled at once, so large collections never sort an N x N array in one go


@dataclass(frozen=True)
class Score:
    """A metric's value (None when no query is eligible) and how many queries it averages."""

    value: float | None
    n: int
    #: The per-query values averaged (for bootstrap intervals); None when not kept.
    values: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, hits: np.ndarray) -> Score:
        """Mean of per-query values; None rather than NaN when there are none."""
        hits = np.asarray(hits, dtype=np.float64)
        return cls(float(hits.mean()) if hits.size else None, int(hits.size), hits)


def similarity_matrix(embeddings: np.ndarray) -> np.ndarray:
    """(N, N) cosine similarities of row-normalised (N, d) embeddings, in float32."""
    emb = np.asarray(embeddings, dtype=np.float32)
    return emb @ emb.T


def _codes(labels: Sequence[str | None]) -> np.ndarray:
    """Integer codes per label; None becomes -1 (never equal to anything, never counted)."""
    names = sorted({lab for lab in labels if lab is not None})
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[lab] if lab is not None else -1 for lab in labels], dtype=np.int64)


def group_sizes(labels: Sequence[str | None]) -> np.ndarray:
    """For each item, how many items (itself included) share its label; 0 for None."""
    codes = _codes(labels)
    counts = np.bincount(codes[codes >= 0], minlength=1)
    return np.where(codes >= 0, counts[np.maximum(codes, 0)], 0)


def eligible(labels: Sequence[str | None], min_count: int) -> np.ndarray:
    """Boolean mask of items whose label has at least `min_count` items."""
    return group_sizes(labels) >= min_count


def _masked_rows(sim: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Similarity rows with the query itself pushed to -inf (leave-one-out)."""
    block = np.array(sim[rows], dtype=np.float32)
    block[np.arange(len(rows)), rows] = -np.inf
    return block


def _order(block: np.ndarray) -> np.ndarray:
    """Columns by descending similarity; ties keep index order, so results are reproducible."""
    return np.argsort(-block, axis=1, kind="stable")


def top_k(sim: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out neighbours: (N, k) indices and similarities, best first."""
    n = sim.shape[0]
    k = min(k, n - 1)
    idx = np.zeros((n, max(k, 0)), dtype=np.int64)
    for start in range(0, n, _BLOCK):
        rows = np.arange(start, min(start + _BLOCK, n))
        idx[rows] = _order(_masked_rows(sim, rows))[:, :k]
    return idx, np.take_along_axis(np.asarray(sim, dtype=np.float32), idx, axis=1)


def species_recall_at_1(sim: np.ndarray, labels: Sequence[str], min_count: int = 2) -> Score:
    """Share of eligible photos whose nearest other photo has the same label."""
    queries = np.flatnonzero(eligible(labels, min_count))
    if queries.size == 0:
        return Score(None, 0)
    codes = _codes(labels)
    hits = np.concatenate(
        [
            codes[_order(_masked_rows(sim, rows))[:, 0]] == codes[rows]
            for rows in np.array_split(queries, max(1, len(queries) // _BLOCK))
        ]
    )
    return Score.of(hits)


def average_precision(relevant: np.ndarray) -> float:
    """AP of one ranking given as booleans, best first: mean precision at each relevant rank."""
    relevant = np.asarray(relevant, dtype=bool)
    if not relevant.any():
        return 0.0
    ranks = np.flatnonzero(relevant) + 1
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


def species_map(sim: np.ndarray, labels: Sequence[str], min_count: int = 2) -> Score:
    """Mean average precision of eligible photos, ranking every other photo of the collection."""
    queries = np.flatnonzero(eligible(labels, min_count))
    if queries.size == 0:
        return Score(None, 0)
    codes = _codes(labels)
    aps = []
    for rows in np.array_split(queries, max(1, len(queries) // _BLOCK)):
        order = _order(_masked_rows(sim, rows))[:, :-1]  # the query itself sorts last (-inf)
        relevant = codes[order] == codes[rows][:, None]
        aps.extend(average_precision(r) for r in relevant)
    return Score.of(np.array(aps))


def coarse_precision_at_k(
    sim: np.ndarray, coarse: Sequence[str | None], k: int = 10, min_group: int = 15
) -> Score:
    """Share of the k nearest other photos in the query's coarse group, over groups >= min_group.

    Photos without a coarse label are never queries and always count as misses when retrieved.
    """
    queries = np.flatnonzero(eligible(coarse, min_group))
    if queries.size == 0 or sim.shape[0] < 2:
        return Score(None, 0)
    codes = _codes(coarse)
    idx, _ = top_k(sim, k)
    return Score.of((codes[idx[queries]] == codes[queries][:, None]).mean(axis=1))


def near_duplicate_hits(
    query_embeddings: np.ndarray, original_index: np.ndarray, gallery: np.ndarray
) -> np.ndarray:
    """Per altered query: does its original come first among all originals? (bool array)."""
    queries = np.asarray(query_embeddings, dtype=np.float32)
    gallery = np.asarray(gallery, dtype=np.float32)
    original_index = np.asarray(original_index, dtype=np.int64)
    hits = np.zeros(len(queries), dtype=bool)
    for start in range(0, len(queries), _BLOCK):
        block = queries[start : start + _BLOCK] @ gallery.T
        best = np.argsort(-block, axis=1, kind="stable")[:, 0]
        hits[start : start + _BLOCK] = best == original_index[start : start + _BLOCK]
    return hits


def near_duplicate_recall_at_1(
    query_embeddings: np.ndarray,
    original_index: np.ndarray,
    gallery: np.ndarray,
    kinds: Sequence[str] | None = None,
) -> tuple[Score, dict[str, Score]]:
    """Overall near-duplicate recall@1 and, when `kinds` names each query's alteration, per kind."""
    hits = near_duplicate_hits(query_embeddings, original_index, gallery)
    per_kind: dict[str, Score] = {}
    if kinds is not None:
        kinds_arr = np.asarray(kinds)
        for kind in dict.fromkeys(kinds):
            per_kind[kind] = Score.of(hits[kinds_arr == kind])
    return Score.of(hits), per_kind


def pair_similarities(
    sim: np.ndarray, labels: Sequence[str], max_pairs: int = 2_000_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Similarities of same-label and different-label pairs (i < j), for the histogram.

    Beyond `max_pairs` pairs a random sample is drawn, so a large collection stays cheap to plot.
    """
    n = sim.shape[0]
    iu, ju = np.triu_indices(n, k=1)
    if iu.size > max_pairs:
        pick = np.random.default_rng(seed).choice(iu.size, size=max_pairs, replace=False)
        iu, ju = iu[pick], ju[pick]
    codes = _codes(labels)
    values = np.asarray(sim, dtype=np.float32)[iu, ju]
    same = codes[iu] == codes[ju]
    return values[same], values[~same]
