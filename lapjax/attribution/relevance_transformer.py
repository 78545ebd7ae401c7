"""Relevance propagation through a vision transformer (Chefer et al.'s LRP).

The mechanism of ``relevance`` (DESIGN.md §11), extended to lapjax's
``VisionTransformer``: while a relevance computation traces the model, its
layers are intercepted (``flax.linen.intercept_methods``) and wrapped in
``jax.custom_vjp`` s whose backward passes are the rules, and the backward
pass carries relevance *per unit of activation* ``c = R / a`` (so ``R = a
* c`` at every activation), as in ``relevance``. Outside a relevance
computation the classifier is the plain model.

Rules (Chefer, Gur & Wolf, CVPR 2021, Sec. 3, and their released
``modules/layers_ours.py``):

* ``Dense`` (``qkv``, ``proj``, ``fc1``, ``fc2``, ``head``): ``AlphaBeta``
  with ``alpha = 1, beta = 0`` on both sign combinations and *without* the
  bias, ``R_i = sum_j (x_i^+ w_ij^+ + x_i^- w_ij^-) R_j / (z_j^+)``, ``z^+ =
  x^+ W^+ + x^- W^-``, divided with ``safe_divide`` (``+1e-9``; a zero
  denominator gives 0) — ``ChefersAlphaBeta``.
* LayerNorm, GELU, softmax: identity, ``R_in = R_out``
  (``relevance._passing``).
* Bilinear products ``q k^T`` and ``A v``: the z-rule to each operand, ``R_a = a
  * d(ab)/da^T (R / ab)``, halved so that the two operands share the relevance
  (the paper's normalisation for two operands): a factor ``1/2`` on the per-unit
  relevance of the product (in front of ``proj`` and of the softmax).
* Residual sums ``z = u + v`` (the skip ``u`` and a branch ``v``): the z-rule,
  ``R_u = u R / z``, ``R_v = v R / z``, each rescaled so the two share ``sum R``
  in proportion to ``|sum R_u|`` and ``|sum R_v|`` (the paper's skip-connection
  normalisation); sums are per image here (the released code sums over the
  batch).
* The class-token read-out and the copies of the residual stream (skip
  and norm): plain gradients (relevance to the selected token; copies add
  their relevance).
* Every division the released code makes with ``safe_divide`` (``R / (z +
  1e-9)``, 0 at ``z = 0``) is made the same way: the per-unit relevance is
  multiplied by ``z / (z + 1e-9)`` at the read-out, the products, the
  residual sums and the copies (``stabilizer_factor``), so the maps equal
  the released code's (to 1e-9 in float64; in float32 both codes' rounding
  moves a random model's map by up to ~2e-3 of its maximum, where signed
  relevance cancels).

What is not propagated: the patch embedding and position embeddings below
the first block (T-Attr reads relevance at the attention maps only).

References:
  Chefer, Gur & Wolf, "Transformer Interpretability Beyond Attention
  Visualization", CVPR 2021.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lapjax.attribution import relevance
from lapjax.classifier import Classifier, from_flax
from lapjax.models import vit

_active = threading.local()


def safe_divide(a: jax.Array, b: jax.Array) -> jax.Array:
  """``a / (b + 1e-9)``, 0 where ``b == 0`` (Chefer et al.'s stabiliser)."""
  den = b + 1e-9
  den = jnp.where(den == 0, 1e-9, den)
  return jnp.where(b != 0, a / den, 0.0)


@dataclasses.dataclass(frozen=True)
class ChefersAlphaBeta:
  """LRP-αβ on a dense layer without its bias (Chefer et al.'s ``Linear``).

  .. math:: R_i = \\alpha \\sum_j \\frac{x_i^+ w_{ij}^+ + x_i^- w_{ij}^-}
     {z^+_j} R_j - \\beta \\sum_j \\frac{x_i^+ w_{ij}^- + x_i^- w_{ij}^+}
     {z^-_j} R_j

  with ``z^+ = x^+ W^+ + x^- W^-``, ``z^- = x^+ W^- + x^- W^+`` and
  ``safe_divide``. The paper and its code use ``alpha = 1, beta = 0``.

  Attributes:
    alpha: weight of the positive contributions.
    beta: weight of the negative ones, ``alpha - beta = 1``.
  """
  alpha: float = 1.0
  beta: float = 0.0

  def __post_init__(self):
    if self.alpha - self.beta != 1:
      raise ValueError(f"alpha - beta must equal 1; got alpha={self.alpha}, "
                       f"beta={self.beta}")

  def __call__(self, x, linear, kernel, bias, relevance_out, *,
               non_negative: bool | None = None):
    del non_negative            # both sign parts are cheap on dense layers
    zero = jnp.zeros_like(bias)
    xp, xn = jnp.maximum(x, 0), jnp.minimum(x, 0)
    wp, wn = jnp.maximum(kernel, 0), jnp.minimum(kernel, 0)

    def share(w1, w2):
      z, vjp = jax.vjp(lambda a, b: linear(a, w1, zero) + linear(b, w2, zero),
                       xp, xn)
      gp, gn = vjp(safe_divide(relevance_out, z))
      return xp * gp + xn * gn

    out = self.alpha * share(wp, wn)
    if self.beta:
      out = out - self.beta * share(wn, wp)
    return out


def _dense(x, kernel, bias):
  return jnp.dot(x, kernel) + bias


def _scaled_cotangent(scale: float):
  """Identity forward; the cotangent multiplied by ``scale``."""

  @jax.custom_vjp
  def ident(x):
    return x

  ident.defvjp(lambda x: (x, None), lambda _, c: (scale * c,))
  return ident


_halve = _scaled_cotangent(0.5)


def stabilizer_factor(z: jax.Array) -> jax.Array:
  """``z / (z + 1e-9)`` (0 at ``z = 0``): the relevance ``R / z`` becomes
  the released code's ``safe_divide(R, z)`` when multiplied by it."""
  return safe_divide(z, z)


@jax.custom_vjp
def _times_in_backward(x: jax.Array, factor: jax.Array) -> jax.Array:
  """``x`` forward; its cotangent multiplied by ``factor`` backward."""
  return x


_times_in_backward.defvjp(
    lambda x, factor: (x, factor),
    lambda factor, c: (c * factor, jnp.zeros_like(factor)))


def _stabilized(z: jax.Array, factor_of: jax.Array | None = None
                ) -> jax.Array:
  """``z`` whose per-unit relevance is divided as the released code does
  (``safe_divide(R, w)``, ``w = factor_of`` or ``z``)."""
  w = z if factor_of is None else factor_of
  return _times_in_backward(z, stabilizer_factor(w))


@jax.custom_vjp
def _residual_branch(skip: jax.Array, branch: jax.Array) -> jax.Array:
  """``branch`` forward; backward: Chefer's rule for ``skip + branch``.

  The model adds the returned value to ``skip`` itself, so the skip also
  receives the sum's per-unit relevance ``c`` directly; this backward adds
  ``(f s_u - 1) c`` to it and gives the branch ``s_v c'``, so that in
  total ``c_u = f s_u c'`` and ``c_v = s_v c'``: ``c' = safe_divide(R, u +
  v)`` per unit (the z-rule), ``s_u = f_u / sum(u c')``, ``f_u = |sum u c'|
  / (|sum u c'| + |sum v c'|) sum R`` (per image), and ``f`` the
  stabiliser of the copy of ``u`` that the block also normalises (the
  released ``Clone``, whose other half is stabilised at the norm's input).
  """
  return branch


def _residual_forward(skip, branch):
  return branch, (skip, branch)


def _residual_backward(saved, c):
  skip, branch = saved
  out = skip + branch
  axes = tuple(range(1, c.ndim))
  total = (out * c).sum(axes, keepdims=True)             # sum R, per image
  scaled = c * stabilizer_factor(out)                    # safe_divide(R, z)
  r_skip = (skip * scaled).sum(axes, keepdims=True)
  r_branch = (branch * scaled).sum(axes, keepdims=True)
  denom = jnp.abs(r_skip) + jnp.abs(r_branch)
  s_skip = safe_divide(safe_divide(jnp.abs(r_skip), denom) * total, r_skip)
  s_branch = safe_divide(safe_divide(jnp.abs(r_branch), denom) * total,
                         r_branch)
  return (s_skip * stabilizer_factor(skip) * scaled - c,
          s_branch * scaled)


_residual_branch.defvjp(_residual_forward, _residual_backward)


class _Propagation:
  """One traced forward pass of a ViT with Chefer's rules installed."""

  def __init__(self, rule: ChefersAlphaBeta):
    self.rule = rule
    self.skips: dict[tuple[str, ...], jax.Array] = {}
    self.head_dims: dict[tuple[str, ...], int] = {}

  def _rule_dense(self):
    return relevance._rule_layer(self.rule, _dense, False)  # noqa: SLF001

  def intercept(self, next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or not module.path:
      return next_fun(*args, **kwargs)
    parent = module.parent
    if isinstance(module, nn.Dense):
      x = args[0]
      params = module.variables["params"]
      kernel = params["kernel"]
      if isinstance(parent, vit.Attention) and module.name == "qkv":
        self.head_dims[parent.path] = kernel.shape[0] // parent.num_heads
      if isinstance(parent, vit.Attention) and module.name == "proj":
        x = _halve(_stabilized(x))         # A v: half to A, half to v
      if isinstance(parent, vit.VisionTransformer):
        x = _stabilized(x)                 # the class token's read-out
      bias = params.get("bias", jnp.zeros(kernel.shape[-1:], kernel.dtype))
      return self._rule_dense()(x, kernel, bias)
    if isinstance(module, nn.LayerNorm):
      x = args[0]
      if isinstance(parent, vit.Block) and module.name in ("norm1", "norm2"):
        self.skips[(*parent.path, module.name)] = x
        x = _stabilized(x)                 # this copy of the residual stream
      return relevance._passing(  # noqa: SLF001
          lambda z: next_fun(z, *args[1:], **kwargs))(x)
    if isinstance(module, vit.AttentionProbs):
      # Softmax: identity; then q k^T (unscaled, as the released code
      # divides it): half to q, half to k.
      scores = args[0]
      qk = scores * self.head_dims[parent.path] ** 0.5
      return relevance._passing(  # noqa: SLF001
          lambda s: next_fun(s, *args[1:], **kwargs))(
              _halve(_stabilized(scores, qk)))
    if isinstance(module, vit.Attention):
      return _residual_branch(self.skips.pop((*parent.path, "norm1")),
                              next_fun(*args, **kwargs))
    if isinstance(module, vit.Mlp):
      return _residual_branch(self.skips.pop((*parent.path, "norm2")),
                              self._mlp(module, args[0]))
    return next_fun(*args, **kwargs)

  def _mlp(self, module: vit.Mlp, x: jax.Array) -> jax.Array:
    """``fc2(act(fc1(x)))`` with rule layers and an identity ``act`` (run
    here rather than by the module: the GELU is a function, not a
    layer)."""
    params = module.variables["params"]
    fc1, fc2 = params["fc1"], params["fc2"]
    h = self._rule_dense()(x, fc1["kernel"], fc1["bias"])
    g = relevance._passing(module.act)(h)  # noqa: SLF001
    return self._rule_dense()(g, fc2["kernel"], fc2["bias"])


@contextlib.contextmanager
def _propagating(rule: ChefersAlphaBeta):
  previous = getattr(_active, "rule", None)
  _active.rule = rule
  _active.traced = 0
  try:
    yield _active
  finally:
    _active.rule = previous


def _propagate(module: nn.Module, x: jax.Array, **kwargs: Any) -> jax.Array:
  """``module(x)`` with the active rules (``from_flax(method=...)``, so the
  rules sit inside the tapping interceptor: taps see rule layers)."""
  rule = getattr(_active, "rule", None)
  if rule is None:
    return module(x, **kwargs)
  _active.traced += 1
  with nn.intercept_methods(_Propagation(rule).intercept):
    return module(x, **kwargs)


def transformer_relevance_classifier(module: nn.Module, variables,
                                     **from_flax_kwargs) -> Classifier:
  """A classifier of a lapjax ViT ready for T-Attr's relevance propagation.

  The plain model (``from_flax``) everywhere, except inside
  ``attention_relevance`` (``transformer.transformer_attribution``), which
  traces it with Chefer et al.'s rules. While rules are active, the MLP
  runs inside the interceptor, so ``block{i}/mlp/fc1`` / ``fc2`` are not
  tappable (attention, blocks and norms are).

  Args:
    module: a ``lapjax.models.vit.VisionTransformer``.
    variables: its variables.
    **from_flax_kwargs: as for ``from_flax`` (``layers``: the attention
      taps, ``lapjax.models.vit.attention_taps(depth)``).

  Raises:
    ValueError: for other modules (the rules follow this architecture).
  """
  if not isinstance(module, vit.VisionTransformer):
    raise ValueError(
        "transformer_relevance_classifier propagates relevance through "
        "lapjax.models.vit.VisionTransformer; got "
        f"{type(module).__name__} (for CNNs use "
        "lapjax.attribution.relevance_classifier)")
  if "method" in from_flax_kwargs:
    raise ValueError("transformer_relevance_classifier runs the module's "
                     f"__call__; got method={from_flax_kwargs['method']!r}")
  return from_flax(module, variables, method=_propagate, **from_flax_kwargs)


def attention_relevance(classifier: Classifier, x: jax.Array,
                        layers: Sequence[str], cotangents: jax.Array, *,
                        rule: ChefersAlphaBeta = ChefersAlphaBeta()
                        ) -> dict[str, jax.Array]:
  """LRP relevance of attention probabilities, ``{layer: [C', B, heads, T,
  T]}``.

  The relevance handed to the logits is the cotangent itself (``R =
  one_hot`` for an int target, as Chefer et al. initialise it); the
  relevance of a tap ``A`` is ``A * c_A`` with ``c_A`` the per-unit
  relevance that reaches it.

  Raises:
    ValueError: when ``classifier`` does not propagate relevance (built
      without ``transformer_relevance_classifier``): its backward pass
      would silently be the plain gradient.
  """
  shapes = jax.eval_shape(classifier.apply, x)[1]
  zeros = {n: jnp.zeros(shapes[n].shape, shapes[n].dtype) for n in layers}
  with _propagating(rule) as state:

    def run(deltas):
      logits, feats = classifier.apply(x, deltas)
      return logits, ({n: feats[n] for n in layers}, logits)

    _, vjp, (attn, logits) = jax.vjp(run, zeros, has_aux=True)
    nonzero = logits != 0
    per_unit = jax.vmap(lambda c: vjp(jnp.where(
        nonzero, c / jnp.where(nonzero, logits, 1.0), 0.0).astype(
            logits.dtype))[0])(cotangents)
    traced = state.traced
  if not traced:
    raise ValueError(
        "this classifier does not propagate relevance (its backward pass "
        "would silently be the plain gradient); build it with "
        "lapjax.attribution.relevance_transformer."
        "transformer_relevance_classifier(module, variables, layers=...)")
  return {n: attn[n][None] * per_unit[n] for n in layers}
