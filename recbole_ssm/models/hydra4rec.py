"""Hydra4Rec: bidirectional Hydra layers + PFFN (the seed paper's best SSM variant)."""

import torch
import torch.nn as nn

from recbole_ssm.errors import ConfigError
from recbole_ssm.layers import HydraMixer
from recbole_ssm.models.base import SSMRecommender, ssd_settings
from recbole_ssm.validate import require


class Hydra4Rec(SSMRecommender):
    """Hydra + PFFN sequential recommender; defaults in ``properties/model/Hydra4Rec.yaml``.

    The mixer reads the whole (prefix) sequence in both directions; a padding mask keeps its
    output independent of how many padding positions follow the real items.

    Two ways to train and read it:

    - ``train_targets: last`` (the seed paper's): one sample per prefix, the next item predicted
      from the output at the prefix's last item.
    - ``train_targets: cloze`` (BERT4Rec's): masked windows (``regime.ClozeDataLoader``), the
      masked items predicted from the outputs at their positions. The next item is predicted
      from the output at a mask token appended after the history, so the model has one more
      embedding, the mask token's.
    - ``train_targets: all`` with ``num_layers: 1``: the ``last`` regime's training, exactly, in
      one pass per window: ``window_outputs`` gives at every position t what ``forward`` gives
      for the prefix ending at t (``HydraMixer.prefix_outputs``), so the loss over a window equals
      the sum of the ``last`` losses of its prefixes, at about the cost of a causal model's pass.
      With more layers a position's output depends on the items after it, and ``all`` is refused.
    - ``causal: True``: the forward direction only (no convolution taps after the centre, no
      backward scan), a causal model that trains under ``all`` (or ``last``): Hydra's layer
      without its look-ahead, for comparison with the bidirectional one.
    """

    bidirectional = True
    # ``all`` with one layer or ``causal: True`` only (regime.check_train_targets)
    TRAIN_TARGETS = ("last", "all", "cloze")
    # read at the last real position, the last layer skips its backward scan: its parameters get no
    # gradient in that step (distributed training must not wait for them)
    may_leave_parameters_unused = True

    def __init__(self, config, dataset):
        self.cloze = (config["train_targets"] or "last") == "cloze"
        self.causal = require(config, "causal", lambda v: isinstance(v, bool), "True or False", default=False)
        if self.causal and self.cloze:
            raise ConfigError("causal=True cannot train with train_targets=cloze (a masked item would not see "
                              "the items after it); use train_targets=all or last, or causal=False")
        super().__init__(config, dataset)
        if self.cloze:
            self.mask_id = self.n_items  # one past the last item id: never scored
            self.mask_embedding = nn.Embedding(1, self.hidden_size)
            self.mask_embedding.weight.data.normal_(mean=0.0, std=0.02)

    @staticmethod
    def trains_every_prefix(config) -> bool:
        """Whether ``window_outputs`` under ``all`` is each prefix's output (so train_targets=all is allowed)."""
        return config["causal"] is True or config["num_layers"] == 1

    def window_outputs(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """(B, W, d) read by a window's loss. Under ``all``: at each real position t, ``forward``'s
        output for the prefix ending at t (``causal``: ``encode`` is that). Under ``cloze``: ``encode``,
        every position reading the whole window."""
        if self.causal or self.cloze:
            return self.encode(item_seq, item_seq_len)
        if self.num_layers != 1:
            raise ConfigError(f"Hydra4Rec reads every prefix in one pass only with num_layers=1 "
                              f"(got num_layers={self.num_layers})")
        x, mask = self._layer_inputs(item_seq, item_seq_len)
        layer = self.layers[0]
        return layer.after_mixer(layer.mixer.prefix_outputs(x, mask), x)

    def make_mixer(self, config):
        return HydraMixer(self.hidden_size, **ssd_settings(self, config, odd_conv=True), causal=self.causal)

    def embed(self, item_seq: torch.Tensor) -> torch.Tensor:
        if not self.cloze:
            return super().embed(item_seq)
        is_mask = (item_seq == self.mask_id).unsqueeze(-1)
        emb = torch.where(is_mask, self.mask_embedding.weight[0],
                          self.item_embedding(item_seq.masked_fill(is_mask.squeeze(-1), 0)))
        return self.dropout(self.LayerNorm(emb))

    def append_mask(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor):
        """Histories (B, L) right-padded, lengths (B,) -> (B, L + 1) with the mask token after each
        history, and lengths + 1."""
        seq = torch.cat([item_seq, item_seq.new_zeros(item_seq.size(0), 1)], dim=1)
        seq[torch.arange(seq.size(0), device=seq.device), item_seq_len] = self.mask_id
        return seq, item_seq_len + 1

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """(B, hidden) at the last real item, or under ``cloze`` at a mask token appended after it."""
        if self.cloze:
            item_seq, item_seq_len = self.append_mask(item_seq, item_seq_len)
        return super().forward(item_seq, item_seq_len)
