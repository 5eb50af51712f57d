"""Hydra4Rec: bidirectional Hydra layers + PFFN (the seed paper's best SSM variant)."""

from recbole_ssm.layers import HydraMixer
from recbole_ssm.models.base import SSMRecommender
from recbole_ssm.models.mamba2rec import ssd_settings


class Hydra4Rec(SSMRecommender):
    """Hydra + PFFN sequential recommender; defaults in ``properties/model/Hydra4Rec.yaml``.

    The mixer reads the whole (prefix) sequence in both directions; a padding mask keeps its
    output independent of how many padding positions follow the real items.
    """

    bidirectional = True
    TRAIN_TARGETS = ("last",)  # every position would see its own target under ``all``
    # read at the last real position, the last layer skips its backward scan: its parameters get no
    # gradient in that step (distributed training must not wait for them)
    may_leave_parameters_unused = True

    def make_mixer(self, config):
        return HydraMixer(self.hidden_size, **ssd_settings(self, config, odd_conv=True))
