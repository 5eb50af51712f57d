"""recbole-ssm's RecBole models. ``MODELS`` maps each name to its class."""

from recbole_ssm.models.hydra4rec import Hydra4Rec
from recbole_ssm.models.mamba2rec import Mamba2Rec
from recbole_ssm.models.mamba4rec import Mamba4Rec
from recbole_ssm.models.recmamba import RecMamba
from recbole_ssm.models.seqpop import SeqPop

MODELS: dict = {
    "Mamba4Rec": Mamba4Rec,
    "Mamba2Rec": Mamba2Rec,
    "Hydra4Rec": Hydra4Rec,
    "RecMamba": RecMamba,
    "SeqPop": SeqPop,
}

__all__ = ["MODELS", "Mamba4Rec", "Mamba2Rec", "Hydra4Rec", "RecMamba", "SeqPop"]
