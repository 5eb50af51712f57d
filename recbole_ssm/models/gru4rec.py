"""GRU4Rec (Hidasi et al. 2016, "Session-based Recommendations with Recurrent Neural Networks"):
RecBole's model, with ``encode`` so that it also trains under ``train_targets: all``.

Under ``last`` it is RecBole's GRU4Rec exactly: same parameters, ``forward``, loss and scores.
"""

import torch
from recbole.model.sequential_recommender.gru4rec import GRU4Rec as RecBoleGRU4Rec

from recbole_ssm.models.causal import CausalLoss


class GRU4Rec(CausalLoss, RecBoleGRU4Rec):
    """RecBole's GRU4Rec plus ``encode``; settings as RecBole's (``recbole/properties/model/GRU4Rec.yaml``)."""

    def encode(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """(B, L) right-padded ids -> (B, L, d): RecBole's ``forward`` before it gathers one position."""
        gru_output, _ = self.gru_layers(self.emb_dropout(self.item_embedding(item_seq)))  # (B, L, hidden)
        return self.dense(gru_output)  # (B, L, d)
