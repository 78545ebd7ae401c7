"""Convolutions made canonical for loops on XLA:CPU (``loop_convs``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lapjax import attribution as attr
from lapjax import from_flax
from lapjax.attribution import loop_convs
from tests.attribution.models import small_cnn

CANONICAL_2D = "dim_labels=b01f_01io->b01f"

# (lhs shape, rhs shape, dimension numbers, options): layouts other than
# NHWC / HWIO, strides, input and kernel dilation, groups, 1-D and 3-D.
CASES = [
    ((2, 3, 9, 7), (4, 3, 3, 2), ("NCHW", "OIHW", "NCHW"), {}),
    ((2, 9, 7, 3), (3, 2, 4, 3), ("NHWC", "HWOI", "NHWC"),
     {"window_strides": (2, 1)}),
    ((2, 9, 7, 6), (3, 3, 3, 4), ("NHWC", "HWIO", "NCHW"),
     {"feature_group_count": 2, "rhs_dilation": (2, 1)}),
    ((2, 9, 7, 3), (3, 3, 3, 5), ("NHWC", "HWIO", "NHWC"),
     {"lhs_dilation": (2, 2), "padding": ((2, 1), (0, 2))}),
    ((2, 11, 3), (4, 3, 5), ("NWC", "WIO", "NCW"), {}),
    ((1, 5, 6, 4, 2), (2, 3, 2, 2, 3), ("NDHWC", "DHWIO", "NCDHW"), {}),
]


@pytest.mark.parametrize("lhs_shape, rhs_shape, dn, options", CASES)
def test_canonical_conv_equals_the_convolution(lhs_shape, rhs_shape, dn,
                                               options):
  lhs = jax.random.normal(jax.random.key(0), lhs_shape)
  rhs = jax.random.normal(jax.random.key(1), rhs_shape)
  options = {"window_strides": (1,) * (len(lhs_shape) - 2),
             "padding": "SAME", **options}
  f = lambda a, b: lax.conv_general_dilated(a, b, dimension_numbers=dn,
                                           **options)
  expected = f(lhs, rhs)
  jaxpr = jax.make_jaxpr(f)(lhs, rhs)
  (eqn,) = [e for e in jaxpr.jaxpr.eqns
            if e.primitive is lax.conv_general_dilated_p]
  got = loop_convs.canonical_conv(lhs, rhs, **eqn.params)
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  # and through canonical_convs, jitted, with a gradient
  g = lambda a, b: jax.grad(lambda u: jnp.sum(jnp.sin(f(u, b))))(a)
  np.testing.assert_allclose(jax.jit(loop_convs.canonical_convs(g))(lhs, rhs),
                             g(lhs, rhs), rtol=1e-4, atol=1e-5)


def _conv_layouts(jaxpr):
  """The dimension numbers of every convolution in a jaxpr (``jit`` calls
  included)."""
  out = []
  for e in jaxpr.eqns:
    if e.primitive is lax.conv_general_dilated_p:
      out.append(tuple(e.params["dimension_numbers"]))
    elif e.primitive.name == "jit":
      out += _conv_layouts(e.params["jaxpr"].jaxpr)
    elif e.primitive.name == "remat2":
      out += _conv_layouts(e.params["jaxpr"])
  return out


@pytest.mark.parametrize("wrap", [jax.jit, jax.checkpoint])
def test_input_gradients_become_canonical_inside_jit_and_checkpoint(wrap):
  k = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
  conv = wrap(lambda u: jnp.sin(lax.conv_general_dilated(
      u, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))))
  g = jax.grad(lambda u: jnp.sum(conv(u) ** 2))
  x = jax.random.normal(jax.random.key(0), (2, 6, 5, 3))
  canonical = tuple(loop_convs.canonical_layouts(4))
  # The transpose rule's input-gradient convolution has an HWOI kernel.
  layouts = _conv_layouts(jax.make_jaxpr(g)(x).jaxpr)
  assert canonical in layouts and any(dn != canonical for dn in layouts)
  wrapped = loop_convs.canonical_convs(g)
  assert set(_conv_layouts(jax.make_jaxpr(wrapped)(x).jaxpr)) == {canonical}
  np.testing.assert_allclose(wrapped(x), g(x), rtol=1e-5, atol=1e-5)


def test_chunked_gradients_compile_to_canonical_convolutions_only():
  # Integrated gradients runs its gradient passes inside lax.scan; every
  # convolution of the compiled program (the loop body included) must have
  # the layout XLA:CPU's fast kernel needs.
  model, v, _ = small_cnn()
  clf = from_flax(model, v, layers=["block1"])
  x = jax.random.normal(jax.random.key(0), (3, 12, 20, 3))
  f = jax.jit(lambda x: attr.integrated_gradients(clf, x, jnp.array(
      [0, 1, 2]), steps=8, chunk_size=6))
  hlo = f.lower(x).compile().as_text()
  labels = [line.split("dim_labels=")[1].split(",")[0]
            for line in hlo.splitlines() if " convolution(" in line]
  assert "while" in hlo and labels
  assert all("dim_labels=" + lab == CANONICAL_2D for lab in labels), labels


def test_composes_with_vmap_and_grad():
  k = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
  g = jax.grad(lambda u, s: jnp.sum(jnp.tanh(s * lax.conv_general_dilated(
      u, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))))
  wrapped = loop_convs.canonical_convs(g)
  x = jax.random.normal(jax.random.key(0), (2, 6, 5, 3))
  scales = jnp.array([0.5, 1.0, 2.0])
  np.testing.assert_allclose(
      jax.vmap(wrapped, (None, 0))(x, scales),
      jax.vmap(g, (None, 0))(x, scales), rtol=1e-4, atol=1e-5)
  second = lambda f: jax.grad(lambda s: jnp.sum(f(x, s) ** 2))(1.5)
  np.testing.assert_allclose(second(wrapped), second(g), rtol=1e-4)
