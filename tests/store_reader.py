"""A reader process for the store contract: prints each record count it observes.

Usage: python store_reader.py SPEC_JSON STOP_AT_COUNT. It opens the store read-only once and
polls `refresh()`; it exits when the count reaches STOP_AT_COUNT or after 60 s.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.store_contract import open_spec


def main() -> None:
    spec, stop_at = json.loads(sys.argv[1]), int(sys.argv[2])
    store = open_spec(spec, read_only=True)
    last = store.count()
    print(f"count {last}", flush=True)
    deadline = time.monotonic() + 60
    while last < stop_at and time.monotonic() < deadline:
        store.refresh()
        now = store.count()
        if now != last:
            last = now
            print(f"count {last}", flush=True)
        time.sleep(0.01)
    store.close()


if __name__ == "__main__":
    main()
