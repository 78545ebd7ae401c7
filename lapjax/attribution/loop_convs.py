"""Convolutions inside loops, put in the layout XLA:CPU runs fast.

XLA:CPU runs a convolution with its fast (Eigen) kernel only in the
canonical layout: input ``NHWC``, kernel ``HWIO``, output ``NHWC``. Its
``convolution-canonicalization`` pass transposes the operands of other
convolutions, but only of top-level ones, not inside a ``while`` loop. The
input gradient of a convolution (JAX's transpose rule) has an ``HWOI``
kernel, so every gradient taken inside ``lax.scan`` / ``lax.map`` (the
chunked passes of integrated gradients and SmoothGrad) fell back to a naive
loop nest: 10-16x slower per convolution, 2-3.3x for a whole chunked
integrated-gradients call (``benchmarks/attribution.py --sections
chunking``: SmallCNN and ResNet-18).

``canonical_convs(fn)`` evaluates ``fn``'s jaxpr with every convolution's
operands transposed to the canonical layout in JAX (a transpose of the small
kernel per pass), so the loop body needs no rewrite. The result is the same
computation; only the operand layouts change. Other backends get ``fn``
unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax import lax
from jax.extend import core as jex


def canonical_layouts(ndim: int) -> lax.ConvDimensionNumbers:
  """``NHWC / HWIO / NHWC`` (any number of spatial dimensions)."""
  spatial = tuple(range(1, ndim - 1))
  feature_last = (0, ndim - 1, *spatial)
  return lax.ConvDimensionNumbers(
      feature_last, (ndim - 1, ndim - 2, *range(ndim - 2)), feature_last)


def canonical_conv(lhs: jax.Array, rhs: jax.Array, *,
                   dimension_numbers: lax.ConvDimensionNumbers,
                   **params: Any) -> jax.Array:
  """``conv_general_dilated`` with its operands transposed to
  ``canonical_layouts`` and the result transposed back (identical values)."""
  n = lhs.ndim
  canonical = canonical_layouts(n)
  if tuple(dimension_numbers) == tuple(canonical):
    return lax.conv_general_dilated_p.bind(
        lhs, rhs, dimension_numbers=dimension_numbers, **params)
  lhs_spec, rhs_spec, out_spec = dimension_numbers
  lhs = lax.transpose(lhs, (lhs_spec[0], *lhs_spec[2:], lhs_spec[1]))
  rhs = lax.transpose(rhs, (*rhs_spec[2:], rhs_spec[1], rhs_spec[0]))
  out = lax.conv_general_dilated_p.bind(lhs, rhs,
                                        dimension_numbers=canonical, **params)
  # Logical dimension j (batch, feature, spatial...) sits at axis
  # canonical.out_spec[j] of the result and must go to axis out_spec[j].
  perm = [0] * n
  for j, axis in enumerate(out_spec):
    perm[axis] = canonical.out_spec[j]
  return lax.transpose(out, tuple(perm))


def _inner(eqn: jex.JaxprEqn) -> jex.Jaxpr | None:
  """The jaxpr of a ``jit`` call or a ``jax.checkpoint`` (``remat2``)."""
  if eqn.primitive.name == "jit":
    return eqn.params["jaxpr"].jaxpr
  if eqn.primitive.name == "remat2":
    return eqn.params["jaxpr"]
  return None


def _has_conv(jaxpr: jex.Jaxpr) -> bool:
  return any(e.primitive is lax.conv_general_dilated_p
             or (_inner(e) is not None and _has_conv(_inner(e)))
             for e in jaxpr.eqns)


def _evaluate(jaxpr: jex.Jaxpr, consts: Sequence[Any], *args: Any
              ) -> list[Any]:
  """``jax.core.eval_jaxpr`` with convolutions made canonical. ``jit``
  calls that contain one are inlined; ``jax.checkpoint`` regions are
  checkpointed again (same policy) around the rewritten jaxpr."""
  env: dict[Any, Any] = {}

  def read(v):
    return v.val if isinstance(v, jex.Literal) else env[v]

  def write(vs, values):
    for v, x in zip(vs, values):
      if not isinstance(v, jex.DropVar):
        env[v] = x

  write(jaxpr.constvars, consts)
  write(jaxpr.invars, args)
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    inner = _inner(eqn)
    if eqn.primitive is lax.conv_general_dilated_p:
      outvals = [canonical_conv(*invals, **eqn.params)]
    elif inner is not None and _has_conv(inner):
      if eqn.primitive.name == "jit":
        outvals = _evaluate(inner, eqn.params["jaxpr"].consts, *invals)
      else:
        outvals = jax.checkpoint(
            functools.partial(_evaluate, inner, ()),
            prevent_cse=eqn.params["prevent_cse"],
            policy=eqn.params["policy"])(*invals)
    else:
      with eqn.ctx.manager:
        out = eqn.primitive.bind(*invals,
                                 **eqn.primitive.get_bind_params(eqn.params))
      outvals = out if eqn.primitive.multiple_results else [out]
    write(eqn.outvars, outvals)
  return [read(v) for v in jaxpr.outvars]


def canonical_convs(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``fn`` with every convolution in the canonical layout, for use as the
  body of a loop on XLA:CPU (identity elsewhere). ``fn`` takes and returns
  pytrees of arrays."""
  if jax.default_backend() != "cpu":
    return fn

  def wrapped(*args):
    closed, shapes = jax.make_jaxpr(fn, return_shape=True)(*args)
    out = _evaluate(closed.jaxpr, closed.consts, *jax.tree.leaves(args))
    return jax.tree.unflatten(jax.tree.structure(shapes), out)

  return wrapped
