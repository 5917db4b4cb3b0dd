"""Offline evaluation of search and classification (`kontrol eval`).

`evaluate()` takes the product's embedding as a callable and answers species questions through
the engine's own classification path, so the metrics always describe the pipeline the bot
actually serves; `metrics` holds the pure-numpy retrieval measures, `served` the held-out answers.
"""

from kontrol.evaluation.labels import LabelledPhoto, ManifestError, load_labels
from kontrol.evaluation.metrics import Score
from kontrol.evaluation.runner import evaluate

__all__ = [
    "LabelledPhoto",
    "ManifestError",
    "Score",
    "evaluate",
    "load_labels",
]
