"""BERT4Rec (Sun et al. 2019): RecBole's model, which also trains under ``train_targets: cloze``.

Under ``last`` it is RecBole's BERT4Rec exactly: the same parameters, data transform
(``mask_itemseq`` on every prefix), loss and scores. Under ``cloze`` it trains on recbole-ssm's
masked history windows (``regime.ClozeDataLoader``), as Hydra4Rec does, so the two bidirectional
models are compared under one objective and one data pipeline.

Its position embedding has ``MAX_ITEM_LIST_LENGTH`` rows. A cloze window of L inputs carries
its target too (L + 1 items), and a history of L items read with a mask token after it is L + 1
items as well: such rows drop their oldest item (RecBole's own prediction drops the first column).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.sequential_recommender.bert4rec import BERT4Rec as RecBoleBERT4Rec

from recbole_ssm.targets import NEG_TARGETS, TARGETS


def fit_positions(length: int, seq: torch.Tensor, lengths: torch.Tensor, *aligned: torch.Tensor):
    """Right-padded rows (B, W) of ``lengths`` (B,) -> at most ``length`` columns: a row longer than
    that keeps its newest ``length`` items. ``aligned`` tensors (B, W) are cut the same way.
    Returns ``(seq, lengths, *aligned)``."""
    if seq.size(1) <= length:
        return (seq, lengths, *aligned)
    drop = (lengths - length).clamp(min=0)  # (B,) oldest items to leave out
    index = torch.arange(length, device=seq.device).unsqueeze(0) + drop.unsqueeze(1)  # (B, length)
    return (seq.gather(1, index), lengths - drop, *(t.gather(1, index) for t in aligned))


class BERT4Rec(RecBoleBERT4Rec):
    """RecBole's BERT4Rec plus the ``cloze`` regime; settings as RecBole's
    (``recbole/properties/model/BERT4Rec.yaml``)."""

    bidirectional = True
    TRAIN_TARGETS = ("last", "cloze")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.cloze = (config["train_targets"] or "last") == "cloze"

    def calculate_loss(self, interaction) -> torch.Tensor:
        if TARGETS not in interaction:  # RecBole's batches (``last``)
            return super().calculate_loss(interaction)
        extra = (interaction[NEG_TARGETS],) if self.loss_type == "BPR" else ()
        seq, _, targets, *neg = fit_positions(self.max_seq_length, interaction[self.ITEM_SEQ],
                                              interaction[self.ITEM_SEQ_LEN], interaction[TARGETS], *extra)
        masked = targets > 0  # (B, W): the masked positions, 0 elsewhere and on padding
        hidden = self.forward(seq)[masked]  # (P, d)
        pos = targets[masked]
        if self.loss_type == "BPR":
            neg = neg[0][masked]
            pos_score = (hidden * self.item_embedding(pos)).sum(-1) + self.output_bias[pos]
            neg_score = (hidden * self.item_embedding(neg)).sum(-1) + self.output_bias[neg]
            return -torch.log(1e-14 + torch.sigmoid(pos_score - neg_score)).mean()  # RecBole's BPR form
        return F.cross_entropy(self._logits(hidden), pos)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(P, d) -> (P, n_items): scores of every item (the mask token's row left out)."""
        return hidden @ self.item_embedding.weight[: self.n_items].t() + self.output_bias

    def read(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """(B, d): the output at a mask token appended after each history (``cloze``)."""
        rows = torch.arange(item_seq.size(0), device=item_seq.device)
        seq = torch.cat([item_seq, item_seq.new_zeros(item_seq.size(0), 1)], dim=1)
        seq[rows, item_seq_len] = self.mask_token
        seq, lengths = fit_positions(self.max_seq_length, seq, item_seq_len + 1)
        return self.forward(seq)[rows, lengths - 1]

    def predict(self, interaction) -> torch.Tensor:
        if not self.cloze:
            return super().predict(interaction)
        hidden = self.read(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        item = interaction[self.ITEM_ID]
        return (hidden * self.item_embedding(item)).sum(-1) + self.output_bias[item]

    def full_sort_predict(self, interaction) -> torch.Tensor:
        if not self.cloze:
            return super().full_sort_predict(interaction)
        return self._logits(self.read(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]))
