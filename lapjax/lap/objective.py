"""The whole LAP training objective of one batch (paper 000, Algorithm 2).

``LAPObjective`` is hashable (a static argument of the jitted training
step) and combines, for LAPs ``l = 1..L`` (shallow to deep)::

  sum_l lambda_l * L_LS_l          weak (Eq. 4-5) or expert (Eq. 8)
  + sum_l L_disc_l                 discriminative scoring modules (App. C.5)
  + w_c * sum_pairs JS             concordance (Eq. 9), if w_c > 0

The weak loss ranks MinAR / MaxAR elements by ``reference='sum'`` (the sum
over LAPs of main + discriminative maps, App. C.4-C.5, the paper's setting)
or ``'self'`` (each LAP's own main + discriminative maps).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lapjax.lap import losses
from lapjax.lap.dcs import DCSystem, dc_system

SUPERVISIONS = ("weak", "expert")
REFERENCES = ("sum", "self")


class LAPObjective(NamedTuple):
  """LAP loss settings; call it on the recorded maps.

  Attributes:
    membership: the DC system's ``[M, N]`` matrix as nested tuples.
    supervision: ``'weak'`` (Eq. 4-5) or ``'expert'`` (Eq. 8, needs masks).
    gamma_min, gamma_max, gamma_iar: the ratios of Eq. 5 (``gamma_max``
      None: MaxAR off). ``gamma_iar`` is also the expert loss's ``K_IAR /
      n_e``.
    weights: ``lambda_l`` per LAP (one value: every LAP).
    concordance_weight: ``w_c`` (0: off).
    reference: ``'sum'`` or ``'self'`` (weak supervision's ranking maps).
  """
  membership: tuple[tuple[int, ...], ...]
  supervision: str = "weak"
  gamma_min: float = 0.1
  gamma_max: float | None = 0.5
  gamma_iar: float = 0.1
  weights: tuple[float, ...] = (10.0,)
  concordance_weight: float = 1.0
  reference: str = "sum"

  @property
  def dcs(self) -> DCSystem:
    return dc_system(self.membership)

  def validate(self, num_laps: int | None = None) -> None:
    """Raises ValueError for settings that cannot work."""
    dc_system(self.membership)
    if self.supervision not in SUPERVISIONS:
      raise ValueError(f"supervision must be one of {SUPERVISIONS}; got "
                       f"{self.supervision!r}")
    if self.reference not in REFERENCES:
      raise ValueError(f"reference must be one of {REFERENCES}; got "
                       f"{self.reference!r}")
    losses.check_ratio("gamma_min", self.gamma_min)
    losses.check_ratio("gamma_iar", self.gamma_iar)
    losses.check_ratio("gamma_max", self.gamma_max, allow_none=True)
    if self.gamma_max == 1:
      raise ValueError("gamma_max = 1 selects zero elements for MaxAR; use "
                       "None to switch MaxAR off")
    if any(w < 0 for w in self.weights) or self.concordance_weight < 0:
      raise ValueError(f"LAP loss weights must be >= 0; got {self.weights} "
                       f"and concordance {self.concordance_weight}")
    if num_laps is not None and len(self.weights) not in (1, num_laps):
      raise ValueError(f"weights has {len(self.weights)} values for "
                       f"{num_laps} LAPs; give one or one per LAP")

  def __call__(self, maps: Sequence[jax.Array],
               disc_maps: Sequence[jax.Array] | None, labels: jax.Array,
               masks: jax.Array | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``(loss, parts)`` for maps ``[B, h_l, w_l, M]`` given shallow to deep.

    ``masks [B, H, W]`` bool (box masks) are needed for expert supervision.
    """
    dcs = self.dcs
    self.validate(len(maps))
    weights = (self.weights * len(maps) if len(self.weights) == 1
               else self.weights)
    if self.supervision == "weak":
      refs = losses.reference_maps(maps, disc_maps,
                                   across_laps=self.reference == "sum")
    elif masks is None:
      raise ValueError("expert LAP supervision needs the batch's box masks")
    parts = {}
    total = jnp.zeros(())
    for i, (m, w) in enumerate(zip(maps, weights)):
      if self.supervision == "weak":
        loss, _ = losses.lap_supervision_loss(
            m, labels, dcs, reference=refs[i], gamma_min=self.gamma_min,
            gamma_max=self.gamma_max, gamma_iar=self.gamma_iar)
      else:
        notes = losses.annotation_maps(masks, labels, dcs, m.shape[1:3])
        loss, _ = losses.expert_loss(m, labels, dcs, notes,
                                     gamma_iar=self.gamma_iar)
      parts[f"lap{i + 1}"] = loss
      total = total + w * loss
    if disc_maps is not None:
      parts["lap_disc"] = sum(losses.discriminative_loss(d, labels, dcs)
                              for d in disc_maps)
      total = total + parts["lap_disc"]
    if self.concordance_weight > 0 and len(maps) > 1:
      parts["lap_concordance"] = losses.concordance_loss(maps)
      total = total + self.concordance_weight * parts["lap_concordance"]
    parts["lap"] = total
    return total, parts
