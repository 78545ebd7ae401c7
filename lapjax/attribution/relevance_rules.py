"""LRP rules: how one linear layer hands relevance down to its input.

A rule is a pure function of the layer's input ``x``, its parameters
``(kernel, bias)``, its affine map ``linear(x, kernel, bias)`` (a
convolution or a dense layer) and the relevance ``R`` of its output ``z =
linear(x, kernel, bias)``; it returns the relevance of ``x`` (same shape as
``x``). ``W^T g`` below is the vector-Jacobian product of the modified map,
exactly as Zennit computes it (Anders et al. 2021): the gradient of the
modified outputs w.r.t. the modified inputs.

Every division goes through ``stabilize``, Zennit's convention: ``z + eps *
sign(z)`` with ``sign(0) = +1``, so the stabiliser always points away from
zero. ``x^+ = max(x, 0)``, ``x^- = min(x, 0)``, likewise ``W^+, W^-, b^+,
b^-``.

Rules are frozen dataclasses (hashable, so composites holding them are
static options of jitted methods). Their defaults are Zennit's. Every rule
takes ``non_negative``: True when ``x >= 0`` is known statically (a ReLU's
output, marked by ``relevance``), which spares the rules that treat
``x^+`` and ``x^-`` apart (αβ, z⁺, γ) a run-time check and a ``cond``;
None checks at run time.

References:
  Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier
  Decisions by Layer-Wise Relevance Propagation", PLoS ONE 2015.
  Montavon et al., "Explaining nonlinear classification decisions with deep
  Taylor decomposition", Pattern Recognition 2017.
  Montavon et al., "Layer-Wise Relevance Propagation: An Overview", 2019.
  Lapuschkin et al., "Unmasking Clever Hans predictors", Nat. Comm. 2019.
  Anders et al., "Software for Dataset-wide XAI: From Local Explanations to
  Global Insights with Zennit, CoRelAy, and ViRelAy", arXiv 2021.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

# linear(x, kernel, bias) -> z: the layer's affine map with given parameters.
Linear = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def stabilize(z: jax.Array, epsilon: float) -> jax.Array:
  """``z + epsilon * sign(z)`` with ``sign(0) = +1`` (Zennit's ``stabilize``).

  .. math:: \\mathrm{stab}(z) = z + \\epsilon\\,(\\mathbb{1}[z \\ge 0] -
     \\mathbb{1}[z < 0])
  """
  return z + epsilon * jnp.where(z >= 0, 1.0, -1.0).astype(z.dtype)


def _pos(a: jax.Array) -> jax.Array:
  return jnp.maximum(a, 0)


def _neg(a: jax.Array) -> jax.Array:
  return jnp.minimum(a, 0)


def _by_sign(x, non_negative: bool | None, nonneg_case, general):
  """``nonneg_case(x)`` if ``x >= 0`` (known statically when
  ``non_negative`` is True, else checked at run time), else ``general(x)``.
  """
  if non_negative:
    return nonneg_case(x)
  return jax.lax.cond(jnp.all(x >= 0), nonneg_case, general, x)


def _check_stabilizer(stabilizer: float) -> None:
  if not stabilizer > 0:
    raise ValueError(f"stabilizer must be > 0; got {stabilizer}")


@dataclasses.dataclass(frozen=True)
class Epsilon:
  """LRP-ε: relevance in proportion to the contributions ``x_i w_ij``.

  .. math:: R_i = x_i \\sum_j w_{ij} \\frac{R_j}{\\mathrm{stab}_\\epsilon(z_j)},
     \\quad z_j = \\sum_i x_i w_{ij} + b_j

  ``epsilon -> 0`` is LRP-0 (conserves ``sum R`` up to the bias share).

  Attributes:
    epsilon: the stabiliser, ``> 0`` (Zennit's default ``1e-6``).
  """
  epsilon: float = 1e-6

  def __post_init__(self):
    if not self.epsilon > 0:
      raise ValueError(f"epsilon must be > 0; got {self.epsilon}")

  def __call__(self, x, linear: Linear, kernel, bias, relevance, *,
               non_negative: bool | None = None):
    z, vjp = jax.vjp(lambda x: linear(x, kernel, bias), x)
    (g,) = vjp(relevance / stabilize(z, self.epsilon))
    return x * g


@dataclasses.dataclass(frozen=True)
class AlphaBeta:
  """LRP-αβ: positive and negative contributions apart, weighted α and β.

  .. math::
    R_i = \\alpha \\frac{(x_i w_{ij})^+}{\\mathrm{stab}(z_j^+)} R_j
        - \\beta \\frac{(x_i w_{ij})^-}{\\mathrm{stab}(z_j^-)} R_j

  (summed over ``j``) with ``z^+ = x^+ W^+ + x^- W^- + b^+`` and ``z^- =
  x^+ W^- + x^- W^+ + b^-`` (Zennit's generalisation to negative inputs).

  Attributes:
    alpha: weight of the positive part, ``>= 0``.
    beta: weight of the negative part, ``>= 0``; ``alpha - beta`` must be 1.
    stabilizer: ``> 0``.
  """
  alpha: float = 2.0
  beta: float = 1.0
  stabilizer: float = 1e-6

  def __post_init__(self):
    if self.alpha < 0 or self.beta < 0:
      raise ValueError(f"alpha and beta must be >= 0; got alpha={self.alpha}, "
                       f"beta={self.beta}")
    if self.alpha - self.beta != 1:
      raise ValueError(f"alpha - beta must equal 1 (conservation); got "
                       f"alpha={self.alpha}, beta={self.beta}")
    _check_stabilizer(self.stabilizer)

  def __call__(self, x, linear: Linear, kernel, bias, relevance, *,
               non_negative: bool | None = None):
    wp, wn = _pos(kernel), _neg(kernel)
    beta = self.beta

    def general(x):
      def parts(xp, xn):
        return (linear(xp, wp, _pos(bias)) + linear(xn, wn, 0 * bias),
                linear(xp, wn, _neg(bias)) + linear(xn, wp, 0 * bias))

      (zp, zn), vjp = jax.vjp(parts, _pos(x), _neg(x))
      gp = self.alpha * relevance / stabilize(zp, self.stabilizer)
      gn = -beta * relevance / stabilize(zn, self.stabilizer)
      dxp, dxn = vjp((gp, gn))
      return _pos(x) * dxp + _neg(x) * dxn

    def nonneg_case(x):
      # x = x^+ (after a ReLU): the x^- terms vanish; z^- only if beta > 0.
      zp, vjp = jax.vjp(lambda x: linear(x, wp, _pos(bias)), x)
      (dx,) = vjp(self.alpha * relevance / stabilize(zp, self.stabilizer))
      if beta:
        zn, vjp = jax.vjp(lambda x: linear(x, wn, _neg(bias)), x)
        dx = dx - vjp(beta * relevance / stabilize(zn, self.stabilizer))[0]
      return x * dx

    return _by_sign(x, non_negative, nonneg_case, general)


def ZPlus(stabilizer: float = 1e-6) -> AlphaBeta:  # noqa: N802 (Zennit name)
  """LRP-z⁺ (Zennit's ``ZPlus``): ``AlphaBeta(alpha=1, beta=0)``.

  .. math:: R_i = \\sum_j \\frac{(x_i w_{ij})^+}{\\mathrm{stab}(z_j^+)} R_j
  """
  return AlphaBeta(alpha=1.0, beta=0.0, stabilizer=stabilizer)


@dataclasses.dataclass(frozen=True)
class Gamma:
  """LRP-γ: positive contributions boosted by ``gamma`` (Zennit's
  generalised form, which also handles negative inputs and outputs).

  .. math::
    R_i = \\sum_j \\Big(\\mathbb{1}[z_j > 0]
      \\frac{x_i^+ (w + \\gamma w^+)_{ij} + x_i^- (w + \\gamma w^-)_{ij}}
           {\\mathrm{stab}(z^{\\uparrow}_j)}
      + \\mathbb{1}[z_j < 0]
      \\frac{x_i^+ (w + \\gamma w^-)_{ij} + x_i^- (w + \\gamma w^+)_{ij}}
           {\\mathrm{stab}(z^{\\downarrow}_j)}\\Big) R_j

  with ``z^↑ = x^+ (W + γW^+) + (b + γb^+) + x^- (W + γW^-)`` and ``z^↓ =
  x^+ (W + γW^-) + (b + γb^-) + x^- (W + γW^+)``.

  Attributes:
    gamma: ``>= 0`` (Zennit's default 0.25); 0 is LRP-0.
    stabilizer: ``> 0``.
  """
  gamma: float = 0.25
  stabilizer: float = 1e-6

  def __post_init__(self):
    if self.gamma < 0:
      raise ValueError(f"gamma must be >= 0; got {self.gamma}")
    _check_stabilizer(self.stabilizer)

  def __call__(self, x, linear: Linear, kernel, bias, relevance, *,
               non_negative: bool | None = None):
    up = kernel + self.gamma * _pos(kernel)
    down = kernel + self.gamma * _neg(kernel)
    b_up = bias + self.gamma * _pos(bias)
    b_down = bias + self.gamma * _neg(bias)
    zero = 0 * bias

    def parts(xp, xn):
      return (linear(xp, up, b_up) + linear(xn, down, zero),
              linear(xp, down, b_down) + linear(xn, up, zero))

    z = linear(x, kernel, bias)

    def general(x):
      (z_up, z_down), vjp = jax.vjp(parts, _pos(x), _neg(x))
      dxp, dxn = vjp(grads(z_up, z_down))
      return _pos(x) * dxp + _neg(x) * dxn

    def nonneg_case(x):
      # x = x^+ (after a ReLU): the x^- terms vanish.
      (z_up, z_down), vjp = jax.vjp(
          lambda x: (linear(x, up, b_up), linear(x, down, b_down)), x)
      return x * vjp(grads(z_up, z_down))[0]

    def grads(z_up, z_down):
      return (jnp.where(z > 0, relevance, 0)
              / stabilize(z_up, self.stabilizer),
              jnp.where(z < 0, relevance, 0)
              / stabilize(z_down, self.stabilizer))

    return _by_sign(x, non_negative, nonneg_case, general)


@dataclasses.dataclass(frozen=True)
class ZBox:
  """LRP-z^B for inputs bounded in ``[low, high]`` (first layer of images).

  .. math::
    R_i = \\sum_j \\frac{x_i w_{ij} - l_i w_{ij}^+ - h_i w_{ij}^-}
      {\\mathrm{stab}(z_j - (l W^+ + b^+)_j - (h W^- + b^-)_j)} R_j

  Attributes:
    low: the lowest input value: a number, or one per channel (a tuple).
    high: the highest input value, likewise.
    stabilizer: ``> 0``.
  """
  low: float | tuple[float, ...] = 0.0
  high: float | tuple[float, ...] = 1.0
  stabilizer: float = 1e-6

  def __post_init__(self):
    _check_stabilizer(self.stabilizer)

  def __call__(self, x, linear: Linear, kernel, bias, relevance, *,
               non_negative: bool | None = None):
    low = jnp.broadcast_to(jnp.asarray(self.low, x.dtype), x.shape)
    high = jnp.broadcast_to(jnp.asarray(self.high, x.dtype), x.shape)

    def z_box(x, low, high):
      return (linear(x, kernel, bias) - linear(low, _pos(kernel), _pos(bias))
              - linear(high, _neg(kernel), _neg(bias)))

    z, vjp = jax.vjp(z_box, x, low, high)
    dx, dlow, dhigh = vjp(relevance / stabilize(z, self.stabilizer))
    # vjp already carries the minus signs of the low and high terms.
    return x * dx + low * dlow + high * dhigh


@dataclasses.dataclass(frozen=True)
class WSquare:
  """LRP-w²: relevance by squared weights, independent of the input.

  .. math:: R_i = \\sum_j \\frac{w_{ij}^2}{\\mathrm{stab}(\\sum_{i'}
     w_{i'j}^2 + b_j^2)} R_j

  Attributes:
    stabilizer: ``> 0``.
  """
  stabilizer: float = 1e-6

  def __post_init__(self):
    _check_stabilizer(self.stabilizer)

  def __call__(self, x, linear: Linear, kernel, bias, relevance, *,
               non_negative: bool | None = None):
    z, vjp = jax.vjp(lambda ones: linear(ones, kernel ** 2, bias ** 2),
                     jnp.ones_like(x))
    return vjp(relevance / stabilize(z, self.stabilizer))[0]


@dataclasses.dataclass(frozen=True)
class Flat:
  """LRP-flat: relevance spread evenly over each output's receptive field.

  .. math:: R_i = \\sum_j \\frac{\\mathbb{1}[i \\in \\mathrm{rf}(j)]}
     {\\mathrm{stab}(|\\mathrm{rf}(j)|)} R_j

  (``w² `` with all weights one and no bias; at a padded border the field
  counts only real inputs, as in Zennit).

  Attributes:
    stabilizer: ``> 0``.
  """
  stabilizer: float = 1e-6

  def __post_init__(self):
    _check_stabilizer(self.stabilizer)

  def __call__(self, x, linear: Linear, kernel, bias, relevance, *,
               non_negative: bool | None = None):
    return WSquare(self.stabilizer)(x, linear, jnp.ones_like(kernel),
                                    jnp.zeros_like(bias), relevance)


@dataclasses.dataclass(frozen=True)
class Pass:
  """Identity: ``R_i = R_i`` (only for layers whose output has the shape of
  their input)."""

  def __call__(self, x, linear: Linear, kernel, bias, relevance, *,
               non_negative: bool | None = None):
    if relevance.shape != x.shape:
      raise ValueError(
          f"the pass rule needs a layer whose output has its input's shape; "
          f"got input {x.shape}, output {relevance.shape}")
    return relevance


Rule = Epsilon | AlphaBeta | Gamma | ZBox | WSquare | Flat | Pass

RULES: dict[str, Callable[..., Rule]] = {
    "epsilon": Epsilon, "zplus": ZPlus, "alpha_beta": AlphaBeta,
    "alpha2_beta1": lambda stabilizer=1e-6: AlphaBeta(2.0, 1.0, stabilizer),
    "alpha1_beta0": lambda stabilizer=1e-6: AlphaBeta(1.0, 0.0, stabilizer),
    "gamma": Gamma, "zbox": ZBox, "wsquare": WSquare, "flat": Flat,
    "pass": Pass,
}


def rule(name: str, **options) -> Rule:
  """A rule by name (``RULES``), e.g. ``rule('gamma', gamma=0.5)``."""
  if name not in RULES:
    raise ValueError(f"unknown rule {name!r}; rules are {sorted(RULES)}")
  return RULES[name](**options)
