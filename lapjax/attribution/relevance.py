"""Relevance propagation: LRP composites and Relevance-CAM for Flax models.

LRP rules (``relevance_rules``) are modified backward passes of the linear
layers, not a second model: a classifier built by ``relevance_classifier``
intercepts every ``nn.Conv`` / ``nn.Dense`` call
(``flax.linen.intercept_methods``) while a relevance method traces it, and
wraps the layer in a ``jax.custom_vjp`` whose backward pass is the rule the
composite gives that layer. Outside a relevance method the same classifier
is the plain model (usable by every other method). Everything stays pure
and jittable; eager calls are compiled like the other methods.

How relevance crosses the rest of the network. Between two linear layers
the backward pass carries relevance *per unit of activation*, ``c = R /
a``, so that ``R = a * c`` at every activation ``a`` (the first linear
layer hands out relevance itself, which is the input map). Plain gradients
of everything else then implement Zennit's default rules:

* ReLU: ``c_in = 1[z > 0] c_out``, so ``R_in = relu(z) c_out = R_out``
  (Zennit's ``Pass`` on activations; relevance at a zero activation is zero
  under every input-proportional rule).
* Max pooling: the gradient sends ``c`` to the winner: ``R_winner =
  R_out``.
* Average pooling, global average pooling and residual additions ``a = u +
  v``: ``c`` is copied to every summand, so ``R_u = u / a * R_a``: the
  z-rule, a split in proportion to the contributions, which is Zennit's
  ``Norm`` rule on ``AvgPool`` and on the ``Sum`` its ResNet canonizer puts
  in place of torchvision's ``out + identity`` (without Zennit's 1e-6
  stabiliser on the sum).

A linear layer with rule ``rule`` maps ``c_out`` to ``c_in =
rule(x, W, b, z * c_out) / x`` (``0`` where ``x = 0``: there the
input-proportional rules give ``R = 0``). ``flat``, ``wsquare`` and ``zbox``
are not input-proportional and meant for the first layer; deeper, relevance
they send to zero-valued inputs is dropped.

LAP-Pools (``lapjax.lap``) are weighted averages whose weights come from
their own heads: the weights are held constant (gates), so relevance
crosses a LAP-Pool by the z-rule as it crosses an average pool, and the
head runs as the plain model (``lap_pool_rules``).

Canonizer: a ``BatchNorm`` (running statistics) called directly on the
output of a ``Conv`` / ``Dense`` is merged into it, ``W' = W s``, ``b' = (b
- mu) s + beta`` with ``s = gamma / sqrt(var + eps)`` (Zennit's
``SequentialMergeBatchNorm``); the merged layer's rule sees ``W', b'``. So
is a BatchNorm called on a LAP-Pool of such an output (paper 000's
strided-convolution replacement: stride-1 convolution, LAP-Pool,
BatchNorm): the pool's weights sum to 1 per window and are shared by the
channels, so ``BN(pool(z)) = pool(BN(z))`` exactly and the merged layer is
pooled with the same weights. Any other BatchNorm (e.g. DenseNet's
pre-activation ones) is an error naming it, unless the composite says
``norms='pass'`` (Zennit's ``Pass`` on the BatchNorms its canonizer cannot
merge); any other parameterised Flax layer the composite has no rule for
is an error naming its path and type.

Cost (the backward pass of one linear layer, in convolutions of its size;
a gradient costs one transposed): ε 1 forward + 1 transposed; z⁺ 1 + 1 on
non-negative inputs, 2 + 2 on signed ones; α2β1 2 + 2 (4 + 4); γ 3 + 2
(5 + 4); flat and w² 1 + 1 (``docs/relevance.md`` has measurements).
Inputs are known non-negative without a run-time check when they are the
outputs of the model's ReLU ``act`` (the relevance classifier wraps it and
marks its outputs), or max / average pools of those; other inputs are
checked at run time (``jnp.all(x >= 0)`` and a ``lax.cond``).

References:
  Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier
  Decisions by Layer-Wise Relevance Propagation", PLoS ONE 2015.
  Anders et al., "Software for Dataset-wide XAI: From Local Explanations to
  Global Insights with Zennit, CoRelAy, and ViRelAy", arXiv 2021.
  Lee et al., "Relevance-CAM: Your Model Already Knows Where to Look",
  CVPR 2021.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lapjax.attribution import core, postprocess
from lapjax.attribution import lap_pool_rules as lap_rules
from lapjax.attribution import relevance_rules as rules
from lapjax.attribution.compiled import compiled
from lapjax.attribution.deeplift import (
  note_classifier,
  rescaled_activation,
  rules_active,
  rules_interceptor,
)
from lapjax.classifier import Classifier, from_flax
from lapjax.models.layers import GlobalAvgPool, Pool, model_activation

# Parameterised Flax layers that no composite rule covers.
_NO_RULE = tuple(getattr(nn, n) for n in (
    "ConvTranspose", "ConvLocal", "DenseGeneral", "Einsum", "Embed",
    "LayerNorm", "GroupNorm", "RMSNorm", "InstanceNorm", "SpectralNorm",
    "WeightNorm") if hasattr(nn, n))
_LINEAR = (nn.Conv, nn.Dense)


@dataclasses.dataclass(frozen=True)
class Composite:
  """Which rule each linear layer gets (hashable: a static option).

  Attributes:
    name: shown in errors.
    rules: ``(key, rule)`` pairs; a key is a layer path (``'stage1/block1/
      conv1'``) or a module type (``nn.Conv``, ``nn.Dense``). Paths are
      matched first, then types, in order.
    first: ``(type, rule)`` pairs for the first linear layer called (the
      one that hands relevance to the input), tried before ``rules``.
    norms: what a BatchNorm that cannot be merged (no Conv/Dense right
      before it, e.g. DenseNet's pre-activation norms) does: ``'error'``
      (default) or ``'pass'`` (relevance passes unchanged, Zennit's rule
      for BatchNorm layers its canonizer leaves alone).
  """
  name: str
  rules: tuple[tuple[str | type, rules.Rule], ...]
  first: tuple[tuple[type, rules.Rule], ...] = ()
  norms: str = "error"

  def __post_init__(self):
    if self.norms not in ("error", "pass"):
      raise ValueError(f"norms must be 'error' or 'pass'; got "
                       f"{self.norms!r}")

  def rule_for(self, path: str, module: nn.Module, first: bool
               ) -> rules.Rule:
    if first:
      for kind, rule in self.first:
        if isinstance(module, kind):
          return rule
    for key, rule in self.rules:
      if key == path:
        return rule
    for key, rule in self.rules:
      if isinstance(key, type) and isinstance(module, key):
        return rule
    raise ValueError(
        f"composite {self.name!r} has no rule for layer {path!r} of type "
        f"{type(module).__name__}; map its path or type to a rule, e.g. "
        f"composite({{{path!r}: Epsilon(), ...}})")


def epsilon_plus_flat(*, epsilon: float = 1e-6,
                      stabilizer: float = 1e-6) -> Composite:
  """Zennit's ``EpsilonPlusFlat``: flat on the first linear layer, z⁺ on
  convolutions, ε on dense layers."""
  return Composite("epsilon_plus_flat", (
      (nn.Conv, rules.ZPlus(stabilizer)), (nn.Dense, rules.Epsilon(epsilon))),
      ((nn.Conv, rules.Flat(stabilizer)), (nn.Dense, rules.Flat(stabilizer))))


def epsilon_plus(*, epsilon: float = 1e-6,
                 stabilizer: float = 1e-6) -> Composite:
  """Zennit's ``EpsilonPlus``: z⁺ on convolutions, ε on dense layers."""
  return Composite("epsilon_plus", (
      (nn.Conv, rules.ZPlus(stabilizer)), (nn.Dense, rules.Epsilon(epsilon))))


def epsilon_alpha2_beta1(*, epsilon: float = 1e-6,
                         stabilizer: float = 1e-6) -> Composite:
  """Zennit's ``EpsilonAlpha2Beta1``: α2β1 on convolutions, ε on dense."""
  return Composite("epsilon_alpha2_beta1", (
      (nn.Conv, rules.AlphaBeta(2.0, 1.0, stabilizer)),
      (nn.Dense, rules.Epsilon(epsilon))))


def epsilon_gamma_box(*, low: float | tuple[float, ...] = 0.0,
                      high: float | tuple[float, ...] = 1.0,
                      epsilon: float = 1e-6, gamma: float = 0.25,
                      stabilizer: float = 1e-6) -> Composite:
  """Zennit's ``EpsilonGammaBox``: z^B in ``[low, high]`` on a first
  convolution, γ on the other convolutions, ε on dense layers.

  ``low``/``high`` bound the model's inputs (per channel as tuples for
  normalised images; the name ``'epsilon_gamma_box'`` means ``[0, 1]``).
  """
  return Composite("epsilon_gamma_box", (
      (nn.Conv, rules.Gamma(gamma, stabilizer)),
      (nn.Dense, rules.Epsilon(epsilon))),
      ((nn.Conv, rules.ZBox(_hashable(low), _hashable(high),
                            stabilizer)),))


def _hashable(value):
  if isinstance(value, (int, float)):
    return float(value)
  return tuple(float(v) for v in jnp.ravel(jnp.asarray(value)))


COMPOSITES = {
    "epsilon_plus_flat": epsilon_plus_flat, "epsilon_plus": epsilon_plus,
    "epsilon_alpha2_beta1": epsilon_alpha2_beta1,
    "epsilon_gamma_box": epsilon_gamma_box,
}


def composite(mapping: Mapping[str | type, rules.Rule | str], *,
              first: Mapping[type, rules.Rule | str] | None = None,
              norms: str = "error", name: str = "custom") -> Composite:
  """A composite from a user mapping: layer path or type -> rule.

  Rules may be given by name (``relevance_rules.RULES``). Example::

    composite({nn.Conv: Gamma(0.5), nn.Dense: Epsilon(),
               'head': Epsilon(0.1)}, first={nn.Conv: ZBox(0.0, 1.0)})
  """
  def as_rule(r):
    return rules.rule(r) if isinstance(r, str) else r

  for key in list(mapping) + list(first or {}):
    if not isinstance(key, (str, type)):
      raise ValueError(f"composite keys are layer paths or module types; "
                       f"got {key!r}")
  return Composite(name, tuple((k, as_rule(r)) for k, r in mapping.items()),
                   tuple((k, as_rule(r)) for k, r in (first or {}).items()),
                   norms)


def as_composite(value: Composite | str | Mapping) -> Composite:
  """A ``Composite`` from a composite, a name in ``COMPOSITES`` or a
  mapping (``composite``)."""
  if isinstance(value, Composite):
    return value
  if isinstance(value, str):
    if value not in COMPOSITES:
      raise ValueError(f"unknown composite {value!r}; composites are "
                       f"{sorted(COMPOSITES)}")
    return COMPOSITES[value]()
  if isinstance(value, Mapping):
    return composite(value)
  raise ValueError(f"composite must be a Composite, one of "
                   f"{sorted(COMPOSITES)} or a mapping; got {value!r}")


# --- The mechanism -----------------------------------------------------------

_active = threading.local()


def _linear_map(module: nn.Module):
  """``linear(x, kernel, bias)``: the module's affine map with other
  parameters (an unbound copy of it, always with a bias)."""
  plain = module.clone(parent=None, use_bias=True)

  def linear(x, kernel, bias):
    return plain.apply({"params": {"kernel": kernel, "bias": bias}}, x)

  return linear


def _rule_layer(rule: rules.Rule, linear, first: bool,
                non_negative: bool | None = None):
  """``linear`` whose backward pass is ``rule`` in relevance-per-activation
  units (relevance itself for the first layer); ``non_negative``: the
  input is known to be ``>= 0`` (``relevance_rules``)."""

  @jax.custom_vjp
  def layer(x, kernel, bias):
    return linear(x, kernel, bias)

  def forward(x, kernel, bias):
    z = linear(x, kernel, bias)
    return z, (x, kernel, bias, z)

  def backward(saved, per_unit):
    x, kernel, bias, z = saved
    relevance = rule(x, linear, kernel, bias, z * per_unit,
                     non_negative=non_negative)
    if not first:
      nonzero = x != 0
      relevance = jnp.where(nonzero, relevance / jnp.where(nonzero, x, 1), 0)
    return relevance, jnp.zeros_like(kernel), jnp.zeros_like(bias)

  layer.defvjp(forward, backward)
  return layer


class _Propagation:
  """One forward trace under a composite: rule layers and merged norms."""

  def __init__(self, comp: Composite, inputs: jax.Array):
    self.composite = comp
    self.inputs = inputs
    self.linear_layers = 0
    self.pending: dict[int, tuple[jax.Array, Any]] = {}
    # Arrays known to be >= 0: ReLU outputs and their pools (by id, the
    # array kept so that the id stays its own).
    self.non_negative: dict[int, jax.Array] = {}
    # LAP-Pools: their outputs (by id) -> (output, input, pool_at).
    self.lap = lap_rules.HeadCapture()
    self.lap_pooled: dict[int, tuple[jax.Array, jax.Array, Any]] = {}

  def mark_non_negative(self, a: jax.Array) -> None:
    self.non_negative[id(a)] = a

  def is_non_negative(self, a: jax.Array) -> bool:
    return self.non_negative.get(id(a)) is a

  def intercept(self, next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or not module.path:
      return next_fun(*args, **kwargs)
    out = self.lap.route(module, next_fun, args, kwargs, self._lap_pool)
    if out is not None:
      return out
    path = "/".join(module.path)
    if isinstance(module, _LINEAR):
      return self._linear(module, path, args[0])
    if isinstance(module, nn.BatchNorm):
      return self._merged_norm(module, path, args[0], kwargs,
                               lambda z: next_fun(z, *args[1:], **kwargs))
    if isinstance(module, (Pool, GlobalAvgPool)):
      out = next_fun(*args, **kwargs)
      if self.is_non_negative(args[0]):
        self.mark_non_negative(out)
      return out
    if isinstance(module, _NO_RULE):
      raise ValueError(
          f"composite {self.composite.name!r} has no rule for layer {path!r} "
          f"of type {type(module).__name__}: relevance propagation supports "
          "Conv and Dense layers (BatchNorm directly after one is merged "
          "into it)")
    return next_fun(*args, **kwargs)

  def _lap_pool(self, module, next_fun, args, kwargs):
    """A LAP-Pool with its weights held constant (``lap_pool_rules``): a
    weighted average, whose gradient is the z-rule."""
    out, pool_at, q = self.lap.pool(module, next_fun, args, kwargs)
    self.lap_pooled[id(out)] = (out, args[0],
                                lambda z: pool_at(z, q))
    if self.is_non_negative(args[0]):
      self.mark_non_negative(out)
    return out

  def _linear(self, module, path, x):
    first = self.linear_layers == 0
    self.linear_layers += 1
    # The first layer hands out relevance itself when it reads the input;
    # otherwise (something before it) per-unit relevance, times x at the end.
    direct = first and x is self.inputs
    if first and not direct:
      _active.times_input = True
    params = module.variables["params"]
    kernel = params["kernel"]
    bias = params.get("bias", jnp.zeros(kernel.shape[-1:], kernel.dtype))
    rule = self.composite.rule_for(path, module, first)
    linear = _linear_map(module)
    non_negative = self.is_non_negative(x) or None
    out = _rule_layer(rule, linear, direct, non_negative)(x, kernel, bias)
    self.pending[id(out)] = (out, (rule, linear, direct, non_negative, x,
                                   kernel, bias))
    return out

  def _merged_norm(self, module, path, z, kwargs, next_fun):
    source, pool = z, None
    pooled = self.lap_pooled.get(id(z))
    if pooled is not None and pooled[0] is z:
      # BatchNorm(LAP-Pool(linear(x))) = LAP-Pool(merged linear(x)): the
      # pool's weights sum to 1 per window and are shared by the channels.
      _, source, pool = pooled
    entry = self.pending.get(id(source))
    if entry is None or entry[0] is not source:
      if self.composite.norms == "pass":
        return _passing(next_fun)(z)
      raise ValueError(
          f"BatchNorm {path!r} does not directly follow a Conv or Dense "
          "layer (or a LAP-Pool of one's output), so it cannot be merged "
          "into one (canonizer); relevance propagation has no rule for a "
          "standalone norm (a composite with norms='pass' passes relevance "
          "through it, as Zennit does)")
    use_running = kwargs.get("use_running_average",
                             module.use_running_average)
    if not use_running or module.axis not in (-1, z.ndim - 1):
      raise ValueError(
          f"BatchNorm {path!r} can only be merged in inference mode "
          "(use_running_average=True) over the last axis")
    rule, linear, first, non_negative, x, kernel, bias = entry[1]
    stats = module.variables["batch_stats"]
    params = module.variables.get("params", {})
    scale = (params["scale"] if module.use_scale else 1.0) * jax.lax.rsqrt(
        stats["var"] + module.epsilon)
    shift = params["bias"] if module.use_bias else 0.0
    kernel, bias = kernel * scale, (bias - stats["mean"]) * scale + shift
    out = _rule_layer(rule, linear, first, non_negative)(x, kernel, bias)
    if pool is not None:
      return pool(out)
    self.pending[id(out)] = (out, (rule, linear, first, non_negative, x,
                                   kernel, bias))
    return out


def _passing(norm):
  """``norm`` whose backward pass hands relevance through unchanged:
  ``R_in = R_out``, i.e. ``c_in = y c_out / x``."""

  @jax.custom_vjp
  def layer(x):
    return norm(x)

  def forward(x):
    y = norm(x)
    return y, (x, y)

  def backward(saved, per_unit):
    x, y = saved
    nonzero = x != 0
    return (jnp.where(nonzero, y * per_unit / jnp.where(nonzero, x, 1), 0),)

  layer.defvjp(forward, backward)
  return layer


@contextlib.contextmanager
def _propagating(comp: Composite):
  """Relevance classifiers traced inside use ``comp``'s rules."""
  previous = getattr(_active, "composite", None)
  _active.composite = comp
  _active.traced = 0
  _active.times_input = False
  try:
    yield _active
  finally:
    _active.composite = previous


def relevance_classifier(module: nn.Module, variables, **from_flax_kwargs
                         ) -> Classifier:
  """A classifier of ``module`` ready for relevance propagation.

  The plain model everywhere (``from_flax``), except inside ``lrp`` /
  ``relevance_cam``, which trace it with their composite's rules, and
  ``deeplift`` / ``deeplift_shap``, which trace it with DeepLIFT's. The
  module's computation is unchanged: LRP rules are installed by
  intercepting its ``Conv`` / ``Dense`` / ``BatchNorm`` / ``LAPPool``
  calls, DeepLIFT's by intercepting its max-pooling ``Pool`` modules and
  LAP-Pools and by wrapping its
  injectable ``act`` (``deeplift.rescaled_activation``, which is ``act``
  itself outside DeepLIFT; a model without ``act`` works for LRP only).

  Args:
    module: a Flax linen module.
    variables: its variables.
    **from_flax_kwargs: as for ``from_flax`` (``layers`` to tap for
      ``lrp(..., layer=)`` and ``relevance_cam``; ``()`` by default).
  """
  if "method" in from_flax_kwargs:
    raise ValueError("relevance_classifier runs the module's __call__; got "
                     f"method={from_flax_kwargs['method']!r}")
  if "layers" not in from_flax_kwargs and "input_shape" not in from_flax_kwargs:
    from_flax_kwargs["layers"] = ()
  if (from_flax_kwargs.get("layers", ()) is None
      and from_flax_kwargs.get("input_shape") is None):
    raise ValueError("relevance_classifier needs layers=... or "
                     "input_shape=(H, W, C) to find the default layers")
  act = model_activation(module) if hasattr(module, "act") else None
  if act is not None:
    act = getattr(act, "plain", act)
    module = module.clone(act=_activation(act))
  plain = from_flax(module, variables, method=_propagate, **from_flax_kwargs)

  def apply(x, deltas=None):
    if getattr(_active, "composite", None) is not None:
      _active.traced += 1
    note_classifier(act is not None)
    return plain.apply(x, deltas)

  return plain._replace(apply=apply)


def _activation(act):
  """The model's ``act`` in a relevance classifier: DeepLIFT's rescale rule
  inside ``deeplift`` (``deeplift.rescaled_activation``); under a composite,
  a ReLU's outputs are marked non-negative for the rules."""
  rescaled = rescaled_activation(act)

  def activation(a: jax.Array) -> jax.Array:
    y = rescaled(a)
    propagation = getattr(_active, "propagation", None)
    if propagation is not None and act is jax.nn.relu:
      propagation.mark_non_negative(y)
    return y

  activation.plain = act
  return activation


def _propagate(module: nn.Module, x: jax.Array, **kwargs: Any) -> jax.Array:
  """``module(x)`` under the active composite's rules, if any.

  Run as ``module.apply(..., method=_propagate)``, so the interceptor is
  installed inside ``from_flax``'s tapping one: rule layers are what taps
  see and ``deltas`` perturb.
  """
  comp = getattr(_active, "composite", None)
  if comp is not None:
    propagation = _Propagation(comp, x)
    previous = getattr(_active, "propagation", None)
    _active.propagation = propagation
    try:
      with nn.intercept_methods(propagation.intercept):
        return module(x, **kwargs)
    finally:
      _active.propagation = previous
  if rules_active():
    with nn.intercept_methods(rules_interceptor):
      return module(x, **kwargs)
  return module(x, **kwargs)


def _check_layer(classifier: Classifier, layer: str) -> None:
  if layer not in classifier.layers:
    raise ValueError(
        f"unknown layer {layer!r}; this classifier taps "
        f"{list(classifier.layers)} (build it with relevance_classifier("
        "module, variables, layers=[...]) to tap others)")


def _layer_gradients(classifier: Classifier, x: jax.Array, layer: str,
                     cotangents: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Activations ``[B, ...]`` at ``layer`` (any shape, unlike
  ``core.layer_gradients``) and their gradients ``[C', B, ...]``."""
  shape = jax.eval_shape(classifier.apply, x)[1][layer]

  def run(delta):
    logits, feats = classifier.apply(x, {layer: delta})
    return logits, feats[layer]

  _, vjp, acts = jax.vjp(run, jnp.zeros(shape.shape, shape.dtype),
                         has_aux=True)
  return acts, jax.vmap(lambda c: vjp(c)[0])(cotangents)


def _relevance_at(classifier: Classifier, x: jax.Array, t: core.Targets,
                  comp: Composite, layer: str | None):
  """Relevance ``[C', B, ...]`` at the input or at ``layer`` (and the
  layer's activations)."""
  with _propagating(comp) as state:
    if layer is None:
      acts, relevance = None, core.input_gradients(classifier, x,
                                                   t.cotangents)
    else:
      acts, per_unit = _layer_gradients(classifier, x, layer, t.cotangents)
      relevance = acts * per_unit
    traced = state.traced
    if layer is None and state.times_input:
      relevance = x * relevance
  if not traced:
    raise ValueError(
        "this classifier does not propagate relevance (its backward pass "
        "would silently be the plain gradient); build it with "
        "lapjax.attribution.relevance_classifier(module, variables)")
  return relevance, acts


@compiled
def lrp(classifier: Classifier, x: jax.Array, targets, *,
        composite: Composite | str = "epsilon_plus_flat",
        layer: str | None = None,
        channels: str | None = "sum") -> jax.Array:
  """Layer-wise relevance propagation under a composite of rules.

  The target score ``cot . f(x)`` is handed down layer by layer; each
  linear layer splits the relevance of its outputs among its inputs by its
  rule (``relevance_rules``), so that (for conserving rules and no bias)
  ``sum R = cot . f(x)`` at every layer.

  Args:
    classifier: built by ``relevance_classifier`` (a plain classifier is
      refused rather than silently returning gradients).
    x: ``[B, H, W, C]``.
    targets: ``[B]``, ``[B, C']`` int or ``[B, K]`` float (the relevance
      handed to the logits is ``logits * cot``).
    composite: a ``Composite``, a name in ``COMPOSITES`` or a mapping
      (``composite``; mappings are not hashable, so such calls run eagerly:
      pass ``composite(mapping)`` to compile).
    layer: a tapped layer: return the relevance of its output ``R = a *
      c`` instead of the input's (its resolution, not resized).
    channels: channel reduction (``'sum'`` keeps conservation).

  Returns:
    ``[B, H, W]`` (or ``[B, C', H, W]``; ``[..., h, w]`` at ``layer``),
    signed.

  References:
    Bach et al., PLoS ONE 2015; Montavon et al., "Layer-Wise Relevance
    Propagation: An Overview", 2019; Zennit (Anders et al. 2021).
  """
  x, t = core.prepare(classifier, x, targets)
  comp = as_composite(composite)
  if layer is not None:
    _check_layer(classifier, layer)
  relevance, _ = _relevance_at(classifier, x, t, comp, layer)
  return core.finish(core.reduce_channels(relevance, channels), t)


@compiled
def relevance_cam(classifier: Classifier, x: jax.Array, targets, *,
                  layer: str, composite: Composite | str = "epsilon_plus",
                  resize: bool = True,
                  resize_method: str = "bilinear") -> jax.Array:
  """Relevance-CAM: activations weighted by their summed LRP relevance.

  .. math:: L = \\mathrm{ReLU}\\Big(\\sum_k \\alpha_k A^k\\Big), \\quad
     \\alpha_k = \\sum_{ij} R^{(k)}_{ij}

  with ``R`` the relevance of ``layer``'s output under ``composite`` (z⁺ on
  convolutions by default, as the paper; the first-layer rule does not
  matter here). The ReLU is part of the definition.

  Args:
    classifier: built by ``relevance_classifier`` tapping ``layer``.
    x: ``[B, H, W, C]``.
    targets: as for ``lrp``.
    layer: a spatial layer ``[B, h, w, c]``.
    composite: as for ``lrp``.
    resize: resize to ``[H, W]`` (True) or keep ``[h, w]``.
    resize_method: ``'bilinear'`` or another ``jax.image.resize`` method.

  Returns:
    ``[B, H, W]`` (or ``[B, C', H, W]``), non-negative.

  References:
    Lee et al., "Relevance-CAM: Your Model Already Knows Where to Look",
    CVPR 2021.
  """
  x, t = core.prepare(classifier, x, targets)
  _check_layer(classifier, layer)
  core.check_spatial_layer(
      layer, jax.eval_shape(classifier.apply, x)[1][layer].shape)
  relevance, acts = _relevance_at(classifier, x, t, as_composite(composite),
                                  layer)
  weights = relevance.sum(axis=(2, 3))                      # [C', B, c]
  cam = jax.nn.relu(jnp.einsum("nbc,bhwc->nbhw", weights, acts))
  cam = postprocess.resize(cam, x.shape[1:3] if resize else None,
                           resize_method)
  return core.finish(cam, t)
