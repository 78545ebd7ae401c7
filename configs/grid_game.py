r"""Grid pointing game (paper 003) on the clue benchmark.

The classifier is trained on single clue images exactly as in
``configs/default.py``, then explains 2x2 grids of four test images of
distinct classes (``C'`` = the four quadrant classes), every method with and
without Attribution Lens, scored by RA, IoU and F1
(``lapjax/evaluation/grid_game.py`` states the protocol)::

  python train.py --config configs/grid_game.py --workdir runs/grid_game
  python studies/grid_game.py --workdir runs/grid_game

(``runs/default`` from ``make demo`` holds the same model.) Expected, from
docs/studies/grid_game.md (3 sets of 24 grids, trained default model): the lens
raises RA for guided backprop, input x gradient and integrated gradients; see
the table there for every method.
"""

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The default training config; ``arg`` as in ``configs/default.py``."""
  c = default.get_config(arg)
  c.evaluation.grid_games = 24
  c.evaluation.grid_seeds = 3
  return c
