"""`kontrol finetune`: metric learning on top of the frozen backbone's stored vectors.

A light residual projection is trained with a supervised-contrastive loss (positives: same species,
augmented copies of the same photo), evaluated by photo-level cross-validation with a bootstrap
95 % interval on the gain, saved where asked, and adopted only when asked and the interval is above
zero. `ProjectedEmbedder` shows how it plugs in as a new embedder fingerprint.
"""

from kontrol.finetune.train import Projection, cross_validate, train_projection, worth_adopting

__all__ = ["Projection", "cross_validate", "train_projection", "worth_adopting"]
