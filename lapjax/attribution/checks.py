"""Input checks that hold under ``jax.jit``, and warnings about likely misuse.

The methods check their inputs (finite images, targets in range, SLOC's
finite model outputs) at once when the values are concrete. Inside ``jit``
the values are traced, so the same checks are ``checkify.debug_check`` s
(``core.check_traced``): dropped from a plain ``jit``, so a jitted method
costs what it did, and kept by ``jit_checked``, which jits the
``checkify``-ed function and raises the failed check as a ``ValueError``
naming the argument, what was expected and what was given. The evaluation
path (``lapjax.evaluation.explanations``) runs every method this way.

``warn_suspect_inputs`` runs at a method's first eager call per classifier
and warns once about two silent mistakes: a classifier that returns
probabilities instead of logits, and float images in ``[0, 255]``.
"""

from __future__ import annotations

import functools
import threading
import warnings
import weakref
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import checkify

from lapjax.classifier import Classifier

# A float image whose values are all >= 0 and reach above this is taken for
# [0, 255] pixels (models see [0, 1] or normalised, roughly [-2.2, 2.7]).
PIXEL_SCALE_THRESHOLD = 10.0
PROBABILITY_SUM_TOLERANCE = 1e-3
WARNING_IMAGES = 4     # images of the first call the probability check runs
# Kinds checked per classifier, keyed weakly by its apply function so that
# the memo never keeps a model's variables alive.
_seen: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_seen_lock = threading.Lock()


def jit_checked(fn: Callable[..., jax.Array], **jit_kwargs
                ) -> Callable[..., jax.Array]:
  """``jax.jit(fn)`` that raises the lapjax input checks traced inside it.

  ``fn`` is ``checkify``-ed (user checks only: no NaN or index checks on
  every operation), jitted with ``jit_kwargs``, and each call raises
  ``ValueError(message)`` if a check failed, after the computation (one
  scalar flag comes back with the result).

  Example::

    maps = jit_checked(lambda x, t: grad_cam(clf, x, t, layer="block4"))(
        images, labels)    # ValueError: targets must be class indices ...
  """
  checked = jax.jit(checkify.checkify(fn, errors=checkify.user_checks),
                    **jit_kwargs)

  @functools.wraps(fn)
  def call(*args, **kwargs):
    error, out = checked(*args, **kwargs)
    message = error.get()
    if message is not None:
      raise ValueError(message.removesuffix(" (`check` failed)"))
    return out

  return call


def _first_time(kind: str, classifier: Classifier) -> bool:
  """True the first time ``kind`` is asked for ``classifier``."""
  with _seen_lock:
    try:
      kinds = _seen.setdefault(classifier.apply, set())
    except TypeError:               # an apply that takes no weak reference
      return True
    first = kind not in kinds
    kinds.add(kind)
    return first


def _checked_before(kind: str, classifier: Classifier) -> bool:
  with _seen_lock:
    try:
      return kind in _seen.get(classifier.apply, ())
    except TypeError:
      return False


def warn_suspect_inputs(classifier: Classifier, x) -> None:
  """Warns once per classifier if ``x`` looks like ``[0, 255]`` pixels or
  the classifier's outputs look like probabilities (rows in ``[0, 1]``
  summing to 1, not all one-hot, ``K >= 2``), at the cost of one forward pass of
  ``WARNING_IMAGES`` images the first time. ``x`` is concrete."""
  values = np.asarray(x)
  if (values.size and values.min() >= 0
      and values.max() > PIXEL_SCALE_THRESHOLD
      and _first_time("pixels", classifier)):
    warnings.warn(
        f"x has values in [{values.min():g}, {values.max():g}]: float "
        "images in [0, 255]? lapjax passes x to the model unchanged, so "
        "scale it as the model was trained (e.g. x / 255, then the model's "
        "mean/std normalisation); shown once per classifier",
        UserWarning, stacklevel=3)
  if _checked_before("probabilities", classifier):
    return
  out = np.asarray(jax.jit(lambda x: classifier.apply(x)[0])(
      values[:WARNING_IMAGES]))
  if not _first_time("probabilities", classifier):
    return
  if out.ndim != 2 or out.shape[-1] < 2:
    return
  # One-hot rows (only 0s and 1s) may be logits; softmax rows never are.
  in_unit = bool(np.all((out >= 0) & (out <= 1))
                 and np.any((out > 0) & (out < 1)))
  sums_to_one = bool(np.all(np.abs(out.sum(-1) - 1)
                            < PROBABILITY_SUM_TOLERANCE))
  if in_unit and sums_to_one:
    warnings.warn(
        "the classifier's outputs look like probabilities (every row in "
        "[0, 1], summing to 1); lapjax expects logits: gradients of a "
        "softmax output saturate and score='prob' would apply a second "
        "softmax. Return the logits (drop the final softmax); shown once "
        "per classifier", UserWarning, stacklevel=3)
