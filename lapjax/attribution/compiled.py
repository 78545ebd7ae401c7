"""Eager calls of an attribution method run as one compiled program.

Called outside any JAX transformation, a method decorated with ``compiled``
checks its inputs concretely (finite images, targets in range; the first
call per classifier also warns about ``[0, 255]`` images and probability
outputs, ``checks.warn_suspect_inputs``), then runs
``jax.jit`` of itself, cached per method, classifier and static options:
arrays (images, targets, keys, baseline images) are the jitted arguments;
every other option (layer names, step counts, strings, the classifier) is
static. Without it, an eager call dispatched its operations one by one and
re-traced its ``lax.scan`` loops: 8-54x the jitted time on one image
(docs/benchmarks.md). Inside ``jit`` / ``vmap`` / ``grad`` the method is
traced inline, as before; an option that cannot be hashed (a list), or an
array where the method needs a concrete value (``steps=jnp.int32(8)``),
runs it eagerly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import numpy as np
from jax._src import core as jax_core  # trace_state_clean: no public API

from lapjax.attribution import checks, core
from lapjax.classifier import Classifier, check_images

CACHE_SIZE = 32      # compiled (method, classifier, options) kept
_NEEDS_A_VALUE = (jax.errors.ConcretizationTypeError,
                  jax.errors.TracerIntegerConversionError,
                  jax.errors.TracerBoolConversionError,
                  jax.errors.TracerArrayConversionError)


def compiled(method: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """``method(classifier, x, targets, **options)``, jitted when eager."""

  @functools.wraps(method)
  def call(classifier: Classifier, x, targets=None, **options):
    if not jax_core.trace_state_clean():
      return method(classifier, x, targets, **options)
    arrays = {k: v for k, v in options.items()
              if isinstance(v, (jax.Array, np.ndarray))}
    static = tuple(sorted((k, v) for k, v in options.items()
                          if k not in arrays))
    try:
      jitted = _jitted(method, classifier, static)
    except TypeError:                       # an unhashable option
      return method(classifier, x, targets, **options)
    x = x if hasattr(x, "shape") else np.asarray(x)
    check_images(x)
    host = np.asarray(x)                 # one device-to-host copy for both
    core.check_finite_images(host)
    checks.warn_suspect_inputs(classifier, host)
    if targets is not None:
      core.check_targets(targets, x.shape[0],
                         _num_classes(classifier, x.shape[1:], x.dtype))
    try:
      return jitted(x, targets, arrays)
    except _NEEDS_A_VALUE:             # an array option used as a number
      return method(classifier, x, targets, **options)

  return call


@functools.lru_cache(maxsize=CACHE_SIZE)
def _jitted(method, classifier, static):
  return jax.jit(lambda x, targets, arrays: method(
      classifier, x, targets, **dict(static), **arrays))


@functools.lru_cache(maxsize=CACHE_SIZE)
def _num_classes(classifier: Classifier, shape, dtype) -> int:
  return core.num_classes_of(classifier,
                             jax.ShapeDtypeStruct((1, *shape), dtype))
