"""Orbax checkpoints of the ``TrainState`` pytree in ``workdir/checkpoints``.

Only finite states are saved (the loop checks before saving), so the newest
checkpoint is always a good one and ``max_to_keep`` never rotates the last
good state away. A checkpoint that cannot be read (files damaged or cut
short) is skipped with a warning in favour of the one before it.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
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


BEST_FOLDER = "checkpoints-best"


def best_checkpoint_manager(workdir: str, *, metric: str,
                            higher_is_better: bool) -> ocp.CheckpointManager:
  """The manager of ``workdir/checkpoints-best``: one checkpoint, the one
  with the best ``metric`` (saved with it; Orbax writes a step to a
  temporary folder and renames it when complete, and removes the older
  one after that, so a kill leaves a complete best checkpoint)."""
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), BEST_FOLDER),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=1, best_fn=lambda metrics: metrics[metric],
          best_mode="max" if higher_is_better else "min",
          keep_checkpoints_without_metrics=False, create=True))


def best_so_far(manager: ocp.CheckpointManager, metric: str
                ) -> tuple[int, float] | None:
  """``(step, value)`` of the kept best checkpoint, or None."""
  step = manager.best_step()
  if step is None:
    return None
  return step, float(manager.metrics(step)[metric])


def latest_step(workdir: str) -> int | None:
  """The newest complete checkpoint step in ``workdir``, or None."""
  path = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(path):
    return None
  with ocp.CheckpointManager(path) as manager:
    return manager.latest_step()


def all_finite(tree: Any) -> bool:
  """Whether every floating-point leaf of ``tree`` is finite (host sync)."""
  leaves = [x for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return bool(all(np.all(np.isfinite(np.asarray(x))) for x in leaves))


def restore(manager: ocp.CheckpointManager, like: TrainState,
            step: int | None = None) -> TrainState:
  """Restores ``step`` with the structure and shardings of ``like``.

  With ``step=None``, the newest checkpoint that can be read: a damaged
  newer one is skipped with a ``UserWarning`` naming it and the error.

  Raises:
    FileNotFoundError: there is no checkpoint.
    ValueError: no checkpoint can be read (the errors are listed).
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  if step is not None:
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}")
  errors = []
  for s in steps:
    try:
      state = manager.restore(s, args=ocp.args.StandardRestore(abstract))
    # Orbax, TensorStore and the JSON reader each raise their own types
    # for damaged files; any of them means "try the previous checkpoint".
    except Exception as e:  # noqa: BLE001
      errors.append(f"step {s}: {type(e).__name__}: {str(e)[:300]}")
      later = [t for t in steps if t < s]
      warnings.warn(
          f"checkpoint step {s} in {manager.directory} cannot be read "
          f"({type(e).__name__}: {str(e)[:300]}); "
          + (f"falling back to step {later[0]}" if later else
             "no earlier checkpoint"), stacklevel=2)
      continue
    return state
  raise ValueError(f"no checkpoint in {manager.directory} can be read: "
                   + "; ".join(errors))


def set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> list[str]:
  """Moves the checkpoints ``steps`` (unreadable ones) out of the manager's
  folder, to ``<workdir>/checkpoints-unreadable/<step>``, so the run can
  save those steps again; returns the new paths."""
  root = os.fspath(manager.directory)
  aside = os.path.join(os.path.dirname(root), "checkpoints-unreadable")
  os.makedirs(aside, exist_ok=True)
  moved = []
  for s in steps:
    target = os.path.join(aside, str(s))
    suffix = 0
    while os.path.exists(target):
      suffix += 1
      target = os.path.join(aside, f"{s}.{suffix}")
    os.replace(os.path.join(root, str(s)), target)
    moved.append(target)
  manager.reload()
  return moved


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
