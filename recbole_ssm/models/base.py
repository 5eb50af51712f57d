"""What the SSM recommenders share: embeddings, a stack of SSM layers, the prediction head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.loss import BPRLoss

from recbole_ssm.errors import ConfigError
from recbole_ssm.layers import SSMLayer
from recbole_ssm.layers.block import take
from recbole_ssm.models.causal import CausalLoss, ReadByLength
from recbole_ssm.validate import positive_int, require


@dataclass
class StepState:
    """Users' recurrent state for step-wise inference: each layer's mixer state, the output at the
    last item consumed (B, d) and the number of items consumed (B,). Its size does not depend on
    how many items were consumed."""

    layers: list
    hidden: torch.Tensor
    length: torch.Tensor

    def nbytes(self) -> int:
        tensors = [t for layer in self.layers for t in layer] + [self.hidden, self.length]
        return sum(t.numel() * t.element_size() for t in tensors)


def ssd_settings(model, config, odd_conv: bool = False) -> dict:
    """Read and check the SSD mixer settings shared by Mamba2Rec and Hydra4Rec."""
    d_conv_rule = "a positive odd integer (the convolution is centred)" if odd_conv else "a positive integer"
    d_conv_ok = (lambda v: positive_int(v) and v % 2 == 1) if odd_conv else positive_int
    s = {
        "d_state": require(config, "d_state", positive_int, "a positive integer"),
        "d_conv": require(config, "d_conv", d_conv_ok, d_conv_rule),
        "expand": require(config, "expand", positive_int, "a positive integer"),
        "headdim": require(config, "headdim", positive_int, "a positive integer"),
        "chunk_size": require(config, "chunk_size", positive_int, "a positive integer"),
    }
    inner = s["expand"] * model.hidden_size
    if inner % s["headdim"]:
        raise ConfigError(
            f"invalid headdim={s['headdim']!r}: expand * hidden_size = {inner} must be divisible by headdim"
        )
    heads = inner // s["headdim"]
    s["ngroups"] = require(config, "ngroups", positive_int, "a positive integer")
    if heads % s["ngroups"]:
        raise ConfigError(f"invalid ngroups={s['ngroups']!r}: must be a positive divisor of the {heads} heads")
    return s


class SSMRecommender(CausalLoss, ReadByLength, SequentialRecommender):
    """Item embedding -> dropout -> LayerNorm -> N x SSMLayer -> state at the last real position.

    Subclasses give ``make_mixer(config)`` and set ``bidirectional`` when the mixer looks ahead
    (then it gets a padding mask, and the model trains with ``train_targets: last`` only).
    Scores are dot products with the item embedding matrix. Layers take ``(x, mask, index)``;
    in ``forward`` the last one is called with ``index = item_seq_len - 1`` and returns only
    that position, (B, d); ``encode`` returns every position, (B, L, d).
    """

    bidirectional = False
    recbole_last_loss = False  # CausalLoss.target_loss under ``last`` too (no RecBole loss to defer to)
    embedding_norm = True  # LayerNorm over the item embeddings (RecMamba scales them instead)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info (every model setting is read here or in make_mixer)
        self.hidden_size = require(config, "hidden_size", positive_int, "a positive integer")
        self.num_layers = require(config, "num_layers", positive_int, "a positive integer")
        self.dropout_prob = require(config, "dropout_prob", lambda v: 0.0 <= float(v) < 1.0, "a float in [0, 1)")
        self.loss_type = require(config, "loss_type", lambda v: v in ("CE", "BPR"), "CE or BPR")

        # define layers and loss
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        if self.embedding_norm:
            self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(self.dropout_prob)
        self.layers = nn.ModuleList(self.make_layer(config) for _ in range(self.num_layers))
        self.loss_fct = BPRLoss() if self.loss_type == "BPR" else None  # CE: CausalLoss.target_loss

        # parameters initialization
        self.apply(self._init_weights)

    def make_mixer(self, config) -> nn.Module:
        raise NotImplementedError

    def make_layer(self, config) -> nn.Module:
        """One layer of the stack: mixer + PFFN with Mamba4Rec's residual rule."""
        return SSMLayer(self.make_mixer(config), self.hidden_size, self.dropout_prob, residual=self.num_layers > 1)

    def embed(self, item_seq: torch.Tensor) -> torch.Tensor:
        """(B, L) item ids -> (B, L, d) layer input."""
        return self.dropout(self.LayerNorm(self.item_embedding(item_seq)))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def _layer_inputs(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor):
        """(B, L) right-padded ids -> the first layer's input (B, L', d) and the padding mask (or None)."""
        if self.trim_padding:
            # Positions after the longest sequence are padding in every row; causal mixers never
            # look at them and the bidirectional one masks them, so dropping them changes nothing.
            item_seq = item_seq[:, : int(item_seq_len.max())]
        mask = None
        if self.bidirectional:
            positions = torch.arange(item_seq.size(1), device=item_seq.device)
            mask = positions.unsqueeze(0) < item_seq_len.unsqueeze(1)  # (B, L)
        return self.embed(item_seq), mask  # (B, L, d)

    def encode(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """item_seq: (B, L) right-padded with 0 -> (B, L', d) output at every position (L' = L, or the
        longest sequence of the batch with ``trim_padding``)."""
        x, mask = self._layer_inputs(item_seq, item_seq_len)
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """item_seq: (B, L) right-padded with 0, item_seq_len: (B,) -> (B, hidden) at the last real item."""
        x, mask = self._layer_inputs(item_seq, item_seq_len)
        for layer in self.layers[:-1]:
            x = layer(x, mask)
        # the loss and the scores read one position per row: the last layer computes only that one
        return self.layers[-1](x, mask, item_seq_len - 1)  # (B, d)

    # Step-wise inference (causal models): O(1) work per new item, whatever the history's length.
    # Call in eval mode; the scores equal full_sort_predict on the same history.

    def _check_stepwise(self) -> None:
        if self.bidirectional:
            raise NotImplementedError(
                f"{type(self).__name__} is bidirectional: a new item changes every position's output, so "
                "there is no step-wise update; score the whole history with full_sort_predict"
            )

    def embed_step(self, item_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(B,) item ids at positions (B,) -> (B, d) layer input (what ``embed`` gives there)."""
        return self.dropout(self.LayerNorm(self.item_embedding(item_ids)))

    def init_state(self, batch_size: int) -> StepState:
        """The state of ``batch_size`` users with no history yet."""
        self._check_stepwise()
        weight = self.item_embedding.weight
        layers = [layer.mixer.new_state(batch_size, weight.device, weight.dtype) for layer in self.layers]
        return StepState(layers, weight.new_zeros(batch_size, self.hidden_size),
                         torch.zeros(batch_size, dtype=torch.long, device=weight.device))

    def step(self, state: StepState, item_ids: torch.Tensor) -> StepState:
        """Consume one more item per user (``item_ids`` (B,)); ``state`` is updated in place and returned."""
        x = self.embed_step(item_ids, state.length)
        for layer, layer_state in zip(self.layers, state.layers):
            x = layer.step(x, layer_state)
        state.hidden, state.length = x, state.length + 1
        return state

    def state_from(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> StepState:
        """The state after whole histories (B, L) right-padded, of lengths (B,) >= 1, in one chunked pass."""
        self._check_stepwise()
        x = self.embed(item_seq[:, : int(item_seq_len.max())])
        layers = []
        for layer in self.layers:
            x, layer_state = layer.prefill(x, item_seq_len)
            layers.append(layer_state)
        return StepState(layers, take(x, item_seq_len - 1), item_seq_len.clone())

    def score(self, state: StepState) -> torch.Tensor:
        """Scores of every item for each user's next interaction, (B, n_items)."""
        return state.hidden @ self.item_embedding.weight.t()

