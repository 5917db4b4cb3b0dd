"""Copy a vector store into another backend without re-embedding a single photo.

`migrate(source, target)` reads the source's `StoreInfo` and every record through `iterate()`,
and writes them to the target in batches. The target is marked `extra["migration"] =
"incomplete"` before the first record is written and `"complete"` only after the copy has been
verified: same record count, and a sample of stored vectors used as queries returns the same
top-10 ids from both stores (the overlap is reported; approximate indexes may differ a little).
The source is only read. Any failure leaves the target marked incomplete, so an engine pointed
at it can tell (and the migration can simply be run again with `reset=True`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from core.errors import IndexMissingError, KontrolError
from core.vectorstore.base import StoreInfo, VectorStore

MIGRATION_KEY = "migration"


class MigrationError(KontrolError):
    """The copy could not be verified (or the target was not fit to receive it)."""


@dataclass(frozen=True)
class MigrationReport:
    """What a migration copied and how the copy compared with its source."""

    source: str
    target: str
    records: int
    batches: int
    source_count: int
    target_count: int
    #: Mean and worst share of the source's top-k ids that the target also returned.
    overlap: float
    min_overlap: float
    queries: int
    k: int
    seconds: float
    per_query: list[float] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"Copied {self.records} records in {self.batches} batches from {self.source} to "
            f"{self.target} in {self.seconds:.1f} s; counts {self.source_count} / "
            f"{self.target_count}; top-{self.k} overlap over {self.queries} queries: mean "
            f"{self.overlap:.3f}, worst {self.min_overlap:.3f}."
        )


def migrate(
    source: VectorStore,
    target: VectorStore,
    *,
    batch_size: int = 1024,
    verify_queries: int = 20,
    k: int = 10,
    min_overlap: float = 0.9,
    reset: bool = False,
) -> MigrationReport:
    """Copy `source` into `target` (see the module docstring); returns the verified report.

    `reset=True` drops whatever the target holds first; without it the target must be empty
    (or not initialised). Raises `MigrationError` when the copy does not verify (mean top-k
    overlap below `min_overlap`, or different counts), leaving the target marked incomplete.
    """
    began = time.monotonic()
    info = source.info()
    if info is None:
        raise IndexMissingError(f"Nothing to migrate: {source.describe()} is not indexed yet.")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    current = target.info()
    if current is not None and not reset:
        if (current.fingerprint, current.dim) != (info.fingerprint, info.dim):
            raise MigrationError(
                f"{target.describe()} holds another model's index ({current.fingerprint}); "
                "migrate with reset=True to replace it."
            )
        held = target.count()
        if held:
            raise MigrationError(
                f"{target.describe()} already holds {held} records; migrate with reset=True to "
                "replace them."
            )
    source_count = source.count()

    extra = {key: v for key, v in info.extra.items() if key != MIGRATION_KEY}
    target.initialise(
        StoreInfo(
            fingerprint=info.fingerprint,
            dim=info.dim,
            model=info.model,
            schema_version=info.schema_version,
            extra={**extra, MIGRATION_KEY: "incomplete"},
        ),
        reset=reset,
    )
    target.set_extra({**extra, MIGRATION_KEY: "incomplete", "migrated_from": source.describe()})

    # evenly spread sample of stored vectors, kept while copying, used as queries afterwards
    step = max(1, source_count // max(1, verify_queries))
    samples: list[np.ndarray] = []
    records = batches = 0
    with target.writer():
        for batch in source.iterate(batch_size, vectors=True):
            if batch.vectors is None:
                raise MigrationError(f"{source.describe()} gave records without their vectors.")
            target.upsert(batch.ids, batch.vectors, batch.payloads)
            for j in range(len(batch.ids)):
                if (records + j) % step == 0 and len(samples) < verify_queries:
                    samples.append(np.array(batch.vectors[j], dtype=np.float32))
            records += len(batch.ids)
            batches += 1
        target.maintain(force=True)

    target_count = target.count()
    if target_count != source_count or records != source_count:
        raise MigrationError(
            f"Copied {records} of {source_count} records but {target.describe()} counts "
            f"{target_count}; the target stays marked incomplete."
        )
    per_query: list[float] = []
    if samples:
        queries = np.stack(samples)
        want = source.search(queries, k)
        got = target.search(queries, k)
        for a, b in zip(want, got, strict=True):
            ids_a = {h.id for h in a}
            per_query.append(len(ids_a & {h.id for h in b}) / max(1, len(ids_a)))
    overlap = float(np.mean(per_query)) if per_query else 1.0
    worst = float(np.min(per_query)) if per_query else 1.0
    report = MigrationReport(
        source=source.describe(),
        target=target.describe(),
        records=records,
        batches=batches,
        source_count=source_count,
        target_count=target_count,
        overlap=overlap,
        min_overlap=worst,
        queries=len(per_query),
        k=k,
        seconds=time.monotonic() - began,
        per_query=per_query,
    )
    if overlap < min_overlap:
        raise MigrationError(
            f"The copy in {target.describe()} answers differently from its source: mean "
            f"top-{k} overlap {overlap:.3f} < {min_overlap}; the target stays marked incomplete."
        )
    target.set_extra({MIGRATION_KEY: "complete"})
    return report
