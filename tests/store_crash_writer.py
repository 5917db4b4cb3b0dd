"""Child process for crash tests: one write to a FAISS store, killed at a named point.

Usage: python store_crash_writer.py DIR ACTION SEED (KONTROL_CRASH_AT names the point).
ACTION: append (20 new records), delete (the first 10), compact (delete 40 %, then compact),
ann (build the IVF tier).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.vectorstore.faiss_store import FaissStore, Tuning
from tests.store_contract import make_records

TUNING = Tuning(exact_max=50, tail_max=10, mode="auto")


def main() -> None:
    directory, action, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = FaissStore(directory, tuning=TUNING)
    with store.writer():
        if action == "append":
            ids, vecs, payloads = make_records(20, seed=seed, prefix="new")
            store.upsert(ids, vecs, payloads)
        elif action == "delete":
            ids = [b for batch in store.iterate(vectors=False) for b in batch.ids][:10]
            store.delete(ids)
        elif action == "compact":
            ids = [b for batch in store.iterate(vectors=False) for b in batch.ids]
            store.delete(ids[: int(len(ids) * 0.4)])
            store.maintain(force=True)
        elif action == "ann":
            store.maintain(force=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()
