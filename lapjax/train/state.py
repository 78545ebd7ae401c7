"""The training state: one pytree, checkpointed whole by Orbax."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
  """Everything a run needs to continue exactly where it stopped.

  Attributes:
    step: optimiser steps taken, int32 scalar.
    params: model parameters.
    batch_stats: BatchNorm running statistics (empty dict without BatchNorm).
    opt_state: optax state.
    rng: raw key data (``jax.random.key_data``); the key of step ``s`` is
      ``fold_in(wrap_key_data(rng), s)``, so resumed runs draw the same keys.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array

  def step_key(self) -> jax.Array:
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       key: jax.Array, input_shape: tuple[int, ...]
                       ) -> TrainState:
  """Initialises parameters for images of ``input_shape = (H, W, C)``."""
  init_key, rng = jax.random.split(key)

  def init(k):          # one compiled program, not one per initialiser
    variables = model.init(k, jnp.zeros((1, *input_shape), jnp.float32))
    return variables, tx.init(variables["params"])

  variables, opt_state = jax.jit(init)(init_key)
  return TrainState(step=jnp.array(0, jnp.int32), params=variables["params"],
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=opt_state, rng=jax.random.key_data(rng))
