"""Mamba2Rec ("2Mamba4Rec" in the seed paper): Mamba4Rec with Mamba2 (SSD) layers + PFFN."""

from recbole_ssm.errors import ConfigError
from recbole_ssm.layers import Mamba2Mixer
from recbole_ssm.models.base import SSMRecommender
from recbole_ssm.validate import positive_int, require


def ssd_settings(model, config, odd_conv: bool = False) -> dict:
    """Read and check the SSD mixer settings shared by Mamba2Rec and Hydra4Rec."""
    d_conv_rule = "a positive odd integer (the convolution is centred)" if odd_conv else "a positive integer"
    d_conv_ok = (lambda v: positive_int(v) and v % 2 == 1) if odd_conv else positive_int
    s = {
        "d_state": require(config, "d_state", positive_int, "a positive integer"),
        "d_conv": require(config, "d_conv", d_conv_ok, d_conv_rule),
        "expand": require(config, "expand", positive_int, "a positive integer"),
        "headdim": require(config, "headdim", positive_int, "a positive integer"),
        "chunk_size": require(config, "chunk_size", positive_int, "a positive integer"),
    }
    inner = s["expand"] * model.hidden_size
    if inner % s["headdim"]:
        raise ConfigError(
            f"invalid headdim={s['headdim']!r}: expand * hidden_size = {inner} must be divisible by headdim"
        )
    heads = inner // s["headdim"]
    s["ngroups"] = 1 if config["ngroups"] is None else config["ngroups"]
    if not positive_int(s["ngroups"]) or heads % s["ngroups"]:
        raise ConfigError(f"invalid ngroups={s['ngroups']!r}: must be a positive divisor of the {heads} heads")
    return s


class Mamba2Rec(SSMRecommender):
    """Mamba2 + PFFN sequential recommender; defaults in ``properties/model/Mamba2Rec.yaml``."""

    def make_mixer(self, config):
        return Mamba2Mixer(self.hidden_size, **ssd_settings(self, config))
