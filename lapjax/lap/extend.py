"""LAP-extended models: plugged-in LAP-Pools and detached LAPs (paper 000).

* **Plugged in** (Fig. 2e): ``LAPSpec`` is a pooling factory that lapjax
  models (``SmallCNN``, ``ResNet``) call at every pooling place; at the
  places it names it builds a ``LAPPool`` instead, so the LAP maps take part
  in the forward pass::

    model = SmallCNN(num_classes=4, pool=LAPSpec(("pool3", "global_pool"), 3))

  The paper's shallow-to-deep 4-LAP setting is every pool of the small CNN
  (``pool1 pool2 pool3 global_pool``); its 2-LAP setting replaces the last
  local pool and the global pool.
* **Detached** (Fig. 2d, post-hoc): ``DetachedLAPModel`` wraps a trained
  backbone unchanged (always in inference mode) and runs one ``LAPHead``
  (plus a discriminative one) on the stop-gradient features of chosen
  layers. Its logits are the backbone's, bit for bit; train it with the
  backbone frozen (``config.trainable = ('laps',)``). A transformer
  backbone's token layers (``block2``) are read as their patch grids
  ``[B, h, w, D]`` (``lapjax.tokens``), so its LAP maps lie on the image.

Both record maps in the ``'lap'`` collection in call order (shallow to
deep); ``lap_outputs`` reads them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax

from lapjax.lap.head import LAPHead
from lapjax.lap.pool import AGGREGATIONS, LAPPool
from lapjax.models.layers import Activation, inject_backbone_act, standard_pool
from lapjax.tokens import module_token_layout, tap_layout, tokens_to_grid


@dataclasses.dataclass(frozen=True)
class LAPSpec:
  """Where a model gets LAP-Pools, and how they are built.

  Attributes:
    places: pooling places to replace (e.g. ``('pool3', 'global_pool')``).
    num_dcs: ``M``, DCs of the DC system.
    head_widths: hidden widths of each LAP head.
    aggregation: ``A`` of Eq. 7 (``'sum'``, ``'max'``, ``'mean'``).
    alpha_init: initial LAP-Pool ``alpha``.
    eps: LAP-Pool weight floor.
    discriminative: also build the discriminative scoring modules.
  """
  places: tuple[str, ...]
  num_dcs: int
  head_widths: tuple[int, ...] = (64,)
  aggregation: str = "sum"
  alpha_init: float = 2.0
  eps: float = 1e-4
  discriminative: bool = True

  def __post_init__(self):
    if not self.places:
      raise ValueError("LAPSpec.places must name at least one pooling place")
    if self.num_dcs < 1:
      raise ValueError(f"num_dcs must be >= 1; got {self.num_dcs}")
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(f"aggregation must be one of {AGGREGATIONS}; got "
                       f"{self.aggregation!r}")
    if self.alpha_init < 0 or self.eps <= 0:
      raise ValueError(f"alpha_init must be >= 0 and eps > 0; got "
                       f"{self.alpha_init}, {self.eps}")

  def __call__(self, name: str, *, window: int | None,
               strides: int | None = None, padding: str = "VALID",
               optional: bool = False) -> nn.Module | None:
    if name not in self.places:
      return standard_pool(name, window=window, strides=strides,
                           padding=padding, optional=optional)
    return LAPPool(self.num_dcs, window=window, strides=strides,
                   padding=padding, head_widths=self.head_widths,
                   aggregation=self.aggregation, alpha_init=self.alpha_init,
                   eps=self.eps, discriminative=self.discriminative,
                   name=name)

  def map_layers(self) -> tuple[str, ...]:
    """``from_flax`` taps of the LAP maps, in ``places`` order."""
    return plugged_map_layers(self.places)


def plugged_map_layers(places: Sequence[str]) -> tuple[str, ...]:
  """``from_flax`` taps of the maps of LAP-Pools at ``places``."""
  return tuple(f"{p}/head" for p in places)


def check_places(spec: LAPSpec, found: Sequence[str]) -> None:
  """Every place of ``spec`` must have become a LAP-Pool in the model."""
  missing = [p for p in spec.places if p not in found]
  if missing:
    raise ValueError(f"LAP places {missing} are not pooling places of this "
                     f"model; it built LAP-Pools at {list(found)}")


class DetachedLAPModel(nn.Module):
  """A frozen backbone with detached LAPs on some of its layers.

  ``__call__(x, train)`` returns the backbone's logits (the backbone always
  runs in inference mode, so its BatchNorm statistics never change). The
  LAP heads are ``laps/<layer>`` (``/`` in layer names becomes ``_``) and
  see ``stop_gradient`` of the layer outputs.

  Attributes:
    backbone: the trained model (its parameters live under ``backbone``).
    layers: backbone layers to explain, shallow to deep.
    num_dcs: ``M``.
    head_widths: hidden widths of each LAP head.
    discriminative: also build the discriminative scoring modules.
    act: an activation to inject into the backbone (None: its own), so
      that ``clone(act=guided_relu)`` works as for every lapjax model.
  """
  backbone: nn.Module
  layers: tuple[str, ...]
  num_dcs: int
  head_widths: tuple[int, ...] = (64,)
  discriminative: bool = True
  act: Activation | None = None

  def __post_init__(self):
    inject_backbone_act(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    features: dict[str, jax.Array] = {}

    def tap(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      path = "/".join(context.module.path[1:])
      if (context.method_name == "__call__" and path in self.layers
          and context.module.path[:1] == ("backbone",)):
        features[path] = out
      return out

    with nn.intercept_methods(tap):
      logits = self.backbone(x, train=False)
    missing = [n for n in self.layers if n not in features]
    if missing:
      raise ValueError(f"detached LAP layers {missing} are not layers of "
                       "the backbone (see lapjax.available_layers)")
    tokens = module_token_layout(self.backbone)
    if tokens is not None:
      image_hw = x.shape[1:3]
      features = {
          n: tokens_to_grid(f, tap_layout(tokens, f.shape[1], image_hw),
                            image_hw, name=f"detached LAP layer {n!r}")
          if f.ndim == 3 else f for n, f in features.items()}
    laps = _Heads(self.layers, self.num_dcs, self.head_widths,
                  self.discriminative, name="laps")
    laps({n: jax.lax.stop_gradient(features[n]) for n in self.layers})
    return logits


class _Heads(nn.Module):
  layers: tuple[str, ...]
  num_dcs: int
  head_widths: tuple[int, ...]
  discriminative: bool

  @nn.compact
  def __call__(self, features: Mapping[str, jax.Array]) -> None:
    for layer in self.layers:
      name = layer.replace("/", "_")
      maps = LAPHead(self.num_dcs, self.head_widths, name=name)(
          features[layer])
      self.sow("lap", "maps", maps)
      if self.discriminative:
        self.sow("lap", "disc_maps", LAPHead(
            self.num_dcs, self.head_widths, name=f"{name}_disc")(
                features[layer]))


def detached_map_layers(layers: Sequence[str]) -> tuple[str, ...]:
  """``from_flax`` taps of a ``DetachedLAPModel``'s maps."""
  return tuple(f"laps/{n.replace('/', '_')}" for n in layers)


def lap_outputs(collection: Mapping[str, Any]
                ) -> tuple[list[jax.Array], list[jax.Array] | None]:
  """``(maps, disc_maps)`` lists, shallow to deep, from the ``'lap'``
  collection of an apply with ``mutable=['lap']`` (None without
  discriminative modules)."""
  maps, disc = [], []

  def walk(node):
    if "maps" in node:
      maps.extend(node["maps"])
      disc.extend(node.get("disc_maps", ()))
    for key, value in node.items():
      if key not in ("maps", "disc_maps"):
        walk(value)

  walk(collection)
  if not maps:
    raise ValueError("the model recorded no LAP maps: is it LAP-extended?")
  return maps, (disc if len(disc) == len(maps) else None)
