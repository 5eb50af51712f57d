"""SASRec (Kang & McAuley 2018, "Self-Attentive Sequential Recommendation"): RecBole's model,
with ``encode`` so that it also trains under ``train_targets: all``.

Under ``last`` it is RecBole's SASRec: same parameters, ``forward`` and loss. Evaluation reads a batch's
rows no wider than its longest, grouped by length when it is large (``ReadByLength``; scores equal
within float rounding); ``trim_padding: False`` scores the whole padded batch at once, as RecBole does.
"""

import torch
from recbole.model.sequential_recommender.sasrec import SASRec as RecBoleSASRec

from recbole_ssm.models.causal import CausalLoss, ReadByLength


class SASRec(CausalLoss, ReadByLength, RecBoleSASRec):
    """RecBole's SASRec plus ``encode``; settings as RecBole's (``recbole/properties/model/SASRec.yaml``)."""

    def encode(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """(B, L) right-padded ids -> (B, L, d): RecBole's ``forward`` before it gathers one position.

        Causal attention: position t attends to positions 0..t only, so with right padding its
        output is that of the prefix ending at t.
        """
        positions = torch.arange(item_seq.size(1), dtype=torch.long, device=item_seq.device)  # (L,)
        x = self.item_embedding(item_seq) + self.position_embedding(positions).unsqueeze(0)  # (B, L, d)
        x = self.dropout(self.LayerNorm(x))
        return self.trm_encoder(x, self.get_attention_mask(item_seq), output_all_encoded_layers=False)[-1]
