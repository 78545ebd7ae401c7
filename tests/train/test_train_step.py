"""The training step: compiled once, deterministic, and it learns."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from lapjax.data import batching, sources
from lapjax.models import create_model
from lapjax.train import cross_entropy_loss, train_step
from lapjax.train.loop import make_optimizer
from lapjax.train.state import create_train_state
from tests.train.determinism import run_twice


def _setup():
  config = default.get_config("tiny")
  config.optimizer.schedule = "constant"
  source, info = sources.make_source(config.data, "train")
  model = create_model(config.model.name, num_classes=info["num_classes"],
                       **config.model.kwargs)
  tx, _ = make_optimizer(config)
  state = create_train_state(model, tx, jax.random.key(0),
                             info["image_shape"])
  return config, source, model, tx, state


def _batch(source, config, step):
  b = batching.train_batch(source, config.batch_size, step, 0)
  return {"image": b["image"], "label": b["label"]}


def test_step_traces_once_and_is_deterministic():
  config, source, model, tx, state0 = _setup()
  def one_step(state, batch):
    return train_step(state, batch, model=model, tx=tx)

  step = jax.jit(chex.assert_max_traces(one_step, n=1))
  state, _ = run_twice(step, state0, [_batch(source, config, s)
                                      for s in range(5)])
  assert int(state.step) == 5


def test_step_keys_differ_per_step_and_survive_checkpoint_layout():
  *_, state = _setup()
  k0 = jax.random.key_data(state.step_key())
  k1 = jax.random.key_data(state.replace(step=state.step + 1).step_key())
  assert not np.array_equal(k0, k1)
  assert state.rng.dtype == np.uint32       # plain array: Orbax-friendly


@pytest.mark.parametrize("probabilities", ["softmax", "sigmoid"])
def test_loss_goes_down_on_a_fixed_batch(probabilities):
  config, source, model, tx, state = _setup()
  step = jax.jit(functools.partial(train_step, model=model, tx=tx,
                                   probabilities=probabilities))
  batch = _batch(source, config, 0)
  first = None
  for _ in range(60):
    state, metrics = step(state, batch)
    first = float(metrics["loss"]) if first is None else first
  assert float(metrics["loss"]) < 0.5 * first


def test_classification_losses_have_their_formulas():
  """Softmax cross-entropy, and per-class sigmoid BCE against one-hot
  labels averaged over classes and batch (PyTorch's BCEWithLogitsLoss)."""
  z = jnp.array([[2.0, -1.0], [0.5, 0.0]])
  y = jnp.array([0, 1])
  p = jax.nn.softmax(z)
  np.testing.assert_allclose(cross_entropy_loss(z, y),
                             -(np.log(p[0, 0]) + np.log(p[1, 1])) / 2,
                             rtol=1e-6)
  s = jax.nn.sigmoid(z)
  bce = -(np.log(s[0, 0]) + np.log(1 - s[0, 1]) + np.log(1 - s[1, 0])
          + np.log(s[1, 1])) / 4
  np.testing.assert_allclose(cross_entropy_loss(z, y, "sigmoid"), bce,
                             rtol=1e-6)
  with pytest.raises(ValueError, match="probabilities must be one of"):
    cross_entropy_loss(z, y, "softplus")
