"""kontrol engine: embeddings, FAISS index, similarity search and species classification.

Pure Python, no Telegram. The two calls most users need:

    from PIL import Image
    from core import find_similar_images, classify
    hits = find_similar_images(Image.open("fox.jpg"), top_k=10)
    species = classify(Image.open("fox.jpg"))

Both use the index configured by settings (KONTROL_* environment / .env), loaded once and cached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image


def find_similar_images(
    query_image: Image.Image, top_k: int = 10, species: str | None = None
) -> list[dict[str, Any]]:
    """The `top_k` most similar photos: dicts with image_path, similarity, class, uuid."""
    from core.engine import get_engine

    return get_engine().find_similar(query_image, top_k=top_k, species=species)


def classify(query_image: Image.Image) -> dict[str, Any]:
    """The photo's species: dict with species (None = not sure), confidence, probabilities."""
    from core.engine import get_engine

    return get_engine().classify(query_image)


__all__ = ["classify", "find_similar_images"]
