"""Similarity search over a loaded index: top-k photos, optionally within one species.

The served state is immutable: a re-index builds a new `SearchIndex` and the engine swaps the
reference in one step, so a query never sees half of an old index and half of a new one.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import numpy as np

from core.collection import normalize_species
from core.errors import UnknownSpeciesError
from core.store import IndexData

# Candidates fetched from a non-float32 index before exact float32 re-scoring.
_RESCORE_FACTOR = 4
_RESCORE_MIN = 50


class SearchIndex:
    """An index generation ready to answer queries (thread-safe: read-only after construction)."""

    def __init__(self, data: IndexData, images_root: Path) -> None:
        self.data = data
        self.images_root = Path(images_root)
        self.meta = data.meta
        self.species = np.array([img["scientific_name"] for img in data.images], dtype=object)
        by_species: dict[str, list[int]] = {}
        for i, name in enumerate(self.species):
            by_species.setdefault(name, []).append(i)
        self.species_rows = {k: np.array(v, dtype=np.int64) for k, v in by_species.items()}
        self._lookup = {normalize_species(k): k for k in by_species}

    def __len__(self) -> int:
        return len(self.data.images)

    @property
    def species_names(self) -> list[str]:
        """Species of the collection, sorted."""
        return sorted(self.species_rows)

    def resolve_species(self, name: str) -> str:
        """Map user input (`canis_lupus`, `Canis  Lupus`) to the collection's species name."""
        key = normalize_species(name)
        if key in self._lookup:
            return self._lookup[key]
        close = difflib.get_close_matches(key, list(self._lookup), n=3, cutoff=0.6)
        suggestions = [self._lookup[c] for c in close]
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        raise UnknownSpeciesError(
            f"The collection has no species {name!r}.{hint}", suggestions=suggestions
        )

    def neighbours(
        self, query: np.ndarray, k: int, species: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Row ids and exact cosine similarities of the k nearest photos, best first."""
        query = np.asarray(query, dtype=np.float32).reshape(1, -1)
        subset = self.species_rows[self.resolve_species(species)] if species else None
        pool = len(self) if subset is None else len(subset)
        k = min(k, pool)
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        index = self.data.index
        fetch = k if index.kind == "flat" else min(pool, max(k * _RESCORE_FACTOR, _RESCORE_MIN))
        _, ids = index.search(query, fetch, subset=subset)
        # Sorted ids read the (memory-mapped) embeddings in file order.
        ids = np.sort(ids[0][ids[0] >= 0])
        # Exact float32 re-scoring (also repairs fp16 / approximate ordering).
        sims = np.asarray(self.data.embeddings[ids], dtype=np.float32) @ query[0]
        order = np.argsort(-sims, kind="stable")[:k]
        return ids[order], sims[order]

    def results(self, ids: np.ndarray, sims: np.ndarray) -> list[dict[str, Any]]:
        """The API's result dicts for row ids."""
        out = []
        for i, sim in zip(ids.tolist(), sims.tolist(), strict=True):
            img = self.data.images[i]
            out.append(
                {
                    "image_path": str(self.images_root / img["path"]),
                    "path": img["path"],
                    "similarity": float(sim),
                    "class": img["scientific_name"],
                    "uuid": img["uuid"],
                }
            )
        return out
