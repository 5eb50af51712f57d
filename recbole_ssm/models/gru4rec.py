"""GRU4Rec (Hidasi et al. 2016, "Session-based Recommendations with Recurrent Neural Networks"):
RecBole's model, with ``encode`` so that it also trains under ``train_targets: all``.

Under ``last`` it is RecBole's GRU4Rec: same parameters, ``forward`` and loss. Evaluation reads a batch's
rows no wider than its longest, grouped by length when it is large (``ReadByLength``; scores equal
within float rounding); ``trim_padding: False`` scores the whole padded batch at once, as RecBole does.
"""

import torch
from recbole.model.sequential_recommender.gru4rec import GRU4Rec as RecBoleGRU4Rec
from torch.nn.utils.rnn import pack_padded_sequence

from recbole_ssm.models.base import StepState
from recbole_ssm.models.causal import CausalLoss, ReadByLength


class GRU4Rec(CausalLoss, ReadByLength, RecBoleGRU4Rec):
    """RecBole's GRU4Rec plus ``encode``; settings as RecBole's (``recbole/properties/model/GRU4Rec.yaml``)."""

    def encode(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """(B, L) right-padded ids -> (B, L, d): RecBole's ``forward`` before it gathers one position."""
        gru_output, _ = self.gru_layers(self.emb_dropout(self.item_embedding(item_seq)))  # (B, L, hidden)
        return self.dense(gru_output)  # (B, L, d)

    # Step-wise inference (see docs/lifelong.md): the state is the GRU's hidden state per layer.

    def init_state(self, batch_size: int) -> StepState:
        weight = self.item_embedding.weight
        h = weight.new_zeros(self.num_layers, batch_size, self.hidden_size)
        return StepState([(h,)], weight.new_zeros(batch_size, self.embedding_size),
                         torch.zeros(batch_size, dtype=torch.long, device=weight.device))

    def step(self, state: StepState, item_ids: torch.Tensor) -> StepState:
        out, h = self.gru_layers(self.emb_dropout(self.item_embedding(item_ids)).unsqueeze(1), state.layers[0][0])
        state.layers[0] = (h,)
        state.hidden, state.length = self.dense(out[:, 0]), state.length + 1
        return state

    def state_from(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> StepState:
        x = self.emb_dropout(self.item_embedding(item_seq))
        packed = pack_padded_sequence(x, item_seq_len.cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.gru_layers(packed)  # (layers, B, hidden) after each row's last real item, in row order
        return StepState([(h,)], self.dense(h[-1]), item_seq_len.clone())

    def score(self, state: StepState) -> torch.Tensor:
        return state.hidden @ self.item_embedding.weight.t()
