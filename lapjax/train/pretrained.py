"""Fine-tuning a pretrained zoo backbone: ``config.pretrained``.

A zoo backbone expects images normalised with its card's mean and std;
lapjax's data, evaluation and attribution methods give images in [0, 1].
``Normalized`` puts the card's normalisation inside the model, so everything
downstream keeps seeing [0, 1] images (a 'zero' baseline stays black) while
the backbone sees what it was trained on:

    model(x) = backbone((x - mean) / std),   x [B, H, W, 3] in [0, 1].

The backbone shares the wrapper's scope: its parameters, BatchNorm
statistics and ``from_flax`` taps keep their own names (``stage4``,
``head``), so ``config.trainable``, ``config.evaluation.layer`` and the
checkpoint's variables are those of the bare backbone.

``init_from_pretrained`` starts a fresh run from the checkpoint at
``config.pretrained.path`` (``lapjax.models.load_pretrained``); a head of
another class count is re-initialised, with the warning ``load_pretrained``
logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from lapjax.models import get_card, load_pretrained
from lapjax.models.layers import Activation, inject_backbone_act
from lapjax.train.state import TrainState


class Normalized(nn.Module):
  """``backbone((x - mean) / std)``: a backbone fed images in [0, 1].

  Attributes:
    backbone: the zoo model (its variables and taps keep their names).
    mean, std: per-channel statistics of the backbone's training images
      (the card's ``mean`` and ``std``), each of length 3.
    act: an activation to inject into the backbone (None: its own), so that
      ``clone(act=guided_relu)`` works as for every lapjax model.
  """
  backbone: nn.Module
  mean: Sequence[float]
  std: Sequence[float]
  act: Activation | None = None

  def __post_init__(self):
    inject_backbone_act(self)
    super().__post_init__()

  def setup(self):
    nn.share_scope(self, self.backbone)

  def __call__(self, x: jax.Array, **kwargs: Any) -> jax.Array:
    """Logits ``[B, K]`` of images ``x [B, H, W, 3]`` in [0, 1]; ``kwargs``
    (e.g. ``train``) go to the backbone."""
    mean = jnp.asarray(self.mean, x.dtype)
    std = jnp.asarray(self.std, x.dtype)
    return self.backbone((x - mean) / std, **kwargs)


def normalized(config: ml_collections.ConfigDict,
               backbone: nn.Module) -> Normalized:
  """``backbone`` behind the normalisation of ``config.model.name``'s
  card."""
  card = get_card(config.model.name)
  return Normalized(backbone, tuple(card.mean), tuple(card.std))


def init_from_pretrained(state: TrainState, tx: optax.GradientTransformation,
                         config: ml_collections.ConfigDict, *,
                         num_classes: int) -> TrainState:
  """``state`` with the variables of ``config.pretrained.path``.

  The checkpoint is read by ``lapjax.models.load_pretrained`` for the model
  ``config.model.name`` with ``config.model.kwargs`` (a head of another
  class count keeps its fresh initialisation from ``state``'s key); the
  optimiser state is re-initialised.

  Raises:
    FileNotFoundError: no file at ``config.pretrained.path``.
    ValueError: a checkpoint of another model, size or layout
      (``WeightMismatchError`` lists the names and shapes), or variables
      that do not fit the training model.
  """
  p = config.pretrained
  try:
    _, variables = load_pretrained(
        config.model.name, p.path, num_classes=num_classes, layout=p.layout,
        key=jax.random.fold_in(jax.random.key(config.seed), 1),
        **dict(config.model.kwargs))
  except FileNotFoundError as e:
    raise FileNotFoundError(f"config.pretrained.path: {e}") from None
  params = jax.tree.map(jnp.asarray, dict(variables["params"]))
  stats = jax.tree.map(jnp.asarray, dict(variables.get("batch_stats", {})))
  for name, new, old in (("params", params, state.params),
                         ("batch_stats", stats, state.batch_stats)):
    if (jax.tree.structure(new) != jax.tree.structure(old)
        or jax.tree.map(jnp.shape, new) != jax.tree.map(jnp.shape, old)):
      raise ValueError(
          f"config.pretrained.path={p.path}: its {name} do not fit the "
          f"model {config.model.name!r} with kwargs "
          f"{dict(config.model.kwargs)} at the data's image size")
  return state.replace(params=params, batch_stats=stats,
                       opt_state=tx.init(params))
