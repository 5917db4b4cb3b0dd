"""The engine: one embedder, one served index, and the operations the CLI and the bot need.

Queries are thread-safe and may run concurrently. A re-index runs beside them and, when done,
replaces the served index with one reference assignment, so queries switch from the old index to
the new one in a single step. All methods block (CPU work): async callers use asyncio.to_thread.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from core import store
from core.classify import vote
from core.embedders import create_embedder
from core.embedders.base import Embedder
from core.errors import ImageError, IndexBusyError, IndexMissingError
from core.head import (
    SpeciesHead,
    head_classification,
    index_generation,
    load_head,
    maybe_train_after_reindex,
)
from core.imageio import load_image
from core.imagenet import imagenet_fallback
from core.indexer import IndexReport, ProgressCallback, build_index
from core.search import SearchIndex
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)


class Engine:
    """Similarity search and species classification over the configured collection."""

    def __init__(self, settings: Settings | None = None, embedder: Embedder | None = None) -> None:
        self.settings = settings or get_settings()
        self.embedder = embedder or create_embedder(self.settings)
        self._served: SearchIndex | None = None
        self._load_lock = threading.Lock()
        self._reindex_lock = threading.Lock()
        self._embedder_loaded = False
        self._head: tuple[str, SpeciesHead | None] | None = None

    # --- life-cycle ------------------------------------------------------------------------------
    def _ensure_embedder(self) -> Embedder:
        if not self._embedder_loaded:
            with self._load_lock:
                if not self._embedder_loaded:
                    self.embedder.load()
                    self._embedder_loaded = True
        return self.embedder

    def _index(self) -> SearchIndex:
        """The served index, loaded from disk on first use."""
        served = self._served
        if served is not None:
            return served
        with self._load_lock:
            if self._served is None:
                data = store.load(
                    self.settings.index_dir,
                    expected_fingerprint=self.embedder.fingerprint,
                    expected_dim=self.embedder.dim,
                )
                self._served = SearchIndex(data, self.settings.images_dir)
            return self._served

    def warmup(self) -> None:
        """Load model and index now rather than on the first query."""
        self._ensure_embedder()
        self._index()

    def is_indexed(self) -> bool:
        """True when a non-empty index can be served."""
        try:
            return len(self._index()) > 0
        except IndexMissingError:
            return False

    def reload(self) -> None:
        """Drop the served index so the next query reads the one on disk."""
        self._served = None

    # --- queries ---------------------------------------------------------------------------------
    def read_image(self, source: Path | str | bytes | BinaryIO) -> Image.Image:
        """Decode a query image under the configured limits, at no more than the size it needs.

        Big JPEGs are decoded at reduced scale (Pillow draft mode) for this model's input size.
        """
        s = self.settings
        return load_image(
            source,
            max_pixels=s.max_image_pixels,
            max_bytes=s.max_image_bytes,
            min_side=s.min_image_side,
            target_size=self.embedder.input_size,
        )

    def embed_query(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
        """One query image -> (L2-normalised embedding (dim,), backbone logits or None)."""
        if not isinstance(image, Image.Image):
            raise ImageError("Expected a PIL image.")
        if image.mode != "RGB":
            image = image.convert("RGB")
        out = self._ensure_embedder().embed_images([image])
        return out.embeddings[0], (None if out.logits is None else out.logits[0])

    def embed(self, image: Image.Image) -> np.ndarray:
        """One query image -> its L2-normalised embedding (dim,)."""
        return self.embed_query(image)[0]

    def _head_for(self, index: SearchIndex) -> SpeciesHead | None:
        """The trained species head of this index generation, if one exists and is fresh."""
        generation = index_generation(index.meta)
        cached = self._head
        if cached is None or cached[0] != generation:
            head = load_head(
                self.settings.models_dir,
                fingerprint=self.embedder.fingerprint,
                generation=generation,
            )
            cached = (generation, head)
            self._head = cached
        return cached[1]

    def _served_nonempty(self) -> SearchIndex:
        index = self._index()
        if len(index) == 0:
            raise IndexMissingError(
                "The index is empty: the collection has no readable photos yet. "
                "Add photos and run `kontrol index`."
            )
        return index

    def search_vector(
        self, vector: np.ndarray, top_k: int = 10, species: str | None = None
    ) -> list[dict[str, Any]]:
        """Nearest collection photos to an embedding."""
        index = self._served_nonempty()
        ids, sims = index.neighbours(vector, top_k, species)
        return index.results(ids, sims)

    def classify_vector(
        self, vector: np.ndarray, logits: np.ndarray | None = None
    ) -> dict[str, Any]:
        """Species of an embedding: the trained head if fresh, else the neighbour vote.

        Both are open-set aware (the best neighbour's similarity gates either). When the answer is
        "not sure", the backbone's own ImageNet prediction is offered as a marked fallback.
        """
        index = self._served_nonempty()
        ids, sims = index.neighbours(vector, self.settings.classify_neighbors)
        return self._classify_from(index, vector, logits, ids, sims)

    def _classify_from(
        self,
        index: SearchIndex,
        vector: np.ndarray,
        logits: np.ndarray | None,
        ids: np.ndarray,
        sims: np.ndarray,
    ) -> dict[str, Any]:
        """Classification given the query's nearest neighbours (ids, sims), best first."""
        s = self.settings
        head = self._head_for(index)
        if head is not None and head.report.get("preferred"):
            result = head_classification(
                head,
                vector,
                min_confidence=s.classify_min_confidence,
                best_similarity=float(sims.max()) if len(sims) else -1.0,
                min_similarity=s.classify_min_similarity,
            )
        else:
            result = vote(
                [str(x) for x in index.species[ids]],
                sims,
                min_similarity=s.classify_min_similarity,
                min_confidence=s.classify_min_confidence,
            )
        result["fallback"] = (
            imagenet_fallback(logits) if logits is not None and result["species"] is None else None
        )
        return result

    def find_similar(
        self, image: Image.Image, top_k: int = 10, species: str | None = None
    ) -> list[dict[str, Any]]:
        """The `top_k` most similar collection photos, best first (optionally one species)."""
        index = self._served_nonempty()  # fail before the costly embedding
        if species:
            index.resolve_species(species)
        return self.search_vector(self.embed(image), top_k, species)

    def classify(self, image: Image.Image) -> dict[str, Any]:
        """Predicted species with confidence and top probabilities; species=None when unsure."""
        self._served_nonempty()
        return self.classify_vector(*self.embed_query(image))

    def analyze(
        self, image: Image.Image, top_k: int = 10, species: str | None = None
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Classification and similar photos from one embedding (what a photo in chat gets).

        Without a species filter one neighbour search serves both answers.
        """
        index = self._served_nonempty()
        if species:
            index.resolve_species(species)
        vector, logits = self.embed_query(image)
        votes = self.settings.classify_neighbors
        if species:
            ids, sims = index.neighbours(vector, votes)
            hit_ids, hit_sims = index.neighbours(vector, top_k, species)
        else:
            ids, sims = index.neighbours(vector, max(votes, top_k))
            hit_ids, hit_sims = ids[:top_k], sims[:top_k]
        classification = self._classify_from(index, vector, logits, ids[:votes], sims[:votes])
        return classification, index.results(hit_ids, hit_sims)

    def species(self) -> list[str]:
        """Species of the served index, sorted (IndexMissingError if nothing is indexed)."""
        return self._served_nonempty().species_names

    def stats(self) -> dict[str, Any]:
        """Collection size, species count, model and build time of the served index."""
        index = self._index()
        meta = index.meta
        return {
            "total_images": len(index),
            "species_count": len(index.species_rows),
            "model": meta.get("model"),
            "created_at": meta.get("created_at"),
            "index_type": meta.get("index_type"),
            "index_dir": str(self.settings.index_dir),
        }

    # --- indexing --------------------------------------------------------------------------------
    @property
    def reindex_running(self) -> bool:
        return self._reindex_lock.locked()

    def reindex(
        self,
        progress: ProgressCallback | None = None,
        full: bool = False,
        show_bar: bool = False,
    ) -> IndexReport:
        """Re-index the collection (incrementally) and serve the result; one at a time."""
        if not self._reindex_lock.acquire(blocking=False):
            raise IndexBusyError("A re-index is already running; wait for it to finish.")
        try:
            self._ensure_embedder()
            data, report = build_index(
                self.settings, self.embedder, progress=progress, full=full, show_bar=show_bar
            )
            self._served = SearchIndex(data, self.settings.images_dir)  # the one-step swap
            report.head = maybe_train_after_reindex(self.settings, data)
            self._head = None  # forget a "no head" cached while the head was training
            return report
        finally:
            self._reindex_lock.release()


_engine: Engine | None = None
_engine_lock = threading.Lock()


def get_engine() -> Engine:
    """The process-wide engine for the configured settings (loaded once, cached)."""
    global _engine
    if _engine is None:
        with _engine_lock:
            if _engine is None:
                _engine = Engine(get_settings())
    return _engine
