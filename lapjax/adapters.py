"""Classifiers from Flax NNX modules: ``from_nnx``, the NNX ``from_flax``.

An NNX module is a graph of Python objects holding its variables.
``from_nnx`` splits it once (``nnx.split``: a static graph definition and a
state of arrays) and, at every call, merges a fresh copy (``nnx.merge``),
switches the copy to inference mode (``nnx.view`` with
``deterministic=True, use_running_average=True``: Dropout off, BatchNorm on
its running statistics, so batch items stay independent) and replaces each
tapped submodule *of the copy* by a thin wrapper that records its output
and adds ``deltas[name]`` to it. The user's module is never changed, no
class is patched, and the function is pure and jittable: the same contract
as ``lapjax.from_flax`` for linen modules.

Layer names are submodule paths joined by ``'/'`` as ``nnx.iter_modules``
gives them: ``'block2'``, ``'blocks/0'`` (an ``nnx.List`` item),
``'block2/conv'``.

Transformers: with a ``TokenLayout`` (``tokens=``, or the model's
``token_layout()`` method) token taps ``[B, T, D]`` are returned, and take
``deltas``, as ``[B, h, w, D]`` patch grids, as in ``from_flax``.

Any other framework fits through the plain-function route: a
``lapjax.Classifier(apply, layers)`` whose ``apply(x, deltas=None)`` returns
``(logits, {layer: array})`` (``docs/adapters.md`` has an Equinox example).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lapjax.classifier import (
  AUTO,
  Classifier,
  check_deltas,
  check_images,
  perturb_tap,
  resolve_layers,
  resolve_tokens,
  unknown_layer_error,
)
from lapjax.tokens import TokenLayout

Path = tuple[Any, ...]


def _name(path: Path) -> str:
  return "/".join(str(p) for p in path)


class _Tap:
  """Stands in for a submodule of the merged copy: records, perturbs."""

  def __init__(self, inner: Any, name: str, run: _Run):
    self._inner, self._name, self._run = inner, name, run

  def __getattr__(self, attr: str) -> Any:
    return getattr(self._inner, attr)

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    out = self._inner(*args, **kwargs)
    return self._run.record(self._name, out)


class _Run:
  """What one forward pass records: shapes in call order, tapped outputs."""

  def __init__(self, wanted: frozenset[str],
               deltas: Mapping[str, jax.Array],
               tokens: TokenLayout | None = None,
               image_hw: tuple[int, int] = (0, 0)):
    self.wanted, self.deltas = wanted, deltas
    self.tokens, self.image_hw = tokens, image_hw
    self.available: dict[str, tuple[int, ...]] = {}
    self.features: dict[str, jax.Array] = {}

  def record(self, name: str, out: Any) -> Any:
    if not isinstance(out, jax.Array):
      return out
    if name in self.available and name in self.wanted:
      raise ValueError(
          f"layer {name!r} is called more than once in one forward pass, so "
          "a tap on it is ambiguous; tap a submodule that runs once")
    self.available[name] = out.shape
    if name in self.wanted:
      out, self.features[name] = perturb_tap(
          name, out, self.deltas.get(name), self.tokens, self.image_hw)
    return out


def _set_child(parent: Any, key: Any, value: Any) -> None:
  if isinstance(key, str) and hasattr(parent, key):
    setattr(parent, key, value)
  else:
    parent[key] = value                   # nnx.List / nnx.Dict items


def _run(graphdef: Any, state: Any, x: jax.Array, run: _Run,
         tap_all: bool, call_kwargs: Mapping[str, Any]) -> jax.Array:
  model = nnx.merge(graphdef, state)
  model = nnx.view(model, deterministic=True, use_running_average=True,
                   raise_if_not_found=False)
  modules = dict(nnx.iter_modules(model))
  for path, module in modules.items():
    if not path or not callable(module):
      continue
    name = _name(path)
    if tap_all or name in run.wanted:
      _set_child(modules[path[:-1]], path[-1], _Tap(module, name, run))
  return model(x, **call_kwargs)


def available_nnx_layers(model: nnx.Module, input_shape: Sequence[int],
                         **call_kwargs: Any) -> dict[str, tuple[int, ...]]:
  """Every tappable submodule path of an NNX ``model``, in call order.

  Args:
    model: the NNX module (unchanged).
    input_shape: ``(H, W, C)`` of one image.
    **call_kwargs: extra keyword arguments of ``model(x, ...)``.

  Returns:
    ``{path: output shape}`` for a batch of one, shallow to deep (computed
    with ``jax.eval_shape``: nothing runs).
  """
  graphdef, state = nnx.split(model)
  shapes: dict[str, tuple[int, ...]] = {}

  def trace(x):
    run = _Run(frozenset(), {})
    out = _run(graphdef, state, x, run, True, call_kwargs)
    shapes.update(run.available)
    return out

  jax.eval_shape(trace, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
  return shapes


def from_nnx(model: nnx.Module, *, layers: Sequence[str] | None = None,
             input_shape: Sequence[int] | None = None,
             tokens: TokenLayout | None | str = AUTO,
             **call_kwargs: Any) -> Classifier:
  """Builds a ``Classifier`` from a Flax NNX module, unchanged.

  The model's current state is captured now (``nnx.split``); later changes
  to ``model`` (training steps) need a new ``from_nnx``. Every call runs a
  merged copy in inference mode (Dropout deterministic, BatchNorm on its
  running statistics).

  Args:
    model: the NNX module; ``model(x, **call_kwargs)`` returns logits
      ``[B, K]`` for images ``x [B, H, W, C]``.
    layers: submodule paths to tap, e.g. ``('block2', 'blocks/0')``.
      ``None`` taps every direct child with a 4-D output (needs
      ``input_shape``).
    input_shape: ``(H, W, C)`` of one image; when given, layer names are
      checked now rather than at the first call, and sorted shallow to deep.
    tokens: a transformer's ``TokenLayout``; ``'auto'`` reads the model's
      ``token_layout()`` if it has one; None keeps token taps as tokens
      (``from_flax``).
    **call_kwargs: extra keyword arguments of ``model(x, ...)``.

  Returns:
    A ``Classifier``: ``apply(x, deltas=None) -> (logits, {layer: array})``,
    pure and jittable; ``deltas[name]`` is added to that layer's output.

  Raises:
    ValueError: unknown layer names (the message lists the available ones
      with their output shapes), or ``layers=None`` without
      ``input_shape``.
  """
  tokens = resolve_tokens(model, tokens)
  avail = (None if input_shape is None else
           available_nnx_layers(model, input_shape, **call_kwargs))
  layers = resolve_layers(layers, avail, "from_nnx", tokens=tokens,
                          image_hw=None if input_shape is None
                          else tuple(input_shape[:2]))
  wanted = frozenset(layers)
  graphdef, state = nnx.split(model)

  def apply(x: jax.Array, deltas: Mapping[str, jax.Array] | None = None
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
    check_images(x)
    deltas = check_deltas(deltas, layers)
    run = _Run(wanted, deltas, tokens, x.shape[1:3])
    logits = _run(graphdef, state, x, run, False, call_kwargs)
    missing = [n for n in layers if n not in run.features]
    if missing:
      # Trace again with every submodule recorded, for the message.
      everything = _Run(frozenset(), {})
      _run(graphdef, state, x, everything, True, call_kwargs)
      raise unknown_layer_error(missing, everything.available)
    return logits, {n: run.features[n] for n in layers}

  return Classifier(apply=apply, layers=layers, tokens=tokens)
