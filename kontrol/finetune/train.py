"""Metric learning on the stored vectors: a light projection trained on CPU, judged honestly.

The backbone stays frozen: the projection maps a stored descriptor x (d) to
`normalise(x + (x A) B)` (a residual low-rank map, rank r; B starts at zero so training starts
from the unchanged space). It is trained with a supervised-contrastive loss whose positives are
photos of the same species and augmented copies of the same photo (embedded with the engine's own
embedder), plus weight decay that keeps it close to the identity.

Evaluation is photo-level cross-validation: the photos are split into folds; for each fold a
projection is trained on the other folds' photos (and their augmented copies) only, and the held
out photos are queries against the whole collection (leave-one-out), through the projection and
without it. Per-query species recall@1 and average precision give paired gains, whose mean gets a
bootstrap 95 % confidence interval. A projection is only worth adopting when that interval lies
above zero.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RANK = 128
TEMPERATURE = 0.1
WEIGHT_DECAY = 1e-3
LR = 3e-4
BATCH = 512
BOOTSTRAP = 2000


@dataclass
class Projection:
    """The learned map; `apply` works on any (n, d) array of stored descriptors."""

    a: np.ndarray  # (d, r)
    b: np.ndarray  # (r, d)
    base_fingerprint: str = ""
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        import hashlib

        h = hashlib.sha1()
        h.update(np.ascontiguousarray(self.a, np.float32).tobytes())
        h.update(np.ascontiguousarray(self.b, np.float32).tobytes())
        return h.hexdigest()[:16]

    @property
    def fingerprint(self) -> str:
        """The embedding space of projected vectors: never mixed with the base space."""
        return f"{self.base_fingerprint}|proj-r{self.a.shape[1]}-{self.digest}"

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        y = x + (x @ self.a) @ self.b
        return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)

    def save(self, path) -> None:
        import json
        from pathlib import Path

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:  # np.savez would append .npz to a name without it
            np.savez(
                fh,
                a=self.a,
                b=self.b,
                base_fingerprint=np.array(self.base_fingerprint),
                report=np.array(json.dumps(self.report, default=float)),
            )

    @classmethod
    def load(cls, path) -> Projection:
        import json

        with np.load(path, allow_pickle=False) as data:
            return cls(
                a=data["a"],
                b=data["b"],
                base_fingerprint=str(data["base_fingerprint"]),
                report=json.loads(str(data["report"])),
            )


def train_projection(
    x: np.ndarray,
    species: np.ndarray,
    photo: np.ndarray,
    *,
    rank: int = RANK,
    epochs: int = 60,
    seed: int = 0,
    temperature: float = TEMPERATURE,
    weight_decay: float = WEIGHT_DECAY,
    lr: float = LR,
) -> Projection:
    """Fit the projection: x (n, d) descriptors, species (n,) and photo (n,) integer codes; items
    sharing either code are positives of each other."""
    import torch

    threads = torch.get_num_threads()
    # Small matrices: one thread is faster than several fighting for a loaded CPU.
    torch.set_num_threads(1 if len(x) * x.shape[1] < 4_000_000 else threads)
    try:
        return _train(x, species, photo, rank, epochs, seed, temperature, weight_decay, lr)
    finally:
        torch.set_num_threads(threads)


def _train(x, species, photo, rank, epochs, seed, temperature, weight_decay, lr) -> Projection:
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n, d = x.shape
    r = min(rank, d)
    a = torch.nn.Parameter(torch.randn(d, r) / np.sqrt(d))
    b = torch.nn.Parameter(torch.zeros(r, d))
    opt = torch.optim.AdamW([a, b], lr=lr, weight_decay=weight_decay)
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    st = torch.from_numpy(np.asarray(species, np.int64))
    pt = torch.from_numpy(np.asarray(photo, np.int64))
    steps_per_epoch = max(1, -(-n // BATCH))
    for _ in range(epochs):
        order = rng.permutation(n)
        for s in range(steps_per_epoch):
            idx = torch.from_numpy(order[s * BATCH : (s + 1) * BATCH])
            if len(idx) < 2:
                continue
            xb = xt[idx]
            z = torch.nn.functional.normalize(xb + (xb @ a) @ b, dim=1)
            loss = supcon_loss(z, st[idx], pt[idx], temperature)
            if loss is None:
                continue
            opt.zero_grad()
            loss.backward()
            opt.step()
    return Projection(a.detach().numpy().copy(), b.detach().numpy().copy())


def supcon_loss(z, species, photo, temperature: float):
    """Supervised contrastive loss (Khosla et al. 2020) over one batch; None without positives."""
    import torch

    logits = z @ z.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool)
    logits = logits.masked_fill(eye, -1e9)
    positive = ((species[:, None] == species[None, :]) | (photo[:, None] == photo[None, :])) & ~eye
    has = positive.any(dim=1)
    if not bool(has.any()):
        return None
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    mean_pos = (log_prob * positive).sum(dim=1) / positive.sum(dim=1).clamp(min=1)
    return -(mean_pos[has]).mean()


def per_query_metrics(
    gallery: np.ndarray, species: np.ndarray, queries: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out species recall@1 and average precision of the rows `queries` of `gallery`."""
    r1 = np.zeros(len(queries))
    ap = np.zeros(len(queries))
    for n, q in enumerate(queries):
        sims = gallery @ gallery[q]
        sims[q] = -np.inf
        order = np.argsort(-sims)[:-1]  # itself last
        rel = species[order] == species[q]
        r1[n] = float(rel[0])
        hits = np.cumsum(rel)
        ap[n] = float((hits[rel] / (np.nonzero(rel)[0] + 1)).mean()) if rel.any() else 0.0
    return r1, ap


def bootstrap_ci(gains: np.ndarray, seed: int = 0, rounds: int = BOOTSTRAP) -> tuple[float, float]:
    """Percentile 95 % interval of the mean of paired per-query gains."""
    if len(gains) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = gains[rng.integers(0, len(gains), (rounds, len(gains)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def cross_validate(
    x: np.ndarray,
    species: np.ndarray,
    aug_x: np.ndarray | None = None,
    aug_of: np.ndarray | None = None,
    *,
    folds: int = 5,
    epochs: int = 60,
    rank: int = RANK,
    lr: float = LR,
    seed: int = 0,
) -> dict[str, Any]:
    """Photo-level k-fold evaluation of `train_projection` against the unchanged vectors.

    x: (n, d) stored descriptors of the collection's photos; species: (n,) labels;
    aug_x / aug_of: augmented copies' descriptors and the photo row each comes from. A photo and
    its copies are always on the same side of a split.
    """
    t0 = time.perf_counter()
    species = np.asarray(species)
    _, codes = np.unique(species, return_inverse=True)
    n = len(x)
    counts = np.bincount(codes)
    eligible = counts[codes] >= 2
    rng = np.random.default_rng(seed)
    fold_of = rng.permutation(n) % max(2, folds)
    base_r1, base_ap = per_query_metrics(x, codes, np.nonzero(eligible)[0])
    base = {
        int(q): (r, a) for q, r, a in zip(np.nonzero(eligible)[0], base_r1, base_ap, strict=True)
    }
    gains_r1, gains_ap, rows = [], [], []
    for f in range(max(2, folds)):
        train = fold_of != f
        held = np.nonzero((fold_of == f) & eligible)[0]
        if len(held) == 0:
            continue
        tx, ts, tp = [x[train]], [codes[train]], [np.nonzero(train)[0]]
        if aug_x is not None and aug_of is not None and len(aug_x):
            keep = train[aug_of]
            tx.append(aug_x[keep])
            ts.append(codes[aug_of[keep]])
            tp.append(aug_of[keep])
        proj = train_projection(
            np.concatenate(tx),
            np.concatenate(ts),
            np.concatenate(tp),
            rank=rank,
            epochs=epochs,
            lr=lr,
            seed=seed + f,
        )
        r1, ap = per_query_metrics(proj.apply(x), codes, held)
        for q, r, a in zip(held, r1, ap, strict=True):
            gains_r1.append(r - base[int(q)][0])
            gains_ap.append(a - base[int(q)][1])
            rows.append(int(q))
    g1, ga = np.asarray(gains_r1), np.asarray(gains_ap)
    b1 = np.array([base[q][0] for q in rows])
    ba = np.array([base[q][1] for q in rows])
    return {
        "photos": n,
        "species": len(counts),
        "queries": len(rows),
        "augmented": 0 if aug_x is None else len(aug_x),
        "folds": max(2, folds),
        "epochs": epochs,
        "rank": rank,
        "lr": lr,
        "recall_at_1_base": float(b1.mean()) if len(b1) else None,
        "recall_at_1_projected": float((b1 + g1).mean()) if len(b1) else None,
        "recall_at_1_gain": float(g1.mean()) if len(g1) else None,
        "recall_at_1_gain_ci95": bootstrap_ci(g1, seed),
        "map_base": float(ba.mean()) if len(ba) else None,
        "map_projected": float((ba + ga).mean()) if len(ba) else None,
        "map_gain": float(ga.mean()) if len(ga) else None,
        "map_gain_ci95": bootstrap_ci(ga, seed + 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def worth_adopting(report: dict[str, Any]) -> bool:
    """Only when the lower end of the mAP gain's 95 % interval is above zero (and recall@1 does
    not get worse on average)."""
    low = report.get("map_gain_ci95", (float("nan"),))[0]
    return bool(np.isfinite(low) and low > 0 and (report.get("recall_at_1_gain") or 0) >= 0)
