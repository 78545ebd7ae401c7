r"""A LAP as a standalone predictor, the ImageNet setting (paper 000, D.5.2).

With many classes a LAP's DC maps cannot be read off by a threshold as in
the binary setting (App. D.5.1, ``lapjax.evaluation.lap_report``). The
paper sums each DC map into a *DC-size feature*,

.. math::
  F_m = \sum_{i, j} I^{m}_{i, j}, \qquad F \in \mathbb{R}^{M},

and trains a 2-layer network to classify images from :math:`F` alone; its
top-1 / top-5 accuracy w.r.t. the labels is the LAP's *predictivity* and
w.r.t. the model's predictions its *compatibility* (Tab. 19).

Choices the paper leaves open, made here: the features are standardised
with the training set's mean and standard deviation (a DC-size feature
scales with the map's area); the network is ``Dense(hidden) -> ReLU ->
Dense(K)``, He-normal weights, zero biases, from ``key``; it is trained
full-batch with AdamW on the softmax cross-entropy for ``steps`` steps in
one compiled ``lax.scan`` (no shuffling, no early stopping), so that the
same inputs and key give the same predictor.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike


class StandalonePredictor(NamedTuple):
  """A trained 2-layer predictor on standardised DC-size features."""
  feature_mean: jax.Array       # [M]
  feature_scale: jax.Array      # [M]
  hidden_kernel: jax.Array      # [M, hidden]
  hidden_bias: jax.Array        # [hidden]
  output_kernel: jax.Array      # [hidden, K]
  output_bias: jax.Array        # [K]


def dc_size_features(maps: ArrayLike) -> jax.Array:
  """``[B, H, W, M]`` DC importance maps -> ``[B, M]`` DC-size features.

  :math:`F_m` is the sum of the importance probabilities of the ``m``-th
  DC map over its pixels (paper 000, App. D.5.2).
  """
  maps = jnp.asarray(maps)
  if maps.ndim != 4:
    raise ValueError(f"maps must be [B, H, W, M] (one map per DC); got shape "
                     f"{maps.shape}")
  return maps.sum(axis=(1, 2))


def standalone_logits(predictor: StandalonePredictor,
                      features: ArrayLike) -> jax.Array:
  """``[B, M]`` DC-size features -> ``[B, K]`` logits."""
  z = (jnp.asarray(features) - predictor.feature_mean) / (
      predictor.feature_scale)
  h = jax.nn.relu(z @ predictor.hidden_kernel + predictor.hidden_bias)
  return h @ predictor.output_kernel + predictor.output_bias


@partial(jax.jit, static_argnames=("num_classes", "hidden", "steps",
                                   "learning_rate", "weight_decay"))
def _fit(features, labels, key, *, num_classes, hidden, steps,
         learning_rate, weight_decay):
  mean = features.mean(0)
  scale = jnp.maximum(features.std(0), 1e-6)     # a constant feature stays 0
  k1, k2 = jax.random.split(key)
  init = jax.nn.initializers.he_normal()
  m = features.shape[-1]
  # Only the weights train; the standardisation is data.
  weights = (init(k1, (m, hidden), jnp.float32),
             jnp.zeros((hidden,), jnp.float32),
             init(k2, (hidden, num_classes), jnp.float32),
             jnp.zeros((num_classes,), jnp.float32))
  tx = optax.adamw(learning_rate, weight_decay=weight_decay)

  def loss(w):
    return optax.softmax_cross_entropy_with_integer_labels(
        standalone_logits(StandalonePredictor(mean, scale, *w), features),
        labels).mean()

  def step(carry, _):
    w, opt_state = carry
    value, grads = jax.value_and_grad(loss)(w)
    updates, opt_state = tx.update(grads, opt_state, w)
    return (optax.apply_updates(w, updates), opt_state), value

  (weights, _), losses = jax.lax.scan(step, (weights, tx.init(weights)),
                                      None, length=steps)
  return StandalonePredictor(mean, scale, *weights), losses


def fit_standalone_predictor(features: ArrayLike, labels: ArrayLike, *,
                             num_classes: int, key: jax.Array,
                             hidden: int = 64, steps: int = 500,
                             learning_rate: float = 1e-2,
                             weight_decay: float = 1e-4
                             ) -> tuple[StandalonePredictor, jax.Array]:
  """Trains the 2-layer predictor of DC-size features (paper 000, D.5.2).

  Args:
    features: ``[N, M]`` DC-size features of the training images
      (``dc_size_features``).
    labels: ``[N]`` int targets in ``[0, num_classes)``: the true classes
      (a predictivity probe) or the model's predictions.
    num_classes: ``K``.
    key: initialisation key; the same key and data give the same predictor.
    hidden: width of the hidden layer.
    steps: full-batch AdamW steps.
    learning_rate: AdamW learning rate.
    weight_decay: AdamW decoupled weight decay.

  Returns:
    ``(predictor, losses [steps])``: the training cross-entropy before each
    step, to check convergence.
  """
  features = jnp.asarray(features, jnp.float32)
  labels = jnp.asarray(labels, jnp.int32)
  if features.ndim != 2 or labels.shape != features.shape[:1]:
    raise ValueError(f"features must be [N, M] and labels [N]; got "
                     f"{features.shape} and {labels.shape}")
  if features.shape[0] < 2:
    raise ValueError(f"need at least 2 training images; got "
                     f"{features.shape[0]}")
  lo, hi = int(labels.min()), int(labels.max())
  if lo < 0 or hi >= num_classes:
    raise ValueError(f"labels must be in [0, {num_classes}); got [{lo}, "
                     f"{hi}]")
  return _fit(features, labels, key, num_classes=num_classes, hidden=hidden,
              steps=steps, learning_rate=learning_rate,
              weight_decay=weight_decay)


def top_k_accuracy(logits: ArrayLike, targets: ArrayLike, *,
                   k: int = 1) -> jax.Array:
  """``[B]``: 1.0 where ``targets`` is among the ``k`` highest logits.

  Higher is better. Ties at the ``k``-th place are broken towards the lower
  class index (``jax.lax.top_k``).
  """
  logits = jnp.asarray(logits)
  if not 1 <= k <= logits.shape[-1]:
    raise ValueError(f"k must be in [1, {logits.shape[-1]}]; got {k}")
  _, top = jax.lax.top_k(logits, k)
  return (top == jnp.asarray(targets)[:, None]).any(-1).astype(jnp.float32)


def standalone_evaluation(train_features: ArrayLike, train_labels: ArrayLike,
                          test_features: ArrayLike, test_labels: ArrayLike,
                          model_predictions: ArrayLike, *, num_classes: int,
                          key: jax.Array, ks: Sequence[int] = (1, 5),
                          **fit_kwargs) -> dict[str, float]:
  """Predictivity and compatibility of a LAP (paper 000, Tab. 19).

  Trains the predictor on ``(train_features, train_labels)`` and scores it
  on the test images: ``predictivity_top{k}`` is its top-``k`` accuracy
  w.r.t. ``test_labels``, ``compatibility_top{k}`` w.r.t. the model's
  ``model_predictions``. ``k`` not below ``num_classes`` is left out (it
  would be 1 by construction).

  Returns:
    ``{'predictivity_top1', 'compatibility_top1', ..., 'final_loss'}``.
  """
  predictor, losses = fit_standalone_predictor(
      train_features, train_labels, num_classes=num_classes, key=key,
      **fit_kwargs)
  logits = standalone_logits(predictor, jnp.asarray(test_features,
                                                    jnp.float32))
  out = {}
  for k in ks:
    if k >= num_classes:
      continue
    out[f"predictivity_top{k}"] = float(top_k_accuracy(
        logits, test_labels, k=k).mean())
    out[f"compatibility_top{k}"] = float(top_k_accuracy(
        logits, np.asarray(model_predictions), k=k).mean())
  out["final_loss"] = float(losses[-1])
  return out
