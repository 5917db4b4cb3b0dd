"""Vector index backends behind one small interface (`VectorIndex`); `create_index` picks one."""

from __future__ import annotations

from core.index.base import VectorIndex, create_index, index_from_bytes

__all__ = ["VectorIndex", "create_index", "index_from_bytes"]
