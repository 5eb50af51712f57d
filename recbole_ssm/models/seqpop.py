"""SeqPop: the popularity ranking under the sequential protocol (a floor every model must beat).

RecBole's own ``Pop`` is a general recommender: its evaluation masks each user's history, so
its numbers are not comparable with sequential models. SeqPop scores every item by how often
it is a target in the training split and is evaluated exactly like the sequential models.
"""

import torch
import torch.nn as nn
from recbole.model.abstract_recommender import SequentialRecommender


class SeqPop(SequentialRecommender):
    """Rank items by training-set frequency; the history is ignored."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        targets = dataset.inter_feat[self.POS_ITEM_ID].long()  # (n_train,) next items of the training split
        counts = torch.bincount(targets, minlength=self.n_items)[: self.n_items].float()
        self.register_buffer("scores", torch.log1p(counts))
        self.fake_loss = nn.Parameter(torch.zeros(1))  # the trainer needs something to step

    def forward(self, item_seq, item_seq_len):
        return self.scores.unsqueeze(0).expand(item_seq.size(0), -1)

    def calculate_loss(self, interaction):
        return self.fake_loss.sum() * 0.0

    def predict(self, interaction):
        return self.scores[interaction[self.ITEM_ID]]

    def full_sort_predict(self, interaction):
        seq = interaction[self.ITEM_SEQ]
        return self.scores.unsqueeze(0).expand(seq.size(0), -1).clone()
