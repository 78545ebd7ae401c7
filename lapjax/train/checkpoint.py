"""Orbax checkpoints of the ``TrainState`` pytree in ``workdir/checkpoints``."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from lapjax.train.state import TrainState


def checkpoint_manager(workdir: str, *, save_every: int,
                       max_to_keep: int = 2) -> ocp.CheckpointManager:
  """A manager saving every ``save_every`` steps, keeping the newest few."""
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(
          save_interval_steps=save_every, max_to_keep=max_to_keep,
          create=True))


def latest_step(workdir: str) -> int | None:
  """The newest complete checkpoint step in ``workdir``, or None."""
  path = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(path):
    return None
  with ocp.CheckpointManager(path) as manager:
    return manager.latest_step()


def restore(manager: ocp.CheckpointManager, like: TrainState,
            step: int | None = None) -> TrainState:
  """Restores ``step`` (default: newest) with the structure and shardings of
  ``like``."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}")
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def save(manager: ocp.CheckpointManager, state: TrainState, *,
         step: int | None = None, force: bool = False) -> bool:
  """Saves ``state`` if its step is due (or ``force``); returns whether.

  Pass ``step`` (equal to ``state.step``) from the host to avoid waiting for
  the device on steps that are not saved.
  """
  step = int(state.step) if step is None else step
  if not force and not manager.should_save(step):
    return False
  return manager.save(step, args=ocp.args.StandardSave(state), force=force)
