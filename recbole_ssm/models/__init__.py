"""recbole-ssm's RecBole models. ``MODELS`` maps each name to its class.

``SASRec`` and ``GRU4Rec`` are RecBole's own models with an ``encode`` added, so that the
baselines train under ``train_targets: all`` too; ``BERT4Rec`` is RecBole's with the ``cloze``
regime added. Under ``last`` all three are RecBole's exactly.
"""

from recbole_ssm import compat

compat.import_recbole_sequential_models()  # before the models below import RecBole's (see compat.py)

from recbole_ssm.models.bert4rec import BERT4Rec  # noqa: E402
from recbole_ssm.models.gru4rec import GRU4Rec  # noqa: E402
from recbole_ssm.models.hydra4rec import Hydra4Rec  # noqa: E402
from recbole_ssm.models.mamba2rec import Mamba2Rec  # noqa: E402
from recbole_ssm.models.mamba4rec import Mamba4Rec  # noqa: E402
from recbole_ssm.models.recmamba import RecMamba  # noqa: E402
from recbole_ssm.models.sasrec import SASRec  # noqa: E402
from recbole_ssm.models.seqpop import SeqPop  # noqa: E402

MODELS: dict = {
    "Mamba4Rec": Mamba4Rec,
    "Mamba2Rec": Mamba2Rec,
    "Hydra4Rec": Hydra4Rec,
    "RecMamba": RecMamba,
    "SeqPop": SeqPop,
    "SASRec": SASRec,
    "GRU4Rec": GRU4Rec,
    "BERT4Rec": BERT4Rec,
}

__all__ = ["MODELS", "BERT4Rec", "GRU4Rec", "Hydra4Rec", "Mamba2Rec", "Mamba4Rec", "RecMamba", "SASRec", "SeqPop"]
