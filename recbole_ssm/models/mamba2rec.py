"""Mamba2Rec ("2Mamba4Rec" in the seed paper): Mamba4Rec with Mamba2 (SSD) layers + PFFN."""

from recbole_ssm.layers import Mamba2Mixer
from recbole_ssm.models.base import SSMRecommender, ssd_settings


class Mamba2Rec(SSMRecommender):
    """Mamba2 + PFFN sequential recommender; defaults in ``properties/model/Mamba2Rec.yaml``."""

    def make_mixer(self, config):
        return Mamba2Mixer(self.hidden_size, **ssd_settings(self, config))
