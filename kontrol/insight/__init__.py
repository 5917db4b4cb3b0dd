"""Collection insight (`kontrol clusters`): near-duplicate groups, visual clusters, photos whose
label disagrees with their neighbours and species split into distant groups, as JSON and as an
HTML page with contact sheets a person reviews. Works on any `VectorStore` through its interface.
"""

from core.insight import Insight, Options, analyse

__all__ = ["Insight", "Options", "analyse"]
