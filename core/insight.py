"""Collection insight from the stored vectors: near-duplicates, clusters, suspicious labels.

Everything goes through the `VectorStore` interface and streams the store in batches; nothing is
O(N^2) in memory or in Python work:

- two passes over the store: the first keeps each record's id and payload (O(N) strings) and a
  bounded random sample of vectors, on which FAISS k-means is trained; the second searches each
  batch's k nearest neighbours with `store.search` (the store's own index: exact while small, IVF
  when large) and assigns every vector to its nearest centroid;
- near-duplicates: pairs of photos whose cosine similarity is at least `dup_threshold` among each
  other's k nearest neighbours, joined into groups by union-find (so a group can be larger than k);
- suspicious labels: a photo whose similarity-weighted neighbour vote mostly names another value
  than its own at some rank (species, genus, family, order, class), counted only at ranks where its
  own value has enough other photos to be able to agree;
- split species: a species whose photos (a bounded sample, fetched by id) fall into groups that are
  not linked by any pair above `split_threshold` (single linkage), i.e. distant clusters.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.vectorstore.base import VectorStore

#: Ranks the suspicious-label vote looks at, most specific first (payload field names).
RANKS = ("species", "genus", "family", "order", "class")

#: Defaults, chosen on the demo collection (see BENCHMARKS.md, "Collection insight").
DUP_THRESHOLD = 0.82
NEIGHBOURS = 10
SUSPICIOUS_MIN_SCORE = 0.4
MIN_SUPPORT = 2
SPLIT_THRESHOLD = 0.2
SPLIT_SAMPLE = 200
KMEANS_SAMPLE = 32_000
KMEANS_NITER = 20

ProgressFn = Callable[[str, int, int], None]


@dataclass
class Options:
    """Knobs of `analyse` (the CLI's flags)."""

    neighbours: int = NEIGHBOURS
    dup_threshold: float = DUP_THRESHOLD
    clusters: int | None = None  # None: round(sqrt(N))
    kmeans_sample: int = KMEANS_SAMPLE
    kmeans_niter: int = KMEANS_NITER
    suspicious_min_score: float = SUSPICIOUS_MIN_SCORE
    min_support: int = MIN_SUPPORT
    split_threshold: float = SPLIT_THRESHOLD
    split_sample: int = SPLIT_SAMPLE
    batch_size: int = 1024
    seed: int = 0
    #: Neighbours kept as evidence of each suspicious photo.
    evidence: int = 5


@dataclass
class Insight:
    """What `analyse` found; `to_json()` is the `--json` document."""

    count: int
    ids: list[str]
    payloads: list[dict[str, Any]]
    duplicate_groups: list[dict[str, Any]]
    clusters: list[dict[str, Any]]
    suspicious: list[dict[str, Any]]
    split_species: list[dict[str, Any]]
    params: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "params": self.params,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "duplicate_groups": self.duplicate_groups,
            "clusters": self.clusters,
            "suspicious": self.suspicious,
            "split_species": self.split_species,
        }


class UnionFind:
    """Disjoint sets over 0..n-1 (path halving, union by size)."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)
        self.size = np.ones(n, dtype=np.int64)

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = int(parent[x])
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def groups(self) -> list[list[int]]:
        """Sets of two or more members, each sorted, largest first."""
        out: dict[int, list[int]] = defaultdict(list)
        for x in range(len(self.parent)):
            if self.size[self.find(x)] > 1:
                out[self.find(x)].append(x)
        return sorted(out.values(), key=lambda g: (-len(g), g[0]))


def _member(ids: list[str], payloads: list[dict[str, Any]], i: int) -> dict[str, Any]:
    p = payloads[i]
    return {"id": ids[i], "path": p.get("path"), "species": p.get("species")}


def label_vote(
    own: dict[str, Any],
    neighbours: list[tuple[dict[str, Any], float]],
    support: dict[str, Counter[str]],
    min_support: int = MIN_SUPPORT,
) -> dict[str, Any] | None:
    """How strongly a photo's neighbours disagree with its label, at the rank where they disagree
    most; None when no rank can be judged.

    For each rank: weights are the neighbours' similarities (clipped at 0); `own_share` is the weight
    of neighbours sharing the photo's value, `other_share` that of the most common other value. The
    rank counts only when at least `min_support` other photos share the photo's value (otherwise
    the neighbours could not agree with it even if the label is right). Score = other - own share.
    """
    best: dict[str, Any] | None = None
    weights = np.array([max(s, 0.0) for _, s in neighbours], dtype=np.float64)
    total = float(weights.sum())
    if total <= 0:
        return None
    for rank in RANKS:
        value = own.get(rank)
        if value is None or support[rank].get(str(value), 0) - 1 < min_support:
            continue
        tally: Counter[str] = Counter()
        for (payload, _), w in zip(neighbours, weights, strict=True):
            nv = payload.get(rank)
            if nv is not None:
                tally[str(nv)] += w
        own_share = tally.pop(str(value), 0.0) / total
        if not tally:
            score, other, other_share = -own_share, None, 0.0
        else:
            other, weight = tally.most_common(1)[0]
            other_share = weight / total
            score = other_share - own_share
        if best is None or score > best["score"]:
            best = {
                "score": round(float(score), 4),
                "rank": rank,
                "label": str(value),
                "own_share": round(float(own_share), 4),
                "likely": other,
                "likely_share": round(float(other_share), 4),
            }
    return best


def _sample_positions(n: int, size: int, seed: int) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def train_kmeans(sample: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    """Spherical k-means centroids (k, d) of the sampled vectors (FAISS, inner product)."""
    import faiss

    k = max(1, min(k, len(sample)))
    km = faiss.Kmeans(
        sample.shape[1],
        k,
        niter=niter,
        spherical=True,
        seed=seed,
        max_points_per_centroid=max(256, len(sample) // k + 1),
        min_points_per_centroid=1,
        verbose=False,
    )
    km.train(np.ascontiguousarray(sample, dtype=np.float32))
    return np.asarray(km.centroids, dtype=np.float32)


def analyse(
    store: VectorStore,
    options: Options | None = None,
    progress: ProgressFn | None = None,
) -> Insight:
    """Duplicates, clusters, suspicious photos and split species of everything in `store`."""
    import faiss

    opt = options or Options()
    timings: dict[str, float] = {}
    n_expected = store.count()
    positions = _sample_positions(n_expected, opt.kmeans_sample, opt.seed)

    # Pass 1: ids, payloads, rank supports and the k-means sample.
    t0 = time.perf_counter()
    ids: list[str] = []
    payloads: list[dict[str, Any]] = []
    samples: list[np.ndarray] = []
    for batch in store.iterate(opt.batch_size, vectors=True):
        start, stop = len(ids), len(ids) + len(batch.ids)
        ids.extend(batch.ids)
        payloads.extend(batch.payloads)
        lo, hi = np.searchsorted(positions, [start, stop])
        if hi > lo and batch.vectors is not None:
            samples.append(batch.vectors[positions[lo:hi] - start])
        if progress:
            progress("reading", stop, n_expected)
    n = len(ids)
    index_of = {id_: i for i, id_ in enumerate(ids)}
    support: dict[str, Counter[str]] = {r: Counter() for r in RANKS}
    for p in payloads:
        for r in RANKS:
            if p.get(r) is not None:
                support[r][str(p[r])] += 1
    timings["read"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    k_clusters = opt.clusters or max(1, round(np.sqrt(max(n, 1))))
    centroids = None
    if n:
        sample = np.concatenate(samples) if samples else np.zeros((0, 1), np.float32)
        centroids = train_kmeans(sample, k_clusters, opt.kmeans_niter, opt.seed)
    del samples
    timings["kmeans_train"] = time.perf_counter() - t0

    # Pass 2: k nearest neighbours of every photo, and its cluster.
    t0 = time.perf_counter()
    uf = UnionFind(n)
    edge_sim: dict[tuple[int, int], float] = {}
    assignment = np.full(n, -1, dtype=np.int64)
    centroid_sim = np.zeros(n, dtype=np.float32)
    suspicious: list[dict[str, Any]] = []
    centroid_index = None
    if centroids is not None:
        centroid_index = faiss.IndexFlatIP(centroids.shape[1])
        centroid_index.add(centroids)
    done = 0
    for batch in store.iterate(opt.batch_size, vectors=True):
        if not batch.ids or batch.vectors is None:
            continue
        vectors = np.ascontiguousarray(batch.vectors, dtype=np.float32)
        rows = np.array([index_of[i] for i in batch.ids], dtype=np.int64)
        if centroid_index is not None:
            sims, labels = centroid_index.search(vectors, 1)
            assignment[rows] = labels[:, 0]
            centroid_sim[rows] = sims[:, 0]
        hits = store.search(vectors, opt.neighbours + 1)
        for row, own_id, payload, found in zip(rows, batch.ids, batch.payloads, hits, strict=True):
            nbs = [h for h in found if h.id != own_id][: opt.neighbours]
            for h in nbs:
                if h.score < opt.dup_threshold:
                    break
                other = index_of.get(h.id)
                if other is None:
                    continue
                uf.union(int(row), other)
                key = (min(int(row), other), max(int(row), other))
                edge_sim[key] = max(edge_sim.get(key, -1.0), float(h.score))
            vote = label_vote(
                payload, [(h.payload, h.score) for h in nbs], support, opt.min_support
            )
            if vote is not None and vote["score"] >= opt.suspicious_min_score:
                suspicious.append(
                    {
                        **_member(ids, payloads, int(row)),
                        **vote,
                        "neighbours": [
                            {
                                "id": h.id,
                                "path": h.payload.get("path"),
                                "species": h.payload.get("species"),
                                "similarity": round(float(h.score), 4),
                            }
                            for h in nbs[: opt.evidence]
                        ],
                    }
                )
        done += len(batch.ids)
        if progress:
            progress("neighbours", done, n)
    timings["neighbours"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    group_sims: dict[int, list[float]] = defaultdict(list)
    for (a, _), sim in edge_sim.items():
        group_sims[uf.find(a)].append(sim)
    groups = []
    for members in uf.groups():
        sims = group_sims[uf.find(members[0])]
        species = sorted({str(payloads[i].get("species")) for i in members})
        groups.append(
            {
                "size": len(members),
                "species": species,
                "conflicting_labels": len(species) > 1,
                "min_link_similarity": round(min(sims), 4) if sims else None,
                "max_similarity": round(max(sims), 4) if sims else None,
                "members": [_member(ids, payloads, i) for i in members],
            }
        )
    timings["duplicates"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    clusters = _cluster_summaries(ids, payloads, assignment, centroid_sim, k_clusters)
    timings["clusters"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    split = split_species(store, ids, payloads, assignment, opt)
    timings["split_species"] = time.perf_counter() - t0

    suspicious.sort(key=lambda s: (-s["score"], s["path"] or ""))
    params = {
        "neighbours": opt.neighbours,
        "dup_threshold": opt.dup_threshold,
        "clusters": k_clusters,
        "kmeans_sample": int(min(n, opt.kmeans_sample)),
        "suspicious_min_score": opt.suspicious_min_score,
        "min_support": opt.min_support,
        "split_threshold": opt.split_threshold,
        "split_sample": opt.split_sample,
        "seed": opt.seed,
    }
    return Insight(
        count=n,
        ids=ids,
        payloads=payloads,
        duplicate_groups=groups,
        clusters=clusters,
        suspicious=suspicious,
        split_species=split,
        params=params,
        timings=timings,
    )


def _cluster_summaries(
    ids: list[str],
    payloads: list[dict[str, Any]],
    assignment: np.ndarray,
    centroid_sim: np.ndarray,
    k: int,
) -> list[dict[str, Any]]:
    members: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(assignment.tolist()):
        if c >= 0:
            members[c].append(i)
    out = []
    for c in sorted(members, key=lambda c: (-len(members[c]), c)):
        rows = sorted(members[c], key=lambda i: -float(centroid_sim[i]))  # most typical first
        composition = Counter(str(payloads[i].get("species")) for i in rows)
        top, top_n = composition.most_common(1)[0]
        out.append(
            {
                "cluster": int(c),
                "size": len(rows),
                "purity": round(top_n / len(rows), 4),
                "main_species": top,
                "species": dict(composition.most_common()),
                "members": [
                    {**_member(ids, payloads, i), "similarity": round(float(centroid_sim[i]), 4)}
                    for i in rows
                ],
            }
        )
    return out


def average_linkage(sims: np.ndarray, threshold: float) -> list[list[int]]:
    """Agglomerative clustering (UPGMA) of a small similarity matrix: merge the two groups with the
    highest mean pairwise similarity while it is at least `threshold`. Groups, largest first."""
    m = len(sims)
    avg = np.array(sims, dtype=np.float64)
    np.fill_diagonal(avg, -np.inf)
    sizes = np.ones(m)
    members: dict[int, list[int]] = {i: [i] for i in range(m)}
    alive = np.ones(m, dtype=bool)
    while alive.sum() > 1:
        flat = int(np.argmax(avg))
        a, b = divmod(flat, m)
        if avg[a, b] < threshold:
            break
        merged = (sizes[a] * avg[a] + sizes[b] * avg[b]) / (sizes[a] + sizes[b])
        avg[a], avg[:, a] = merged, merged
        avg[a, a] = -np.inf
        avg[b], avg[:, b] = -np.inf, -np.inf
        sizes[a] += sizes[b]
        members[a].extend(members.pop(b))
        alive[b] = False
    return sorted((sorted(g) for g in members.values()), key=lambda g: (-len(g), g[0]))


def split_species(
    store: VectorStore,
    ids: list[str],
    payloads: list[dict[str, Any]],
    assignment: np.ndarray,
    opt: Options,
) -> list[dict[str, Any]]:
    """Species whose photos form groups whose mean similarity to each other is below
    `split_threshold` (average linkage on at most `split_sample` photos per species, fetched by
    id)."""
    by_species: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(payloads):
        if p.get("species") is not None:
            by_species[str(p["species"])].append(i)
    rng = np.random.default_rng(opt.seed)
    out = []
    for species in sorted(by_species):
        rows = by_species[species]
        if len(rows) < 2:
            continue
        if len(rows) > opt.split_sample:
            rows = sorted(rng.choice(rows, opt.split_sample, replace=False).tolist())
        batch = store.fetch([ids[i] for i in rows])
        if len(batch.ids) < 2 or batch.vectors is None:
            continue
        found = set(batch.ids)
        rows = [i for i in rows if ids[i] in found]
        vecs = np.asarray(batch.vectors, dtype=np.float32)
        sims = vecs @ vecs.T
        comps = average_linkage(sims, opt.split_threshold)
        if len(comps) < 2:
            continue
        labels = np.zeros(len(vecs), dtype=np.int64)
        for ci, comp in enumerate(comps):
            labels[comp] = ci
        cross = sims[labels[:, None] != labels[None, :]]
        mean_cross = float(cross.mean()) if cross.size else None
        out.append(
            {
                "species": species,
                "photos": len(by_species[species]),
                "sampled": len(vecs),
                "groups": len(comps),
                "mean_cross_similarity": None if mean_cross is None else round(mean_cross, 4),
                "max_cross_similarity": round(float(cross.max()), 4) if cross.size else None,
                "parts": [
                    {
                        "size": len(comp),
                        "clusters": sorted({int(assignment[rows[x]]) for x in comp}),
                        "members": [_member(ids, payloads, rows[x]) for x in comp],
                    }
                    for comp in comps
                ],
            }
        )
    out.sort(key=lambda s: (s["mean_cross_similarity"] or 0.0, s["species"]))
    return out
