"""The loss of a causal model under either training regime (see ``recbole_ssm.regime``).

A causal model gives ``encode(item_seq, item_seq_len) -> (B, L, d)``: its output at every
position, where position t depends only on items 0..t. Under ``train_targets: all`` a batch
carries the next item of every position (``regime.TARGETS``) and the loss is taken at every
real position; under ``last`` it is RecBole's loss at the last position.
"""

from __future__ import annotations

import torch

from recbole_ssm.ops.cross_entropy import linear_cross_entropy
from recbole_ssm.regime import NEG_TARGETS, TARGETS
from recbole_ssm.validate import positive_number, require

CE_CHUNK_MIB = 128.0  # logits of one chunk of positions (see ops.cross_entropy), unless ce_chunk_mib is set


class CausalLoss:
    """Mixin for causal RecBole sequential models with ``encode``, ``item_embedding`` and ``loss_type``.

    Put it before the RecBole model class; ``calculate_loss`` then handles ``all`` batches and
    leaves every other batch to the model's own loss, untouched.
    """

    TRAIN_TARGETS = ("last", "all")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.ce_chunk_mib = float(require(config, "ce_chunk_mib", positive_number, "a positive number of MiB",
                                          default=CE_CHUNK_MIB))

    def target_loss(self, hidden: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None = None) -> torch.Tensor:
        """Mean loss of hidden states (P, d) against their next items (P,): CE over all items, or BPR."""
        if self.loss_type == "BPR":
            pos_score = (hidden * self.item_embedding(pos)).sum(-1)  # (P,)
            neg_score = (hidden * self.item_embedding(neg)).sum(-1)
            return self.loss_fct(pos_score, neg_score)
        return linear_cross_entropy(hidden, self.item_embedding.weight, pos, budget_mib=self.ce_chunk_mib)

    def window_outputs(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """(B, W, d): the outputs a window's loss reads at each position. Under ``all``: the output
        the model reads for the prefix that ends there; a causal model's ``encode`` is exactly that."""
        return self.encode(item_seq, item_seq_len)

    def all_positions_loss(self, interaction) -> torch.Tensor:
        """Mean loss over every real position of a batch of windows."""
        hidden = self.window_outputs(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])  # (B, W, d)
        targets = interaction[TARGETS][:, : hidden.size(1)]  # (B, W), 0 on padding
        real = targets > 0
        neg = interaction[NEG_TARGETS][:, : hidden.size(1)][real] if self.loss_type == "BPR" else None
        return self.target_loss(hidden[real], targets[real], neg)  # (P, d) against (P,)

    def calculate_loss(self, interaction) -> torch.Tensor:
        if TARGETS in interaction:
            return self.all_positions_loss(interaction)
        return super().calculate_loss(interaction)
