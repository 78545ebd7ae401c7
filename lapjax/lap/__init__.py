"""LAP: Local Attention Perception (paper 000).

Heads (``LAPHead``), LAP-Pool (``LAPPool``), DC systems (``dcs``), the
supervision losses (``losses``), depth aggregation (``aggregate_depth``),
plugged-in and detached models (``LAPSpec``, ``DetachedLAPModel``) and the
combined training objective (``LAPObjective``). LAP maps as an attribution
method: ``lapjax.attribution.lap_maps``.
"""

from lapjax.lap import dcs, losses
from lapjax.lap.aggregate import aggregate_depth, check_nesting
from lapjax.lap.dcs import DCSystem, binary, custom, dc_system, one_vs_others
from lapjax.lap.extend import (
  DetachedLAPModel,
  LAPSpec,
  detached_map_layers,
  extend_pretrained,
  lap_outputs,
  pool_places,
)
from lapjax.lap.head import LAPHead
from lapjax.lap.losses import (
  concordance_loss,
  discriminative_loss,
  expert_loss,
  lap_supervision_loss,
  reference_maps,
)
from lapjax.lap.objective import LAPObjective
from lapjax.lap.pool import LAPPool, importance_pool

__all__ = [
    "DCSystem", "DetachedLAPModel", "LAPHead", "LAPObjective", "LAPPool",
    "LAPSpec", "aggregate_depth", "binary", "check_nesting",
    "concordance_loss", "custom", "dc_system", "dcs", "detached_map_layers",
    "discriminative_loss", "expert_loss", "extend_pretrained",
    "importance_pool", "lap_outputs", "lap_supervision_loss", "losses",
    "one_vs_others", "pool_places", "reference_maps",
]
