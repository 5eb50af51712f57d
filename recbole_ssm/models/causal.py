"""The loss of a causal model under either training regime (see ``recbole_ssm.regime``).

A causal model gives ``encode(item_seq, item_seq_len) -> (B, L, d)``: its output at every
position, where position t depends only on items 0..t. Under ``train_targets: all`` a batch
carries the next item of every position (``regime.TARGETS``) and the loss is taken at every
real position; under ``last`` it is RecBole's loss at the last position.

CE is over all items (``ce_negatives: 0``) or a sampled softmax over each target and
``ce_negatives`` negatives drawn afresh for every batch and shared by its positions
(``ops.cross_entropy.sampled_softmax_cross_entropy``; docs/models.md, "Sampled softmax").
"""

from __future__ import annotations

import math

import torch

from recbole_ssm.errors import ConfigError
from recbole_ssm.histories import histories_of
from recbole_ssm.ops.cross_entropy import (
    linear_cross_entropy,
    log_probabilities,
    sample_negatives,
    sampled_softmax_cross_entropy,
)
from recbole_ssm.settings_check import PLAIN_CE, RULES
from recbole_ssm.targets import NEG_TARGETS, TARGETS
from recbole_ssm.validate import positive_number, require

CE_CHUNK_MIB = 128.0  # logits of one chunk of positions (see ops.cross_entropy), unless ce_chunk_mib is set


def training_item_counts(dataset, n_items: int) -> torch.Tensor:
    """(n_items,) float64: how often each item occurs in the training data a model is built with,
    each training interaction counted once (item 0, padding, never occurs).

    The model gets the training split (``quick_start``: ``train_data._dataset``). Under ``all`` and
    ``cloze`` that is a :class:`~recbole_ssm.regime.WindowDataset` split, whose flat training
    histories are read; under ``last`` it is RecBole's SequentialDataset split, whose rows are one
    prefix per target (an interaction sits in many rows' item lists), so the histories are rebuilt
    from them (``regime.training_histories``: a user's first item, then each row's target). Both
    give the same counts. Where the rows do not chain into histories (RecBole's benchmark files),
    each row's target is counted once: every training interaction but each user's first.
    """
    try:
        items = histories_of(dataset)[0]  # (interactions,)
    except ValueError:
        items = dataset.inter_feat[dataset.iid_field]  # (rows,)
    return torch.bincount(items.long(), minlength=n_items).to(torch.float64)


def window_seen_pairs(item_seq: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``ce_filter_seen`` under ``all``: ``(rows, cols)`` pairs, each an item (cols) the window's input
    holds up to a position, for the row of that position's target in ``targets[targets > 0]``
    (row-major order), the target itself excepted. item_seq and targets (B, W), 0 on padding."""
    width = targets.size(1)
    real = targets > 0  # (B, W)
    pos = torch.arange(width, device=targets.device)
    upto = pos.unsqueeze(1) >= pos.unsqueeze(0)  # (W, W): input position s is read at position t >= s
    pairs = (upto.unsqueeze(0) & real.unsqueeze(2) & (item_seq > 0).unsqueeze(1)
             & (item_seq.unsqueeze(1) != targets.unsqueeze(2)))  # (B, t, s)
    b, t, src = pairs.nonzero(as_tuple=True)  # in (b, t, s) order, so rows come out ascending
    row_of = (real.flatten().cumsum(0) - 1).view_as(real)  # (B, W): the row of each real position
    return row_of[b, t], item_seq[b, src]


def prefix_seen_pairs(item_seq: torch.Tensor, item_seq_len: torch.Tensor,
                      targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``ce_filter_seen`` under ``last``: ``(rows, cols)``, the items of each row's prefix (B, L) up to
    its length (B,), the row's target (B,) excepted."""
    pos = torch.arange(item_seq.size(1), device=item_seq.device)
    pairs = (pos.unsqueeze(0) < item_seq_len.unsqueeze(1)) & (item_seq > 0) & (item_seq != targets.unsqueeze(1))
    b, src = pairs.nonzero(as_tuple=True)
    return b, item_seq[b, src]


class CausalLoss:
    """Mixin for causal RecBole sequential models with ``encode``, ``item_embedding`` and ``loss_type``.

    Put it before the RecBole model class; ``calculate_loss`` then handles ``all`` batches and
    leaves every other batch to the model's own loss, untouched, unless ``ce_negatives`` asks for a
    sampled softmax (then ``target_loss`` at the last position) or ``recbole_last_loss`` is False.
    """

    TRAIN_TARGETS = ("last", "all")
    # takes the ce_* loss settings (ce_negatives, ce_label_smoothing, ce_temperature); quick_start
    # refuses them for a model without this trait
    CE_SETTINGS = True
    # under ``last``, the model class's own (RecBole's) loss, unless a ce_* setting changes the loss
    recbole_last_loss = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.ce_chunk_mib = float(require(config, "ce_chunk_mib", positive_number, "a positive number of MiB",
                                          default=CE_CHUNK_MIB))
        # (the same rules as the settings check's, for a config built without it)
        self.ce_negatives = int(require(config, "ce_negatives", *RULES["ce_negatives"], default=0))
        sampler = require(config, "ce_negative_sampler", *RULES["ce_negative_sampler"], default="uniform")
        if self.ce_negatives and config["loss_type"] != "CE":  # (self.loss_type: not set yet in the SSMs)
            raise ConfigError(f"ce_negatives applies to loss_type=CE, not {config['loss_type']}; unset it "
                              "(ce_negatives=0) or train with loss_type=CE")
        # popularity: each item's count in the training data; a buffer, so that it follows the model's
        # device, and not persistent, so that checkpoints are the same whatever the loss
        weights = training_item_counts(dataset, self.n_items) if self.ce_negatives and sampler == "popularity" else None
        if weights is not None:
            log_probabilities(weights)  # checked once here: not all 0, none at padding
        self.register_buffer("ce_sampling_weights", weights, persistent=False)
        self.ce_label_smoothing = float(require(config, "ce_label_smoothing", *RULES["ce_label_smoothing"],
                                                default=0.0))
        self.ce_temperature = float(require(config, "ce_temperature", *RULES["ce_temperature"], default=1.0))
        if self.ce_label_smoothing and self.ce_negatives:
            raise ConfigError("ce_label_smoothing applies to full CE (ce_negatives=0), not to a sampled softmax; "
                              "set one of them to 0")
        if (self.ce_label_smoothing or self.ce_temperature != 1.0) and config["loss_type"] != "CE":
            raise ConfigError(f"ce_label_smoothing and ce_temperature apply to loss_type=CE, not "
                              f"{config['loss_type']}; unset them or train with loss_type=CE")
        self.ce_filter_seen = bool(require(config, "ce_filter_seen", *RULES["ce_filter_seen"], default=False))
        if self.ce_filter_seen and (config["loss_type"] != "CE" or self.ce_label_smoothing):
            raise ConfigError("ce_filter_seen applies to loss_type=CE (full or sampled) without "
                              "ce_label_smoothing; unset it or those settings")
        # under 'last', RecBole's own loss only where no ce_* setting changes it
        self.plain_ce = all(getattr(self, key) == plain for key, plain in PLAIN_CE.items())

    def target_loss(self, hidden: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None = None,
                    seen: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Mean loss of hidden states (P, d) against their next items (P,): CE over all items, sampled
        softmax over ``ce_negatives`` negatives, or BPR against ``neg`` (P,). ``seen = (rows, cols)``
        (``ce_filter_seen``): item ``cols[e]`` is left out of position ``rows[e]``'s softmax (of its
        negatives, where they are sampled)."""
        if self.loss_type == "BPR":
            pos_score = (hidden * self.item_embedding(pos)).sum(-1)  # (P,)
            neg_score = (hidden * self.item_embedding(neg)).sum(-1)
            return self.loss_fct(pos_score, neg_score)
        weight = self.item_embedding.weight  # (n, d)
        if self.ce_temperature != 1.0:
            hidden = hidden / self.ce_temperature  # every logit h . w_j divided by the temperature
        if not self.ce_negatives:
            return linear_cross_entropy(hidden, weight, pos, budget_mib=self.ce_chunk_mib,
                                        label_smoothing=self.ce_label_smoothing, exclude=seen)
        # fresh negatives for every batch, from torch's default generator (RecBole seeds it)
        negatives, log_q = sample_negatives(self.n_items, self.ce_negatives, probs=self.ce_sampling_weights,
                                            device=hidden.device)  # (N,), (N,)
        if self.ce_sampling_weights is None:  # uniform: no correction
            return sampled_softmax_cross_entropy(hidden, weight, pos, negatives, exclude=seen)
        # logQ: each negative's logit less the log of its expected count, log(N q_j); the target's as it
        # is. The sum over the negatives then estimates the softmax's normaliser without bias, and the
        # loss tends to full CE as N grows (tests/test_sampled_softmax.py)
        return sampled_softmax_cross_entropy(hidden, weight, pos, negatives, log_q + math.log(self.ce_negatives),
                                             exclude=seen)

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
        seen = None
        if self.ce_filter_seen:
            seen = window_seen_pairs(interaction[self.ITEM_SEQ][:, : hidden.size(1)], targets)
        return self.target_loss(hidden[real], targets[real], neg, seen)  # (P, d) against (P,)

    def last_position_loss(self, interaction) -> torch.Tensor:
        """Mean loss of a batch of RecBole's prefix samples, each read at its last position."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        seq_output = self.forward(item_seq, item_seq_len)  # (B, d)
        neg = interaction[self.NEG_ITEM_ID] if self.loss_type == "BPR" else None
        pos = interaction[self.POS_ITEM_ID]
        seen = prefix_seen_pairs(item_seq, item_seq_len, pos) if self.ce_filter_seen else None
        return self.target_loss(seq_output, pos, neg, seen)

    def calculate_loss(self, interaction) -> torch.Tensor:
        if TARGETS in interaction:
            return self.all_positions_loss(interaction)
        if self.recbole_last_loss and self.plain_ce:
            return super().calculate_loss(interaction)  # RecBole's model's own loss, untouched
        return self.last_position_loss(interaction)


class ReadByLength:
    """Mixin: evaluation (``predict``, ``full_sort_predict``) reads a batch no wider than its longest
    row, and in groups of rows of similar length, each trimmed to its own longest row, when the
    batch would be more than ``EVAL_GROUP_POSITIONS`` padded positions.

    For models whose ``forward(item_seq, item_seq_len) -> (B, d)`` gives each row an output that
    depends only on its own items before ``item_seq_len`` (right padding, causal or masked), and
    that score with ``item_embedding``. ``trim_padding`` (True unless set False) switches it on.
    """

    EVAL_GROUP_POSITIONS = 1 << 13  # padded positions a group of ``read_by_length`` reads at once (docs/models.md)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.trim_padding = require(config, "trim_padding", lambda v: isinstance(v, bool), "True or False",
                                    default=True)

    def read_by_length(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """``forward`` for evaluation, with the rows grouped by length when that saves padding.

        A row's output depends on its own items only, so reading groups of rows of similar length,
        each group trimmed to its longest row, gives each row the output ``forward`` gives it on
        the whole batch. With ``trim_padding``, outside training, a batch is read no wider than
        its longest row (RecBole's SASRec and GRU4Rec read every column they are given), and in
        groups when it would be more than ``EVAL_GROUP_POSITIONS`` positions: one long history
        among short ones (L=2048 on ML-1M) then costs the short rows no padding, and many long
        histories are not read at once (SASRec's attention scores over 393 rows of 2,048 take
        6.6 GB a layer)."""
        if self.training or not self.trim_padding:
            return self.forward(item_seq, item_seq_len)
        longest = int(item_seq_len.max())
        if item_seq.size(0) * longest <= self.EVAL_GROUP_POSITIONS:  # one group: read it at once
            return self.forward(item_seq[:, :longest], item_seq_len)
        order = torch.argsort(item_seq_len, descending=True, stable=True)
        out, start, sizes = None, 0, item_seq_len[order].tolist()
        while start < len(sizes):
            stop = start + max(1, self.EVAL_GROUP_POSITIONS // max(1, sizes[start]))
            rows = order[start:stop]
            hidden = self.forward(item_seq[rows, : sizes[start]], item_seq_len[rows])
            if out is None:
                out = hidden.new_empty(item_seq.size(0), hidden.size(1))
            out[rows] = hidden
            start = stop
        return out

    def predict(self, interaction) -> torch.Tensor:
        seq_output = self.read_by_length(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return (seq_output * self.item_embedding(interaction[self.ITEM_ID])).sum(-1)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        seq_output = self.read_by_length(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return seq_output @ self.item_embedding.weight.t()  # (B, n_items)
