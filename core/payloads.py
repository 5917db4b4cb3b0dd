"""What the store keeps beside each photo's vector: the fields results show and filters use.

Payload fields: `path` (relative to the collection root), `species`, the lineage ranks (`genus`,
`family`, `order`, `class` where known), `source`, `license`, `author`, and free fields from the
photo's optional sidecar `<uuid>.json` (kept under `extra`). The vector store indexes the ranks,
source and licence for filtering (`find_similar_images(..., where={"family": "Felidae"})`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from core.collection import CollectionFile
from core.taxonomy import Overrides, lineage_for, rank_names

log = logging.getLogger(__name__)

#: Sidecar keys copied as they are (the demo collection writes `licence`, British spelling).
_SIDECAR_KEYS = {"licence": "license", "license": "license", "author": "author", "source": "url"}
_MAX_SIDECAR_BYTES = 64 * 1024


def lineage_fields(species: str, overrides: Overrides | None = None) -> dict[str, str]:
    """Genus from the binomial, higher ranks from the shipped WordNet table or the collection's
    own `taxonomy.csv` (overrides)."""
    return {k: v for k, v in rank_names(lineage_for(species, overrides)).items() if v}


def read_sidecar(photo: Path) -> dict[str, Any]:
    """The photo's `<stem>.json` sidecar, if present and sane ({} otherwise; never raises)."""
    side = photo.with_suffix(".json")
    try:
        if not side.is_file() or side.stat().st_size > _MAX_SIDECAR_BYTES:
            return {}
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("Ignoring unreadable sidecar %s (%s)", side, exc.__class__.__name__)
        return {}
    return data if isinstance(data, dict) else {}


def collection_payload(
    f: CollectionFile, root: Path, overrides: Overrides | None = None
) -> dict[str, Any]:
    """The payload of a collection photo."""
    payload: dict[str, Any] = {"path": f.path, "species": f.species, "source": "collection"}
    payload.update(lineage_fields(f.species, overrides))
    sidecar = read_sidecar(Path(root) / f.path)
    for key, target in _SIDECAR_KEYS.items():
        value = sidecar.get(key)
        if isinstance(value, str) and value.strip():
            payload[target] = value.strip()[:500]
    return payload
