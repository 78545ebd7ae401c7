"""The LAP head: per-element DC importance probabilities (paper 000, Eq. 3).

``LAP^l : R^F -> [0, 1]^M`` applied to every element (feature-map location)
on its own: stacked 1x1 convolutions (``Dense`` on the channel axis) with
ReLU between them and a sigmoid per DC at the end. No softmax over space or
over DCs (App. C: a pixel may belong to several DCs, and probabilities stay
comparable across images).

Choices the paper leaves open (config fields ``lap.head_widths``):
hidden widths ``(64,)`` by default; the last bias starts at 0, so every map
starts near 0.5.

The layers run on the elements flattened to ``[N, F]``: XLA:CPU differentiates
a ``Dense`` on a 4-D input 3-7x slower than on the same rows as a matrix
(``benchmarks/lap.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax


class LAPHead(nn.Module):
  """``[B, h, w, F] -> [B, h, w, M]`` importance probabilities in [0, 1].

  Attributes:
    num_dcs: ``M``, one output map per distinguishing clue.
    widths: hidden widths of the 1x1 layers (``()``: one linear layer).
  """
  num_dcs: int
  widths: Sequence[int] = (64,)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    lead = x.shape[:-1]
    x = x.reshape(-1, x.shape[-1])
    for i, width in enumerate(self.widths):
      x = nn.relu(nn.Dense(width, name=f"hidden{i + 1}")(x))
    x = nn.sigmoid(nn.Dense(self.num_dcs, name="out")(x))
    return x.reshape(*lead, self.num_dcs)
