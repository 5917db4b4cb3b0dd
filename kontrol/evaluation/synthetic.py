"""Synthetic labelled collections, for the checks the demo cannot make.

The demo has one photo for 71 of its 78 taxa, so nothing about named answers can be measured on
it. These collections have several photos per species: species are noisy clusters around random
centres, some closer to each other than others, so some queries are easy and some are not, and
pairs of species share a genus.
"""

from __future__ import annotations

import numpy as np


def clustered_collection(
    seed: int, *, species: int = 120, per: int = 4, dim: int = 24, noise: float = 1.1
) -> tuple[np.ndarray, list[str]]:
    """(L2-normalised vectors, labels "G<genus> s<species>") of `species` x `per` photos."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(species, dim))
    x = np.repeat(centres, per, axis=0) + noise * rng.normal(size=(species * per, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), [f"G{i // (2 * per)} s{i // per}" for i in range(species * per)]
