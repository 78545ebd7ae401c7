"""Cascading model-parameter randomisation (Adebayo et al., 2018).

Layers are randomised cumulatively from the output to the input; after each
step the method's maps are compared with the maps of the trained model. A
method that explains the model decorrelates fast; one that explains the
input (an edge detector) does not.

Choices, explicit (PITFALLS.md 15-16):

* The order is an explicit list of top-level parameter paths, output first;
  the default is the model's own call order reversed (``'head'``, then the
  deepest block, ...), not registration order.
* Step ``i`` re-initialises layer ``i`` with the module's own initialisers,
  drawn from ``jax.random.fold_in(key, i)``: a different key per layer.
* BatchNorm running statistics of randomised layers are kept
  (``batch_stats='keep'``, default) or reset to mean 0, variance 1
  (``'reset'``, what PyTorch's ``reset_parameters`` does).
* Similarities (Spearman, Pearson, SSIM) are computed per image on the maps
  after ``preprocess`` (``'none'``, ``'abs'``, ``'abs_minmax'``); the
  returned dict records every choice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lapjax.attribution import postprocess
from lapjax.classifier import available_layers, from_flax


def _ranks(v):
  """1-based average ranks of a vector (ties share their mean rank)."""
  order = jnp.argsort(v, stable=True)
  s = v[order]
  first = jnp.searchsorted(s, s, side="left")
  last = jnp.searchsorted(s, s, side="right")
  return jnp.zeros_like(s).at[order].set((first + last + 1) / 2.0)


def pearson(a: jax.Array, b: jax.Array) -> jax.Array:
  """Per-map Pearson correlation of ``[B, H, W]`` maps (NaN if constant)."""
  a = a.reshape(a.shape[0], -1)
  b = b.reshape(b.shape[0], -1)
  # Centred and scaled to a maximum of 1, so that tiny maps (gradients of
  # 1e-12) do not underflow to a zero norm (XLA:CPU flushes denormals).
  a, b = (_unit_max(v - v.mean(-1, keepdims=True)) for v in (a, b))
  den = jnp.sqrt((a * a).sum(-1)) * jnp.sqrt((b * b).sum(-1))
  return jnp.where(den > 0, (a * b).sum(-1) / jnp.where(den > 0, den, 1.0),
                   jnp.nan)


def _unit_max(v: jax.Array) -> jax.Array:
  """``[B, N]`` rows divided by their largest absolute value (0 stays 0)."""
  m = jnp.abs(v).max(-1, keepdims=True)
  return v / jnp.where(m > 0, m, 1.0)


def spearman(a: jax.Array, b: jax.Array) -> jax.Array:
  """Per-map Spearman rank correlation (average ranks for ties)."""
  ra = jax.vmap(_ranks)(a.reshape(a.shape[0], -1))
  rb = jax.vmap(_ranks)(b.reshape(b.shape[0], -1))
  return pearson(ra, rb)


def ssim(a: jax.Array, b: jax.Array, *, window: int = 7) -> jax.Array:
  """Per-map SSIM (Wang et al. 2004) of min-max normalised maps, uniform
  ``window x window`` windows, constants ``(0.01, 0.03)`` for range 1."""
  a = postprocess.normalize_minmax(a)
  b = postprocess.normalize_minmax(b)
  k = jnp.ones((1, 1, window, window)) / window**2

  def filt(z):
    return jax.lax.conv_general_dilated(z[:, None], k, (1, 1), "VALID")[:, 0]

  mu_a, mu_b = filt(a), filt(b)
  va = filt(a * a) - mu_a**2
  vb = filt(b * b) - mu_b**2
  cov = filt(a * b) - mu_a * mu_b
  c1, c2 = 0.01**2, 0.03**2
  s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)
       / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2)))
  return s.mean(axis=(1, 2))


SIMILARITIES = {"spearman": spearman, "pearson": pearson, "ssim": ssim}


def default_layer_order(module: nn.Module, variables,
                        input_shape: Sequence[int]) -> list[str]:
  """Top-level parameter paths, output first (reverse call order)."""
  calls = [n for n in available_layers(module, variables, input_shape)
           if "/" not in n and n in variables["params"]]
  return calls[::-1]


def cascading_randomization(module: nn.Module, variables, x: jax.Array,
                            targets, method: Callable[..., jax.Array], *,
                            key: jax.Array,
                            layers: Sequence[str] | None = None,
                            batch_stats: str = "keep",
                            preprocess: str = "none",
                            similarities: Sequence[str] = ("spearman",
                                                           "pearson",
                                                           "ssim"),
                            classifier_layers: Sequence[str] = (),
                            **method_kwargs) -> dict:
  """Similarity of maps to the trained model's as layers are randomised.

  Args:
    module: the Flax model.
    variables: its trained variables.
    x: ``[B, H, W, C]``.
    targets: targets of ``method``.
    method: a lapjax attribution method returning ``[B, H, W]``, called as
      ``method(classifier, x, targets, **method_kwargs)`` with a classifier
      built from ``module`` (for guided backprop pass
      ``module.clone(act=guided_relu)``).
    key: randomisation key; layer ``i`` uses ``fold_in(key, i)``.
    layers: top-level parameter paths, output first (default: reverse call
      order).
    batch_stats: ``'keep'`` or ``'reset'`` for randomised layers.
    preprocess: ``'none'``, ``'abs'`` or ``'abs_minmax'`` before comparing.
    similarities: names in ``SIMILARITIES``.
    classifier_layers: layers the classifier must tap (e.g. the CAM layer).
    **method_kwargs: options of ``method``.

  Returns:
    ``{'layers': [...], 'similarity': {name: [steps + 1, B]}, 'config':
    {...}}``; step 0 compares the trained model with itself.
  """
  x = jnp.asarray(x)
  layers = list(layers or default_layer_order(module, variables,
                                              x.shape[1:]))
  unknown = [n for n in layers if n not in variables["params"]]
  if unknown:
    raise ValueError(f"layers {unknown} have no parameters; parameter paths "
                     f"are {list(variables['params'])}")
  if batch_stats not in ("keep", "reset"):
    raise ValueError(f"batch_stats must be 'keep' or 'reset'; got "
                     f"{batch_stats!r}")
  bad = [s for s in similarities if s not in SIMILARITIES]
  if bad:
    raise ValueError(f"unknown similarities {bad}; use {list(SIMILARITIES)}")

  def prep(m):
    if preprocess == "none":
      return m
    if preprocess == "abs":
      return jnp.abs(m)
    if preprocess == "abs_minmax":
      return postprocess.normalize_minmax(jnp.abs(m))
    raise ValueError(f"preprocess must be 'none', 'abs' or 'abs_minmax'; "
                     f"got {preprocess!r}")

  @jax.jit     # one program for every randomisation step
  def maps_of(v):
    clf = from_flax(module, v, layers=list(classifier_layers))
    return prep(method(clf, x, targets, **method_kwargs))

  reference = maps_of(variables)
  params = dict(variables["params"])
  stats = dict(variables.get("batch_stats", {}))
  out = {s: [SIMILARITIES[s](reference, reference)] for s in similarities}
  init = jax.jit(module.init)      # one program for every draw
  for i, name in enumerate(layers):
    fresh = init(jax.random.fold_in(key, i), x[:1])
    params[name] = fresh["params"][name]
    if batch_stats == "reset" and name in stats:
      stats[name] = fresh["batch_stats"][name]
    v = {"params": params, **({"batch_stats": stats} if stats else {})}
    maps = maps_of(v)
    for s in similarities:
      out[s].append(SIMILARITIES[s](reference, maps))
  return {"layers": layers,
          "similarity": {s: jnp.stack(v) for s, v in out.items()},
          "config": {"batch_stats": batch_stats, "preprocess": preprocess,
                     "similarities": list(similarities),
                     "order": "output to input, cumulative",
                     "keys": "fold_in(key, layer index)"}}
