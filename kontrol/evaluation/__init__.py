"""Offline evaluation of search and classification (`kontrol eval`).

`evaluate()` takes the product's embedding and classification as callables, so the metrics always
describe the pipeline the bot actually serves; `metrics` holds the pure-numpy measures.
"""

from kontrol.evaluation.labels import LabelledPhoto, ManifestError, load_labels
from kontrol.evaluation.metrics import ClassifyFn, Score, knn_vote_classifier
from kontrol.evaluation.runner import evaluate

__all__ = [
    "ClassifyFn",
    "LabelledPhoto",
    "ManifestError",
    "Score",
    "evaluate",
    "knn_vote_classifier",
    "load_labels",
]
