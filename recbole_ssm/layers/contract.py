"""The contract of a sequence mixer: what :class:`~recbole_ssm.layers.block.SSMLayer` and the
models call on ``MambaMixer``, ``Mamba2Mixer`` and ``HydraMixer``.

Every mixer maps (B, L, d_model) to (B, L, d_model) in ``forward``. A *causal* mixer (its output
at position t reads positions up to t only) also runs one position at a time: ``new_state``
makes an empty state, ``prefill`` reads a whole right-padded batch and returns the state after
each row's last real item, and ``step`` advances that state by one position. The step API is
what serves a user's new event without re-reading the history (``recbole_ssm.serve``).

Shapes: B rows, L positions, d = d_model. ``mask`` (B, L) is True on real positions (right
padding), ``index`` (B,) a position per row, ``lengths`` (B,) the real positions per row.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable

import torch


@runtime_checkable
class Mixer(Protocol):
    """A sequence mixer (``HydraMixer``, and the causal mixers below)."""

    def forward(
        self, hidden: torch.Tensor, mask: Optional[torch.Tensor] = None, index: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """hidden (B, L, d) -> (B, L, d); with ``index``, only the output at ``index[b]`` of each
        row, (B, d). A mixer that reads later positions (bidirectional) must give real positions
        the same output whatever padding follows them (``mask``); a causal one may ignore ``mask``."""
        ...


@runtime_checkable
class CausalMixer(Mixer, Protocol):
    """A mixer whose output at t depends on positions <= t, with the step API (``MambaMixer``,
    ``Mamba2Mixer``). For right-padded ``hidden`` of ``lengths`` real positions, these agree to
    float rounding (``tests/test_stepwise.py``, ``tests/test_layers.py``):

    - ``forward(hidden)[b, t]`` for t < lengths[b];
    - ``prefill(hidden, lengths)[0][b, t]``;
    - ``step``'s output at t, for the state of ``new_state`` stepped through positions 0..t-1 of row b.
    """

    def new_state(self, batch: int, device: Any = None, dtype: torch.dtype = torch.float32) -> tuple:
        """The empty state of ``batch`` rows: a tuple of tensors, each with the rows on dimension 0."""
        ...

    def step(self, hidden: torch.Tensor, state: tuple) -> torch.Tensor:
        """One new position per row: hidden (B, d) -> (B, d); ``state`` is advanced in place."""
        ...

    def prefill(self, hidden: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """hidden (B, L, d), right-padded -> (the output (B, L, d), the state after each row's last
        real position, as ``new_state`` lays it out)."""
        ...
