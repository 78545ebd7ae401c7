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
import jax.numpy as jnp
from flax import traverse_util

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
    aggregation: ``A`` of Eq. 7 (``'sum'``, ``'max'``, ``'mean'``, or the
      trainable ``'weighted'``, see ``lapjax.lap.pool``).
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


def check_places(spec: LAPSpec, found: Sequence[str],
                 available: Sequence[str] | None = None) -> None:
  """Every place of ``spec`` must have become a LAP-Pool in the model.

  ``available``: the model's pool and stride positions (``pool_places``),
  listed in the error when given.
  """
  missing = [p for p in spec.places if p not in found]
  if missing:
    where = (f"its pool and stride positions are {list(available)}"
             if available is not None
             else f"it built LAP-Pools at {list(found)}")
    raise ValueError(f"LAP places {missing} are not pooling places of this "
                     f"model; {where}")


def pool_places(module: nn.Module, input_shape: Sequence[int]
                ) -> tuple[str, ...]:
  """The places where ``module`` can take a LAP-Pool, shallow to deep.

  Every name the model passes to its ``pool`` factory: its max and global
  pools and, where the model supports it, its strided convolutions
  (ResNet's ``stage2_pool`` .. ``stage4_pool``). Traced with shapes only.

  Args:
    module: a lapjax model with a ``pool`` attribute.
    input_shape: ``(H, W, C)`` of one image.

  Raises:
    ValueError: the model has no ``pool`` attribute.
  """
  if not hasattr(module, "pool"):
    raise ValueError(f"{type(module).__name__} takes no LAP-Pools (it has "
                     "no pool factory); use detached LAPs on its layers")
  seen: list[str] = []

  def recording_pool(name: str, **kwargs: Any) -> nn.Module | None:
    seen.append(name)
    return standard_pool(name, **kwargs)

  probe = module.clone(pool=recording_pool)
  jax.eval_shape(lambda: probe.init(jax.random.key(0),
                                    jnp.zeros((1, *input_shape))))
  return tuple(dict.fromkeys(seen))


def extend_pretrained(module: nn.Module, variables: Mapping[str, Any],
                      spec: LAPSpec | None = None, *,
                      detached: Sequence[str] = (),
                      num_dcs: int | None = None,
                      head_widths: tuple[int, ...] = (64,),
                      discriminative: bool = True,
                      input_shape: Sequence[int],
                      key: jax.Array) -> tuple[nn.Module, dict[str, Any]]:
  """A pretrained model with LAPs added, its own weights unchanged.

  ::

    module, variables = lapjax.load_pretrained("resnet50", "resnet50.pth")
    spec = lap.LAPSpec(("stem_pool", "stage3_pool", "stage4_pool",
                        "global_pool"), num_dcs=1)
    lap_module, lap_variables = lap.extend_pretrained(
        module, variables, spec, input_shape=(224, 224, 3),
        key=jax.random.key(0))

  LAP-Pools at ``spec.places`` (``module.clone(pool=spec)``) and detached
  LAPs on the ``detached`` layers (a ``DetachedLAPModel`` around it, the
  backbone's variables then under ``backbone``). Every variable of
  ``variables`` is copied into the new model at its own path; only the
  LAP parameters (heads, ``alpha``, ``dc_logits``) are initialised from
  ``key``. A LAP-Pool replacing a strided convolution keeps the
  convolution's kernel (only its stride moves to the pool).

  Args:
    module: the zoo model (e.g. from ``lapjax.load_pretrained``).
    variables: its variables.
    spec: the LAP-Pools; None for detached LAPs only.
    detached: layers (``lapjax.available_layers`` names) to explain with
      detached LAPs, shallow to deep.
    num_dcs: ``M`` of the detached LAPs (default ``spec.num_dcs``).
    head_widths: hidden widths of the detached heads.
    discriminative: also build the detached discriminative heads.
    input_shape: ``(H, W, C)`` of one image, to build the model.
    key: PRNG key of the new LAP parameters.

  Returns:
    ``(lap_module, lap_variables)``.

  Raises:
    ValueError: no LAPs asked for; a place the model has no pool or
      stride at (the error lists the ones it has); a detached layer it
      lacks (the error lists its layers); a variable that does not fit the
      extended model.
  """
  if spec is None and not detached:
    raise ValueError("extend_pretrained needs a LAPSpec, detached layers, "
                     "or both")
  lap_module = module
  if spec is not None:
    available = pool_places(module, input_shape)
    check_places(spec, [p for p in spec.places if p in available],
                 available)
    lap_module = module.clone(pool=spec)
  if detached:
    from lapjax.classifier import available_layers

    layers = available_layers(module, variables, input_shape)
    missing = [n for n in detached if n not in layers]
    if missing:
      raise ValueError(f"detached LAP layers {missing} are not layers of "
                       f"{type(module).__name__}; its layers are "
                       f"{list(layers)}")
    m = num_dcs if num_dcs is not None else (spec.num_dcs if spec else None)
    if m is None:
      raise ValueError("detached LAPs without a LAPSpec need num_dcs")
    lap_module = DetachedLAPModel(lap_module, tuple(detached), m,
                                  head_widths=tuple(head_widths),
                                  discriminative=discriminative)
  fresh = jax.jit(lap_module.init)(key, jnp.zeros((1, *input_shape)))
  prefix = ("backbone",) if detached else ()
  out = {}
  for collection, tree in fresh.items():
    if collection == "lap":
      continue
    flat = traverse_util.flatten_dict(tree)
    for path, value in traverse_util.flatten_dict(
        variables.get(collection, {})).items():
      target = prefix + path
      if target not in flat or flat[target].shape != jnp.shape(value):
        raise ValueError(
            f"pretrained variable {collection}/{'/'.join(path)} "
            f"{jnp.shape(value)} has no place in the LAP-extended model "
            f"(there: {flat[target].shape if target in flat else 'absent'})")
      flat[target] = value
    out[collection] = traverse_util.unflatten_dict(flat)
  lost = sorted(set(variables) - set(out))
  if lost:
    raise ValueError(f"collections {lost} of the pretrained variables have "
                     "no place in the LAP-extended model")
  return lap_module, out


class DetachedLAPModel(nn.Module):
  """A frozen backbone with detached LAPs on some of its layers.

  ``__call__(x, train)`` returns the backbone's logits (the backbone always
  runs in inference mode, so its BatchNorm statistics never change). The
  LAP heads are ``laps/<layer>`` (``/`` in layer names becomes ``_``) and
  see ``stop_gradient`` of the layer outputs. Each head runs as its layer
  is reached (its layer's first call), so a backbone with LAP-Pools (the
  paper's LAP-InceptionV3: a LAP-Pool at ``global_pool``, a detached LAP on
  ``Mixed_7a``) records its maps in depth order; LAP-Pools and detached
  LAPs that interleave in depth are refused.

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
    laps = _Heads(self.num_dcs, self.head_widths, self.discriminative,
                  name="laps")
    tokens = module_token_layout(self.backbone)
    image_hw = x.shape[1:3]
    done: list[str] = []
    events: list[tuple[str, str]] = []     # (kind, path), in call order

    def explain(path: str, out: jax.Array) -> None:
      if tokens is not None and out.ndim == 3:
        out = tokens_to_grid(out, tap_layout(tokens, out.shape[1], image_hw),
                             image_hw, name=f"detached LAP layer {path!r}")
      laps(path, jax.lax.stop_gradient(out))

    def tap(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if (context.method_name != "__call__"
          or context.module.path[:1] != ("backbone",)):
        return out
      path = "/".join(context.module.path[1:])
      if isinstance(context.module, LAPPool):
        events.append(("plugged", path))
      elif path in self.layers and path not in done:
        # The heads run as the layer is reached, so that the 'lap'
        # collection holds the maps in depth order.
        done.append(path)
        events.append(("detached", path))
        explain(path, out)
      return out

    with nn.intercept_methods(tap):
      logits = self.backbone(x, train=False)
    missing = [n for n in self.layers if n not in done]
    if missing:
      raise ValueError(f"detached LAP layers {missing} are not layers of "
                       "the backbone (see lapjax.available_layers)")
    kinds = [k for i, (k, _) in enumerate(events)
             if i == 0 or events[i - 1][0] != k]
    if len(kinds) > 2:
      raise ValueError(
          "the backbone's LAP-Pools and the detached LAPs interleave in "
          f"depth ({[p for _, p in events]}); the 'lap' collection keeps "
          "each group together, so its maps would be out of depth order. "
          "Put the detached LAPs all above or all below the LAP-Pools")
    return logits


class _Heads(nn.Module):
  """The detached heads ``<layer>`` (and ``<layer>_disc``), one layer per
  call."""
  num_dcs: int
  head_widths: tuple[int, ...]
  discriminative: bool

  @nn.compact
  def __call__(self, layer: str, features: jax.Array) -> None:
    name = layer.replace("/", "_")
    self.sow("lap", "maps", LAPHead(self.num_dcs, self.head_widths,
                                    name=name)(features))
    if self.discriminative:
      self.sow("lap", "disc_maps", LAPHead(
          self.num_dcs, self.head_widths, name=f"{name}_disc")(features))


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
