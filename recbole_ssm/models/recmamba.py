"""RecMamba: Mamba for lifelong sequences (thousands of interactions per user).

Following the RecMamba setup (Yang et al. 2024, "Uncovering Selective State Space Model's
Capabilities in Lifelong Sequential Recommendation"): item embedding scaled by sqrt(d) plus a
learned position embedding, dropout, then bare Mamba blocks (no PFFN); long histories
(``MAX_ITEM_LIST_LENGTH`` 2048 by default). The output at the last real item scores all items.

``position_embedding: False`` leaves the position embedding out (the Mamba blocks see order
through their recurrence): nothing is then tied to ``MAX_ITEM_LIST_LENGTH``, so a user's state
can be stepped past it (``step``, ``recbole_ssm.serve``).
"""

import math

import torch
import torch.nn as nn

from recbole_ssm.layers import ResidualMixer
from recbole_ssm.models.mamba4rec import Mamba4Rec
from recbole_ssm.validate import require


class RecMamba(Mamba4Rec):
    """Mamba blocks over long histories; defaults in ``properties/model/RecMamba.yaml``.

    The mixer is Mamba4Rec's; the embedding and the layer around the mixer differ.
    """

    embedding_norm = False  # the embeddings are scaled by sqrt(d), not normalised

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        # a checkpoint written before the setting existed has none: it had the embedding
        positions = require(config, "position_embedding", lambda v: isinstance(v, bool), "True or False",
                            default=True)
        self.position_embedding = None
        if positions:
            self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
            self.position_embedding.weight.data.normal_(mean=0.0, std=0.02)

    @property
    def bounded_positions(self) -> bool:
        """Learned position embeddings: a history cannot be stepped past L."""
        return self.position_embedding is not None

    def make_layer(self, config):
        return ResidualMixer(self.make_mixer(config), residual=self.num_layers > 1)

    def embed(self, item_seq: torch.Tensor) -> torch.Tensor:
        x = self.item_embedding(item_seq) * math.sqrt(self.hidden_size)
        if self.position_embedding is not None:
            x = x + self.position_embedding(torch.arange(item_seq.size(1), device=item_seq.device))
        return self.dropout(x)  # (B, L, d)

    def embed_step(self, item_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.item_embedding(item_ids) * math.sqrt(self.hidden_size)
        if self.position_embedding is None:
            return self.dropout(x)  # (B, d)
        if int(positions.max()) >= self.max_seq_length:
            raise ValueError(
                f"RecMamba's learned positions end at MAX_ITEM_LIST_LENGTH={self.max_seq_length}: a history "
                "cannot be stepped past it; keep its last MAX_ITEM_LIST_LENGTH items and use state_from "
                "(or train it with position_embedding: False)"
            )
        return self.dropout(x + self.position_embedding(positions))  # (B, d)
