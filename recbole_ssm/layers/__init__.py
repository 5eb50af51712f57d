"""nn.Modules of recbole-ssm: the Mamba, Mamba2 and Hydra mixers, PFFN and the residual layer.

They know nothing of RecBole; the models in ``recbole_ssm.models`` stack them. What a mixer
provides (``forward``, and for a causal one ``new_state`` / ``prefill`` / ``step``) is written down
in ``contract.py`` as the protocols ``Mixer`` and ``CausalMixer``.
"""

from recbole_ssm.layers.block import PFFN, ResidualMixer, SSMLayer
from recbole_ssm.layers.contract import CausalMixer, Mixer
from recbole_ssm.layers.hydra import HydraMixer
from recbole_ssm.layers.mamba import MambaMixer
from recbole_ssm.layers.mamba2 import Mamba2Mixer
from recbole_ssm.layers.norm import RMSNormGated

__all__ = ["CausalMixer", "Mixer", "PFFN", "ResidualMixer", "SSMLayer", "HydraMixer", "MambaMixer", "Mamba2Mixer",
           "RMSNormGated"]
