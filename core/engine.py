"""The engine: one embedder, one vector store, and the operations the CLI and the bot need.

Queries are thread-safe and may run concurrently. The engine serves the store read-only; a
re-index writes through its own writer handle, and the serving handle picks up the new generation
on its next query (the store notices it), so queries switch from the old state to the new one in a
single step, in this process and in every other process serving the same store. All methods block
(CPU work): async callers use asyncio.to_thread.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from core import embedders
from core.answer import classify_neighbours, table_lineage
from core.calibration import VoteCalibrator, load_calibrator
from core.collection import normalize_species
from core.embedders.base import Embedder
from core.errors import (
    ImageError,
    IndexBusyError,
    IndexMissingError,
    KontrolError,
    UnknownSpeciesError,
)
from core.head import SpeciesHead, load_head
from core.imageio import load_image
from core.imagenet import animal_share, imagenet_fallback
from core.indexer import IndexReport, ProgressCallback, build_index
from core.paths import safe_join
from core.settings import Settings, get_settings
from core.taxonomy import PAYLOAD_RANKS as RANK_FIELDS
from core.vectorstore import Hit, VectorStore, Where, open_store

log = logging.getLogger(__name__)


#: Payload fields results carry for attribution (captions credit CC BY photos).
_CREDIT_FIELDS = ("license", "author", "url", "genus")


class Engine:
    """Similarity search and species classification over the configured collection."""

    def __init__(
        self,
        settings: Settings | None = None,
        embedder: Embedder | None = None,
        store: VectorStore | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.embedder = embedder or embedders.create_embedder(self.settings)
        self._store = store
        self._load_lock = threading.Lock()
        self._reindex_lock = threading.Lock()
        self._embedder_loaded = False
        self._head: tuple[str, SpeciesHead | None] | None = None
        self._calibrator: tuple[str, VoteCalibrator | None] | None = None
        self._field_counts: tuple[str, dict[str, dict[str, int]]] | None = None
        self._count: tuple[str, int] | None = None
        self._seen_generation: str | None = None
        self._head_thread: threading.Thread | None = None

    # --- life-cycle ------------------------------------------------------------------------------
    def _ensure_embedder(self) -> Embedder:
        if not self._embedder_loaded:
            with self._load_lock:
                if not self._embedder_loaded:
                    self.embedder.load()
                    self._embedder_loaded = True
        return self.embedder

    @property
    def store(self) -> VectorStore:
        """The store this engine serves from (opened read-only on first use)."""
        if self._store is None:
            with self._load_lock:
                if self._store is None:
                    self._store = open_store(self.settings, read_only=True)
        return self._store

    def _checked_store(self) -> tuple[VectorStore, str]:
        """The store, checked against the configured model; and its generation."""
        store = self.store
        info = store.check(self.embedder.fingerprint, self.embedder.dim)
        if info.generation != self._seen_generation:
            # another process committed: a database store may hold per-client caches to renew
            store.refresh()
            self._seen_generation = info.generation
        return store, info.generation

    def warmup(self) -> None:
        """Load model and index now rather than on the first query."""
        self._ensure_embedder()
        store, _ = self._checked_store()
        store.refresh()

    def is_indexed(self) -> bool:
        """True when a non-empty index of the configured model can be served."""
        try:
            return self._served_nonempty() is not None
        except IndexMissingError:
            return False

    def reload(self) -> None:
        """Pick up whatever another process committed to the store."""
        self.store.refresh()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

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

    def _served_nonempty(self) -> VectorStore:
        store, generation = self._checked_store()
        cached = self._count
        if cached is None or cached[0] != generation:
            cached = (generation, store.count())  # COUNT(*) once per generation, not per query
            self._count = cached
        if cached[1] == 0:
            raise IndexMissingError(
                "The index is empty: the collection has no readable photos yet. "
                "Add photos and run `kontrol index`."
            )
        return store

    def species_counts(self) -> dict[str, int]:
        """Photos per species of the served index (cached per store generation)."""
        return self.field_counts("species")

    def field_counts(self, field_name: str) -> dict[str, int]:
        """Photos per value of a payload field (species, genus, ...), cached per generation:
        a GROUP BY over the whole store is not work for every query."""
        store, generation = self._checked_store()
        cached = self._field_counts
        if cached is None or cached[0] != generation:
            cached = (generation, {})
            self._field_counts = cached
        counts = cached[1].get(field_name)
        if counts is None:
            counts = store.values(field_name)
            cached[1][field_name] = counts
        return counts

    def resolve_species(self, name: str) -> str:
        """Map user input (`canis_lupus`, `Canis  Lupus`) to the collection's species name."""
        import difflib

        lookup = {normalize_species(k): k for k in self.species_counts()}
        key = normalize_species(name)
        if key in lookup:
            return lookup[key]
        close = difflib.get_close_matches(key, list(lookup), n=3, cutoff=0.6)
        suggestions = [lookup[c] for c in close]
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        raise UnknownSpeciesError(
            f"The collection has no species {name!r}.{hint}", suggestions=suggestions
        )

    def resolve_taxon(self, name: str) -> dict[str, str]:
        """A name typed by a user -> the filter for it: a species of the collection first, else a
        genus, family, order or class (`/similar Felidae`). Unknown: `UnknownSpeciesError` with
        the closest names of any rank."""
        import difflib

        try:
            return {"species": self.resolve_species(name)}
        except UnknownSpeciesError as exc:
            species_error = exc
        key = normalize_species(name)
        everything: dict[str, str] = {}
        for rank in ("genus", "family", "order", "class"):
            values = {normalize_species(v): v for v in self.field_counts(rank)}
            if key in values:
                return {rank: values[key]}
            everything.update(values)
        close = difflib.get_close_matches(key, list(everything), n=3, cutoff=0.75)
        suggestions = species_error.suggestions + [everything[c] for c in close]
        hint = f" Did you mean: {', '.join(suggestions[:3])}?" if suggestions else ""
        raise UnknownSpeciesError(
            f"The collection has no species or group {name!r}.{hint}", suggestions=suggestions[:3]
        )

    def _where(self, species: str | None, where: Where | None) -> Where | None:
        merged = dict(where or {})
        if species:
            merged["species"] = self.resolve_species(species)
        return merged or None

    def neighbours(self, vector: np.ndarray, k: int, where: Where | None = None) -> list[Hit]:
        """The k nearest collection photos to an embedding (exact similarities), best first."""
        store = self._served_nonempty()
        return store.search(np.asarray(vector, np.float32), k, where=where)[0] if k > 0 else []

    def results(self, hits: list[Hit]) -> list[dict[str, Any]]:
        """The API's result dicts (the seed's keys, plus `path` and the payload's fields)."""
        root = Path(self.settings.images_dir)
        out = []
        for h in hits:
            rel = str(h.payload.get("path", ""))
            out.append(
                {
                    "image_path": str(safe_join(root, rel)),
                    "path": rel,
                    "similarity": float(h.score),
                    "class": h.payload.get("species"),
                    "uuid": h.id,
                    **{k: h.payload[k] for k in _CREDIT_FIELDS if h.payload.get(k)},
                }
            )
        return out

    def search_vector(
        self,
        vector: np.ndarray,
        top_k: int = 10,
        species: str | None = None,
        where: Where | None = None,
    ) -> list[dict[str, Any]]:
        """Nearest collection photos to an embedding."""
        return self.results(self.neighbours(vector, top_k, self._where(species, where)))

    def _head_for(self, key: str) -> SpeciesHead | None:
        """The trained species head for this label set, if one exists and is fresh."""
        cached = self._head
        if cached is None or cached[0] != key:
            head = load_head(
                self.settings.models_dir, fingerprint=self.embedder.fingerprint, generation=key
            )
            cached = (key, head)
            self._head = cached
        return cached[1]

    def _calibrator_for(self, key: str) -> VoteCalibrator | None:
        """The fitted vote calibration for this label set, if one exists and is fresh."""
        cached = self._calibrator
        if cached is None or cached[0] != key:
            cal = load_calibrator(
                self.settings.models_dir, fingerprint=self.embedder.fingerprint, key=key
            )
            s = self.settings
            if cal is not None and not cal.fitted_for(
                s.classify_neighbors, s.classify_vote_temperature
            ):
                # fitted on votes of another k or temperature: its map does not fit these
                log.info("Vote calibration fitted for other vote settings; `kontrol train` refits.")
                cal = None
            cached = (key, cal)
            self._calibrator = cached
        return cached[1]

    def classify_vector(
        self, vector: np.ndarray, logits: np.ndarray | None = None
    ) -> dict[str, Any]:
        """Species of an embedding: the trained head if fresh, else the neighbour vote.

        Both are open-set aware (the best neighbour's similarity gates either). When the answer is
        "not sure", the backbone's own ImageNet prediction is offered as a marked fallback.
        """
        hits = self.neighbours(vector, self.settings.classify_neighbors)
        return self._classify_from(vector, logits, hits)

    def _classify_from(
        self, vector: np.ndarray, logits: np.ndarray | None, hits: list[Hit]
    ) -> dict[str, Any]:
        """Classification given the query's nearest neighbours, best first."""
        s = self.settings
        key = label_set_key(self.species_counts())
        lineages = {
            str(h.payload.get("species")): {
                r: str(h.payload[r]) for r in RANK_FIELDS if h.payload.get(r)
            }
            for h in hits
        }
        result = classify_neighbours(
            vector,
            [str(h.payload.get("species")) for h in hits],
            np.array([h.score for h in hits], dtype=np.float32),
            head=self._head_for(key),
            calibrator=self._calibrator_for(key),
            min_similarity=s.classify_min_similarity,
            min_confidence=s.classify_min_confidence,
            min_probability=s.classify_min_probability,
            target_precision=s.classify_target_precision,
            lineage=lambda name: lineages.get(name) or table_lineage(name),
            animal_share=animal_share(logits),
            min_animal_share=s.classify_min_animal_share,
            temperature=s.classify_vote_temperature,
        )
        result["fallback"] = (
            imagenet_fallback(logits) if logits is not None and result["rank"] is None else None
        )
        return result

    def find_similar(
        self,
        image: Image.Image,
        top_k: int = 10,
        species: str | None = None,
        where: Where | None = None,
    ) -> list[dict[str, Any]]:
        """The `top_k` most similar collection photos, best first (optionally filtered)."""
        self._served_nonempty()  # fail before the costly embedding
        flt = self._where(species, where)
        return self.results(self.neighbours(self.embed(image), top_k, flt))

    def classify(self, image: Image.Image) -> dict[str, Any]:
        """Predicted species with confidence and top probabilities; species=None when unsure."""
        self._served_nonempty()
        return self.classify_vector(*self.embed_query(image))

    def analyze(
        self,
        image: Image.Image,
        top_k: int = 10,
        species: str | None = None,
        where: Where | None = None,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Classification and similar photos from one embedding (what a photo in chat gets).

        Without a filter one neighbour search serves both answers.
        """
        self._served_nonempty()
        flt = self._where(species, where)
        vector, logits = self.embed_query(image)
        votes = self.settings.classify_neighbors
        if flt:
            hits = self.neighbours(vector, votes)
            album = self.neighbours(vector, top_k, flt)
        else:
            hits = self.neighbours(vector, max(votes, top_k))
            album = hits[:top_k]
        classification = self._classify_from(vector, logits, hits[:votes])
        return classification, self.results(album)

    def species(self) -> list[str]:
        """Species of the served index, sorted (IndexMissingError if nothing is indexed)."""
        self._served_nonempty()
        return sorted(self.species_counts())

    def first_photo(self) -> dict[str, Any] | None:
        """Any one record of the index (the demo answer uses it), or None when empty."""
        for batch in self.store.iterate(batch_size=1, vectors=False):
            if batch.ids:
                return {"uuid": batch.ids[0], **batch.payloads[0]}
        return None

    def stats(self) -> dict[str, Any]:
        """Collection size, species count, model, store and build time of the served index."""
        store, _ = self._checked_store()
        info = store.info()
        extra = info.extra if info else {}
        return {
            "total_images": store.count(),
            "species_count": len(self.species_counts()),
            "model": info.model if info else None,
            "created_at": extra.get("created_at"),
            "updated_at": extra.get("updated_at"),
            "store": store.backend,
            "index_type": self.settings.index_type,
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
        allow_empty: bool = False,
        train: str = "sync",
    ) -> IndexReport:
        """Re-index the collection (incrementally) and serve the result; one at a time.

        train: "sync" fits the species head after the index is committed (the CLI), "background"
        in a thread (the bot: the index is served at once), "skip" leaves it.
        """
        if not self._reindex_lock.acquire(blocking=False):
            raise IndexBusyError("A re-index is already running; wait for it to finish.")
        try:
            self._ensure_embedder()
            report = build_index(
                self.settings,
                self.embedder,
                progress=progress,
                full=full,
                show_bar=show_bar,
                allow_empty=allow_empty,
            )
            self.store.refresh()  # serve the new generation now
            self._field_counts = None
        finally:
            self._reindex_lock.release()
        if train == "sync":
            report.head = self.train_head()
        elif train == "background":
            self._head_thread = threading.Thread(
                target=self.train_head, name="kontrol-head", daemon=True
            )
            self._head_thread.start()
        return report

    def train_head(self, *, force: bool = False) -> dict[str, Any] | None:
        """Fit the species head and the vote calibration on a bounded sample of the store if its
        label set changed."""
        from core.head_fit import calibrate_vote_from_store, train_head_from_store

        try:
            store, _ = self._checked_store()
        except KontrolError:
            return None
        key = label_set_key(store.values("species"))
        report = train_head_from_store(
            store,
            self.settings.models_dir,
            fingerprint=self.embedder.fingerprint,
            key=key,
            force=force,
        )
        calibration = calibrate_vote_from_store(
            store,
            self.settings.models_dir,
            fingerprint=self.embedder.fingerprint,
            key=key,
            k=self.settings.classify_neighbors,
            min_similarity=self.settings.classify_min_similarity,
            target_precision=self.settings.classify_target_precision,
            temperature=self.settings.classify_vote_temperature,
            force=force,
        )
        if report is not None:
            report = {**report, "calibration": calibration}
        self._head = None
        self._calibrator = None
        return report


def label_set_key(counts: dict[str, int]) -> str:
    """Identifies the species set a head was trained for: adding photos of known species keeps
    it (no retraining per photo); a new or vanished species changes it."""
    digest = hashlib.sha1("\n".join(sorted(counts)).encode()).hexdigest()[:16]
    return f"species:{digest}"


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
