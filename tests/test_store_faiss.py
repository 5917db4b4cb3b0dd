"""The embedded FAISS store runs the store contract, in both of its search modes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.store_contract import *  # noqa: F403


@pytest.fixture(params=["flat", "ivf"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> dict:
    return {"store": "faiss", "index_dir": str(tmp_path / "idx"), "index_type": request.param}
