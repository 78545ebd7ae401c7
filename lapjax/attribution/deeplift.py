"""DeepLIFT (rescale rule) and DeepLiftShap, as Captum defines them.

DeepLIFT explains ``f(x) - f(x0)`` against a reference input ``x0``: every
nonlinearity ``y = g(a)`` hands its output's multiplier ``m_y`` down as

.. math:: m_a = m_y \\frac{g(a) - g(a_0)}{a - a_0}

(the rescale rule; the plain derivative ``g'(a) m_y`` where ``|a - a_0| <
eps``), with ``a_0`` the value at the same place when the network runs on
``x0``; linear layers (convolutions, dense layers, BatchNorm in inference
mode, average pooling, residual additions) pass the plain gradient, which
is their exact multiplier. The attribution is ``(x - x0) * m_x``, and it
sums to ``cot . (f(x) - f(x0))`` (summation-to-delta) whenever every
nonlinearity follows the rule.

Same mechanism as LRP (``relevance``), no second model: a classifier built
by ``relevance_classifier`` runs its model with a reference-aware
activation (the model's own ``act``, which every lapjax ReLU model takes as
an attribute, wrapped) and intercepts its max-pooling ``Pool`` modules. A
DeepLIFT call runs the model on ``x0`` once to record the inputs of every
activation and max pool, in call order, then differentiates the model at
``x`` with those recorded references: each activation and max pool is a
``jax.custom_vjp`` whose backward pass is its DeepLIFT rule. Outside a
DeepLIFT call the same classifier is the plain model. Cost: one forward
pass on ``x0`` plus one gradient call (a few elementwise passes more).

Max pooling (Captum's ``maxpool`` rule): ``Delta_out = max(a) - max(a0)``
of a window goes to ``x``'s winner when ``max(a) >= max(a0)``, else to
``x0``'s winner (the first maximum in the window, as PyTorch's pooling
indices), and is divided there by ``a - a0`` (the plain gradient where
``|a - a0| < eps``). LAP-Pools (``lapjax.lap``): their weights act as
gates, the change of the weights is credited to the pooled features
(``lap_pool_rules``; summation-to-delta holds through them).
Nonlinearities that are neither the model's ``act``, a ``Pool`` module
nor a LAP-Pool (a functional ``nn.max_pool``, products such as
squeeze-and-excitation, softmax) pass the plain gradient, as in Captum for
operations it does not hook; summation-to-delta then holds only
approximately.

One difference from Captum: where ``|a - a0| < eps`` in a max pool, Captum
takes the plain gradient of the batch's first image (it indexes
``grad_input[0]``); lapjax takes each image's own. Both equal zero after a
ReLU that is off for ``x`` and ``x0``, the usual case, where the
multiplier is multiplied by ``Delta = 0`` upstream.

References:
  Shrikumar et al., "Learning Important Features Through Propagating
  Activation Differences", ICML 2017.
  Lundberg and Lee, "A Unified Approach to Interpreting Model Predictions",
  NeurIPS 2017 (DeepLiftShap: DeepLIFT averaged over a baseline
  distribution).
  Ancona et al., "Towards better understanding of gradient-based
  attribution methods for Deep Neural Networks", ICLR 2018.
  Kokhlikyan et al., "Captum: A unified and generic model interpretability
  library for PyTorch", arXiv 2020.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lapjax.attribution import core
from lapjax.attribution import lap_pool_rules as lap_rules
from lapjax.attribution.compiled import compiled
from lapjax.classifier import Classifier
from lapjax.models.layers import Pool

EPS = 1e-10           # Captum's: |a - a0| below it takes the plain gradient

_state = threading.local()


def _mode() -> str | None:
  return getattr(_state, "mode", None)


@contextlib.contextmanager
def _tracing():
  """A DeepLIFT trace: records references, then replays them."""
  previous = (_mode(), getattr(_state, "refs", None),
              getattr(_state, "seen", None))
  previous_lap = getattr(_state, "lap", None)
  _state.mode, _state.refs, _state.seen = "record", [], []
  _state.lap = lap_rules.HeadCapture()
  try:
    yield _state
  finally:
    _state.mode, _state.refs, _state.seen = previous
    _state.lap = previous_lap


def note_classifier(rescaled: bool) -> None:
  """Called by a relevance classifier's ``apply``: whether its activations
  follow the rescale rule (it has an injectable ``act``)."""
  if _mode() is not None:
    _state.seen.append(rescaled)


def rules_active() -> bool:
  """Whether a DeepLIFT trace is running (max pools are intercepted)."""
  return _mode() is not None


def _reference(kind: str, a: jax.Array) -> jax.Array | None:
  """Records ``a`` (mode 'record') or returns the recorded reference of
  this call (mode 'replay'); None outside DeepLIFT."""
  mode = _mode()
  if mode == "record":
    _state.refs.append((kind, a))
    return None
  if mode == "replay":
    if _state.index >= len(_state.refs):
      raise ValueError(
          "the model called more activations / max pools on x than on the "
          "baseline; DeepLIFT needs the same computation for both")
    recorded_kind, a0 = _state.refs[_state.index]
    _state.index += 1
    if recorded_kind != kind or a0.shape != a.shape:
      raise ValueError(
          f"call {_state.index} of the model's activations / max pools is "
          f"a {kind} of shape {a.shape} on x but a {recorded_kind} of shape "
          f"{a0.shape} on the baseline; DeepLIFT needs the same computation "
          "for both")
    return a0
  return None


def _safe_divide(num: jax.Array, den: jax.Array, eps: float,
                 fallback: jax.Array) -> jax.Array:
  """``num / den``, or ``fallback`` where ``|den| < eps``."""
  small = jnp.abs(den) < eps
  return jnp.where(small, fallback, num / jnp.where(small, 1, den))


def _rescale_layer(fn: Callable[[jax.Array], jax.Array], eps: float):
  """``fn(a)`` whose backward pass is the rescale multiplier against
  ``a0`` (an elementwise ``fn``)."""

  @jax.custom_vjp
  def layer(a, a0):
    return fn(a)

  def forward(a, a0):
    y = fn(a)
    return y, (a, a0, y)

  def backward(saved, g):
    a, a0, y = saved
    plain = jax.vjp(fn, a)[1](g)[0]
    m = _safe_divide(g * (y - fn(a0)), a - a0, eps, plain)
    return m, jnp.zeros_like(a0)

  layer.defvjp(forward, backward)
  return layer


def rescaled_activation(act: Callable[[jax.Array], jax.Array]
                        ) -> Callable[[jax.Array], jax.Array]:
  """``act``, with DeepLIFT's rescale rule inside a DeepLIFT trace.

  Outside ``deeplift`` / ``deeplift_shap`` it is ``act`` itself (same
  values, same gradient). ``act`` must be elementwise (ReLU, ELU, SiLU,
  sigmoid, tanh, ...).
  """
  def rescaled(a: jax.Array) -> jax.Array:
    a0 = _reference("activation", a)
    if a0 is None:
      return act(a)
    return _rescale_layer(act, _state.eps)(a, jax.lax.stop_gradient(a0))

  rescaled.plain = act
  return rescaled


def _first_winner_vjp(pool: Pool, a: jax.Array, g: jax.Array) -> jax.Array:
  """``g`` of each window sent to its first maximum (PyTorch's pooling
  index); other inputs get zero."""
  s = pool.window
  b, h, w, c = a.shape
  if (pool.strides == s and pool.padding == "VALID" and h % s == 0
      and w % s == 0):
    windows = a.reshape(b, h // s, s, w // s, s, c).transpose(
        0, 1, 3, 5, 2, 4).reshape(b, h // s, w // s, c, s * s)
    one_hot = jax.nn.one_hot(windows.argmax(-1), s * s, dtype=g.dtype)
    routed = (one_hot * g[..., None]).reshape(b, h // s, w // s, c, s, s)
    return routed.transpose(0, 1, 4, 2, 5, 3).reshape(a.shape)
  # Overlapping or padded windows: XLA's select_and_scatter picks the first
  # maximum too.
  padding = (pool.padding if isinstance(pool.padding, str)
             else tuple(tuple(p) for p in pool.padding))
  return jax.vjp(lambda a: nn.max_pool(a, (s, s), (pool.strides,) * 2,
                                       padding=padding), a)[1](g)[0]


def _max_pool_layer(pool: Pool, eps: float):
  """Max pooling whose backward pass is Captum's DeepLIFT ``maxpool``
  rule against ``a0``."""
  plain = pool.clone(parent=None)

  def run(a):
    return plain.apply({}, a)

  @jax.custom_vjp
  def layer(a, a0):
    return run(a)

  def forward(a, a0):
    y = run(a)
    return y, (a, a0, y)

  def backward(saved, g):
    a, a0, y = saved
    y0 = run(a0)
    delta = g * (y - y0)
    ours = y >= y0
    routed = (_first_winner_vjp(plain, a, jnp.where(ours, delta, 0))
              + _first_winner_vjp(plain, a0, jnp.where(ours, 0, delta)))
    m = _safe_divide(routed, a - a0, eps, _first_winner_vjp(plain, a, g))
    return m, jnp.zeros_like(a0)

  layer.defvjp(forward, backward)
  return layer


def rules_interceptor(next_fun, args, kwargs, context):
  """``flax.linen.intercept_methods`` interceptor of a DeepLIFT trace:
  max-pooling ``Pool`` modules get Captum's max-pool rule, LAP-Pools the
  rule of ``lap_pool_rules`` (their heads run as the plain model)."""
  module = context.module
  if context.method_name != "__call__" or not module.path:
    return next_fun(*args, **kwargs)
  capture = _state.lap
  out = capture.route(module, next_fun, args, kwargs,
                      functools.partial(_lap_pool, capture))
  if out is not None:
    return out
  if not isinstance(module, Pool) or module.kind != "max":
    return next_fun(*args, **kwargs)
  a = args[0]
  a0 = _reference("max_pool", a)
  if a0 is None:
    return next_fun(*args, **kwargs)
  return _max_pool_layer(module, _state.eps)(a, jax.lax.stop_gradient(a0))


def _lap_pool(capture: lap_rules.HeadCapture, module, next_fun, args,
              kwargs) -> jax.Array:
  """A LAP-Pool: its input and importance recorded on ``x0``; on ``x``,
  the pool whose backward pass is ``lap_pool_rules.deeplift_layer``."""
  out, pool_at, q = capture.pool(module, next_fun, args, kwargs)
  z = args[0]
  z0 = _reference("lap_pool", z)
  q0 = _reference("lap_pool_importance", q)
  if z0 is None:
    return out
  return lap_rules.deeplift_layer(pool_at)(
      z, jax.lax.stop_gradient(z0), q, jax.lax.stop_gradient(q0))


def multipliers(classifier: Classifier, x: jax.Array, x0: jax.Array,
                cotangents: jax.Array, eps: float = EPS) -> jax.Array:
  """DeepLIFT multipliers ``m_x`` ``[C', B, H, W, C]`` of ``cot . f``
  against references ``x0`` (same shape as ``x``)."""
  # A constant reference (zero baseline, weights closed over) would make
  # the whole reference pass a compile-time constant, which XLA then folds
  # slowly (40 s for a small CNN at batch 32: max pooling's arg-max).
  x0 = jax.lax.optimization_barrier(x0)
  with _tracing() as state:
    state.eps = eps
    classifier.apply(x0)
    state.mode, state.index = "replay", 0
    _, vjp = jax.vjp(lambda x: classifier.apply(x)[0], x)
    unused = len(state.refs) - state.index
    seen = list(state.seen)
  if not seen:
    raise ValueError(
        "this classifier does not follow DeepLIFT's rules (its backward "
        "pass would silently be the plain gradient); build it with "
        "lapjax.attribution.relevance_classifier(module, variables)")
  if not all(seen):
    raise ValueError(
        "this classifier's model has no injectable 'act' attribute, so its "
        "activations cannot follow DeepLIFT's rescale rule (the result "
        "would be (x - x0) times the plain gradient); use a model that "
        "takes its activation as 'act', as every lapjax ReLU model does")
  if unused:
    raise ValueError(
        f"the model called {unused} fewer activations / max pools on x than "
        "on the baseline; DeepLIFT needs the same computation for both")
  return jax.vmap(lambda c: vjp(c)[0])(cotangents)


def _check_eps(eps: float) -> None:
  if not eps > 0:
    raise ValueError(f"eps must be > 0; got {eps}")


@compiled
def deeplift(classifier: Classifier, x: jax.Array, targets, *,
             baseline: jax.Array | float | str = 0.0,
             blur_sigma: float = 5.0, eps: float = EPS,
             channels: str | None = "sum") -> jax.Array:
  """DeepLIFT with the rescale rule (Captum's ``DeepLift``).

  .. math:: A = (x - x_0) \\odot m_x, \\qquad \\sum A =
     \\text{cot} \\cdot (f(x) - f(x_0))

  with ``m_x`` the multipliers of the module docstring (the rescale rule
  at every activation, Captum's rule at max pools, gradients elsewhere).

  Args:
    classifier: built by ``relevance_classifier`` from a model with an
      injectable ``act`` (every lapjax ReLU model); a plain classifier is
      refused rather than silently returning ``(x - x0) * gradient``.
    x: ``[B, H, W, C]``.
    targets: ``[B]``, ``[B, C']`` int or ``[B, K]`` float (cotangents).
    baseline: ``x0``: a number, an array broadcast to ``x`` (e.g. one
      reference image per input), or ``'blur'`` (``x`` Gaussian-blurred,
      as for ``integrated_gradients``).
    blur_sigma: Gaussian sigma of ``baseline='blur'``.
    eps: ``|a - a0|`` below which a unit takes its plain gradient
      (Captum's 1e-10).
    channels: channel reduction (``'sum'`` keeps summation-to-delta).

  Returns:
    ``[B, H, W]`` (or ``[B, C', H, W]``), signed.

  References:
    Shrikumar et al., "Learning Important Features Through Propagating
    Activation Differences", ICML 2017.
  """
  x, t = core.prepare(classifier, x, targets)
  _check_eps(eps)
  x0 = core.baseline_images(x, baseline, blur_sigma)
  m = multipliers(classifier, x, x0, t.cotangents, eps)
  return core.finish(core.reduce_channels((x - x0) * m, channels), t)


@compiled
def deeplift_shap(classifier: Classifier, x: jax.Array, targets, *,
                  baselines: jax.Array | None = None,
                  key: jax.Array | None = None, samples: int = 16,
                  low: float = 0.0, high: float = 1.0, eps: float = EPS,
                  chunk_size: int = 64,
                  channels: str | None = "sum") -> jax.Array:
  """DeepLiftShap: DeepLIFT averaged over a set of baselines (Captum's
  ``DeepLiftShap``).

  .. math:: A = \\frac{1}{N} \\sum_{n=1}^{N} (x - b_n) \\odot m_x(b_n),
     \\qquad \\sum A = \\text{cot} \\cdot \\Big(f(x) - \\frac{1}{N}
     \\sum_n f(b_n)\\Big)

  Args:
    classifier: as for ``deeplift``.
    x: ``[B, H, W, C]``.
    targets: as for ``deeplift``.
    baselines: ``[N, H, W, C]`` reference images (e.g. a background sample
      of the data set), shared by every image; or None to draw ``samples``
      of them uniformly in ``[low, high]`` with ``key``.
    key: ``jax.random.key`` for drawn baselines (the same key gives the
      same maps).
    samples: how many baselines to draw, ``>= 1``.
    low: lower bound of drawn baselines.
    high: upper bound of drawn baselines.
    eps: as for ``deeplift``.
    chunk_size: images per pass (memory bound); a pass takes
      ``max(1, chunk_size // B)`` baselines for the whole batch.
    channels: channel reduction.

  Returns:
    ``[B, H, W]`` (or ``[B, C', H, W]``), signed.

  References:
    Lundberg and Lee, "A Unified Approach to Interpreting Model
    Predictions", NeurIPS 2017; Captum's ``DeepLiftShap``.
  """
  x, t = core.prepare(classifier, x, targets)
  _check_eps(eps)
  if baselines is None:
    if key is None:
      raise ValueError("deeplift_shap needs baselines [N, H, W, C], or a "
                       "key to draw them")
    core.check_positive("samples", samples)
    baselines = jax.random.uniform(key, (samples, *x.shape[1:]), x.dtype,
                                   low, high)
  baselines = jnp.asarray(baselines, x.dtype)
  if baselines.ndim != 4 or baselines.shape[0] < 1:
    raise ValueError(f"baselines must be [N, H, W, C] with N >= 1; got "
                     f"shape {baselines.shape}")
  try:
    baselines = jnp.broadcast_to(baselines, (baselines.shape[0],
                                             *x.shape[1:]))
  except ValueError:
    raise ValueError(f"baselines of shape {baselines.shape} do not "
                     f"broadcast to [N, *{x.shape[1:]}]") from None
  b = x.shape[0]

  def attributions_for(chunk):
    n = chunk.shape[0]
    xs = jnp.tile(x, (n, 1, 1, 1))
    x0s = jnp.repeat(chunk, b, axis=0)
    m = multipliers(classifier, xs, x0s, jnp.tile(t.cotangents, (1, n, 1)),
                    eps)
    a = (xs - x0s) * m                            # [C', n * B, H, W, C]
    return jnp.moveaxis(a.reshape(a.shape[0], n, *x.shape), 1, 0)

  count = baselines.shape[0]
  mean = core.chunked_sum(attributions_for, baselines,
                          jnp.full((count,), 1.0 / count),
                          core.points_per_pass(chunk_size, b))
  return core.finish(core.reduce_channels(mean, channels), t)
