"""Tiny models with known attributions, shared by the attribution tests."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lapjax import Classifier, from_flax
from lapjax.models import SmallCNN


def linear_classifier(weights: jax.Array, bias: jax.Array | None = None
                      ) -> Classifier:
  """``logits_k = sum_{hwc} W[k, h, w, c] x[h, w, c] + b_k``."""
  def apply(x, deltas=None):
    del deltas
    logits = jnp.einsum("khwc,bhwc->bk", weights, x)
    return logits + (0 if bias is None else bias), {}
  return Classifier(apply=apply, layers=())


class LinearHead(nn.Module):
  """conv -> ReLU ('features') -> global average pool -> dense: CAM holds."""
  num_classes: int = 3

  @nn.compact
  def __call__(self, x):
    a = nn.relu(nn.Conv(5, (3, 3), name="conv")(x))
    a = Identity(name="features")(a)
    return nn.Dense(self.num_classes, name="head")(a.mean(axis=(1, 2)))


class Identity(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x


def linear_head(key=0, shape=(2, 6, 10, 3)):
  model = LinearHead()
  x = jax.random.uniform(jax.random.key(key + 1), shape)
  v = model.init(jax.random.key(key), x)
  return model, v, from_flax(model, v, layers=["features"]), x


def small_cnn(shape=(3, 12, 20, 3), num_classes=4):
  """A SmallCNN with non-trivial BatchNorm statistics, H != W inputs."""
  model = SmallCNN(num_classes, widths=(4, 8))
  x = jax.random.normal(jax.random.key(7), shape)
  v = model.init(jax.random.key(3), x)
  return model, v, x
