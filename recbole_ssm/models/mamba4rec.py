"""Mamba4Rec: Liu et al. 2024, "Mamba4Rec: Towards Efficient Sequential Recommendation with
Selective State Space Models". Mamba1 layers + PFFN, no positional embedding."""

from recbole_ssm.layers import MambaMixer
from recbole_ssm.models.base import SSMRecommender
from recbole_ssm.validate import positive_int, require


class Mamba4Rec(SSMRecommender):
    """Mamba1 + PFFN sequential recommender; defaults in ``properties/model/Mamba4Rec.yaml``."""

    def make_mixer(self, config):
        return MambaMixer(
            self.hidden_size,
            d_state=require(config, "d_state", positive_int, "a positive integer"),
            d_conv=require(config, "d_conv", positive_int, "a positive integer"),
            expand=require(config, "expand", positive_int, "a positive integer"),
        )
