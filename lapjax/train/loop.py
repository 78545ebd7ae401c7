"""``train_and_evaluate(config, workdir)``: the optax training loop.

One jitted step over a ``jax.sharding`` mesh (batch split on ``'data'``, state
replicated); Orbax checkpoints every ``config.checkpoint_every`` steps and at
the end, with the config saved beside them as ``config.json``; automatic
resume from the newest checkpoint in ``workdir``; a progress bar with loss and
images/s; metrics as JSON lines in ``workdir/metrics.jsonl``.

Resuming is exact: training batch ``s`` and the key of step ``s`` are pure
functions of ``(seed, s)``, so a run interrupted and resumed ends with the
parameters of an uninterrupted run (tested bit for bit).

Non-finite steps: every step flags a non-finite loss, gradient or new state
(``train_step``'s ``nonfinite`` metric, no host sync per step); the host
reads the flags only when it logs or saves. With
``config.on_nonfinite='stop'`` (default) the run stops with a
``NonFiniteError`` naming the step and the last good checkpoint, and never
saves a non-finite state; with ``'skip'`` such steps leave the state as it
was and are counted (``nonfinite_steps`` in ``metrics.jsonl``).

Options of paper 000's protocol: ``config.balanced_batches`` draws every
batch with the same count of each class (``batching.balanced_train_indices``,
as resumable as the plain order); ``config.best_checkpoint`` measures a
validation metric at every checkpoint and keeps the best state in
``workdir/checkpoints-best`` (``lapjax.train.validation``;
``load_state(..., which='best')``, ``evaluate.py --checkpoint=best``).
``config.init_from`` starts from another run (``init_from_run``; LAP runs
check the DC systems match, and ``config.lap.heads_from`` seeds LAP-Pools
from detached LAPs: ``lapjax.train.lap_init``).

The loss terms live in ``lapjax.train.objectives``; the run folder's plain
files in ``lapjax.train.run_folder``. For tests of crash recovery, the
environment variable ``LAPJAX_KILL_AFTER_CHECKPOINT=<step>`` makes the
process kill itself (SIGKILL) right after the checkpoint of that step is
written.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import time
import warnings
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from lapjax import lap
from lapjax.data import batching, sources
from lapjax.data import boxes as boxes_lib
from lapjax.models import create_model
from lapjax.train import (
  checkpoint,
  lap_init,
  pretrained,
  run_folder,
  sharding,
  validation,
)
from lapjax.train.config import (
  ON_NONFINITE,
  heads_from_pairs,
  load_run_config,
  validate,
)
from lapjax.train.objectives import (
  ExplainLoss,
  LAPTraining,
  cross_entropy_loss,
  dc_membership,
  loss_inputs,
  training_loss,
)
from lapjax.train.state import TrainState, create_train_state

__all__ = ["ExplainLoss", "LAPTraining", "NonFiniteError", "build_model",
           "cross_entropy_loss", "dc_membership", "graft", "init_from_run",
           "lap_map_layers", "load_state", "make_optimizer",
           "make_train_step", "predict", "train_and_evaluate", "train_step",
           "trainable_mask", "trainable_prefixes"]

KILL_AFTER_CHECKPOINT = "LAPJAX_KILL_AFTER_CHECKPOINT"


class NonFiniteError(FloatingPointError):
  """A training step produced a non-finite loss, gradient or state."""


def build_model(config: ml_collections.ConfigDict, info: dict[str, Any]
                ) -> nn.Module:
  """The model of ``config.model``, LAP-extended as ``config.lap`` says;
  with ``config.pretrained``, behind its card's input normalisation."""
  kwargs = dict(config.model.kwargs)
  c = config.lap
  if c.mode == "off":
    model = create_model(config.model.name, num_classes=info["num_classes"],
                         **kwargs)
    if config.pretrained.path is not None:
      model = pretrained.normalized(config, model)
    return model
  num_dcs = dc_membership(info).shape[0]
  if c.mode == "plugged":
    spec = lap.LAPSpec(tuple(c.places), num_dcs,
                       head_widths=tuple(c.head_widths),
                       aggregation=c.aggregation, alpha_init=c.alpha_init,
                       eps=c.eps, discriminative=c.discriminative)
    return create_model(config.model.name, num_classes=info["num_classes"],
                        pool=spec, **kwargs)
  backbone = create_model(config.model.name, num_classes=info["num_classes"],
                          **kwargs)
  return lap.DetachedLAPModel(backbone, tuple(c.places), num_dcs,
                              head_widths=tuple(c.head_widths),
                              discriminative=c.discriminative)


def lap_map_layers(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """``from_flax`` taps of the LAP maps of a LAP run, shallow to deep."""
  if config.lap.mode == "plugged":
    return lap.extend.plugged_map_layers(config.lap.places)
  if config.lap.mode == "detached":
    return lap.detached_map_layers(config.lap.places)
  return ()


def trainable_prefixes(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Parameter path prefixes trained (``()``: all); detached LAPs train
  only their heads."""
  if config.lap.mode == "detached" and not config.trainable:
    return ("laps",)
  return tuple(config.trainable)


def _is_trainable(prefixes: tuple[str, ...]):
  def label(path, _):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    return any(name == p or name.startswith(p + "/") for p in prefixes)
  return label


def trainable_mask(tree: Any, prefixes: tuple[str, ...]) -> Any:
  """Bool pytree: which leaves of ``tree`` (params or batch_stats) train."""
  if not prefixes:
    return jax.tree.map(lambda _: True, tree)
  return jax.tree_util.tree_map_with_path(_is_trainable(prefixes), tree)


def make_optimizer(config: ml_collections.ConfigDict
                   ) -> tuple[optax.GradientTransformation,
                              Callable[[int], float]]:
  """The optax optimiser and learning-rate schedule of ``config.optimizer``;
  parameters outside ``trainable_prefixes`` get zero updates."""
  o = config.optimizer
  if o.schedule == "warmup_cosine":
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, o.learning_rate, min(o.warmup_steps, config.num_steps - 1),
        config.num_steps)
  elif o.schedule == "constant":
    schedule = optax.constant_schedule(o.learning_rate)
  else:
    raise ValueError(f"unknown optimizer.schedule {o.schedule!r}; use "
                     "'warmup_cosine' or 'constant'")
  if o.name == "adamw":
    tx = optax.adamw(schedule, weight_decay=o.weight_decay)
  elif o.name == "adam":
    tx = optax.adam(schedule)
  elif o.name == "sgd":
    tx = optax.sgd(schedule, momentum=o.momentum or None)
  else:
    raise ValueError(f"unknown optimizer.name {o.name!r}; use 'adamw', "
                     "'adam' or 'sgd'")
  prefixes = trainable_prefixes(config)
  if prefixes:
    tx = optax.multi_transform(
        {True: tx, False: optax.set_to_zero()},
        lambda params: trainable_mask(params, prefixes))
  return tx, schedule


def check_trainable(params: Any, prefixes: tuple[str, ...]) -> None:
  """Raises ValueError if a prefix of ``config.trainable`` matches no
  parameter (the model would silently train nothing there)."""
  names = ["/".join(str(getattr(k, "key", k)) for k in path)
           for path, _ in jax.tree_util.tree_leaves_with_path(params)]
  unmatched = [p for p in prefixes
               if not any(n == p or n.startswith(p + "/") for n in names)]
  if unmatched:
    raise ValueError(
        f"config.trainable prefixes {unmatched} match no parameter; the "
        f"model's top-level parameter names are {sorted(params)} (nested "
        "names are joined with '/', e.g. 'block2/unit0')")


def train_step(state: TrainState, batch: dict[str, jax.Array], *,
               model: nn.Module, tx: optax.GradientTransformation,
               explain: ExplainLoss | None = None,
               lap_terms: LAPTraining | None = None,
               trainable: tuple[str, ...] = (),
               probabilities: str = "softmax",
               on_nonfinite: str = "stop"
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser step on a (global) batch; returns the new state, metrics.

  The loss is ``objectives.training_loss`` (classification, and the
  ``explain`` and ``lap_terms`` terms; see there). With ``trainable``
  (``trainable_prefixes``), BatchNorm statistics outside those prefixes are
  kept as they were (the optimiser already freezes the parameters).

  The metrics hold ``loss``, ``accuracy``, ``grad_norm`` (global L2 norm of
  the gradients), ``nonfinite`` (1.0 when the loss, a gradient or the new
  parameters or BatchNorm statistics are not finite, else 0.0) and, with
  ``explain`` or ``lap_terms``, each term. ``on_nonfinite``
  (``config.on_nonfinite``): ``'stop'`` applies every step (the loop
  stops on the flag); ``'skip'`` keeps the parameters, BatchNorm
  statistics and optimiser state of a non-finite step as they were (the
  step counter still advances, so the next step sees the next batch) and
  zeroes its other metrics, so that only the flag counts it.
  """
  if on_nonfinite not in ON_NONFINITE:
    raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}; got "
                     f"{on_nonfinite!r}")
  loss_fn = functools.partial(training_loss, model=model, explain=explain,
                              lap_terms=lap_terms,
                              probabilities=probabilities)
  (loss, (logits, batch_stats, parts)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params, state.batch_stats, batch,
                             state.step_key())
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  if trainable:
    keep = trainable_mask(batch_stats, trainable)
    batch_stats = jax.tree.map(lambda k, new, old: new if k else old, keep,
                               batch_stats, state.batch_stats)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss) & _all_finite((grads, params, batch_stats))
  if on_nonfinite == "skip":
    def select(new, old):
      return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    params = select(params, state.params)
    batch_stats = select(batch_stats, state.batch_stats)
    opt_state = select(opt_state, state.opt_state)
  new_state = state.replace(step=state.step + 1, params=params,
                            batch_stats=batch_stats, opt_state=opt_state)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  extra = parts if explain is not None or lap_terms is not None else {}
  metrics = {"loss": loss, "accuracy": accuracy,
             "grad_norm": optax.tree.norm(grads), **extra}
  if on_nonfinite == "skip":
    metrics = {k: jnp.where(finite, v, jnp.zeros_like(v))
               for k, v in metrics.items()}
  metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
  return new_state, metrics


def _all_finite(tree: Any) -> jax.Array:
  """Bool scalar: every floating-point leaf of ``tree`` is finite."""
  flags = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
           if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.stack(flags).all() if flags else jnp.array(True)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    mesh: jax.sharding.Mesh,
                    explain: ExplainLoss | None = None,
                    lap_terms: LAPTraining | None = None,
                    trainable: tuple[str, ...] = (),
                    probabilities: str = "softmax",
                    on_nonfinite: str = "stop"):
  """``train_step`` jitted over ``mesh``: batch split on 'data', state
  replicated, the input state donated."""
  return jax.jit(
      functools.partial(train_step, model=model, tx=tx, explain=explain,
                        lap_terms=lap_terms, trainable=trainable,
                        probabilities=probabilities,
                        on_nonfinite=on_nonfinite),
      in_shardings=(sharding.replicated(mesh), sharding.data_sharded(mesh)),
      out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)),
      donate_argnums=0)


def predict_step(state: TrainState, batch: dict[str, jax.Array], *,
                 model: nn.Module) -> jax.Array:
  """Logits ``[B, K]`` in inference mode (BatchNorm running statistics)."""
  return model.apply({"params": state.params,
                      "batch_stats": state.batch_stats}, batch["image"])


def predict(state: TrainState, model: nn.Module, source: batching.Source,
            *, batch_size: int, mesh: jax.sharding.Mesh | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
  """Logits and labels of every example of ``source`` (padding removed)."""
  mesh = mesh or sharding.make_mesh()
  sharding.check_batch_size(batch_size, mesh, name="eval_batch_size")
  step = jax.jit(functools.partial(predict_step, model=model),
                 in_shardings=(sharding.replicated(mesh),
                               sharding.data_sharded(mesh)),
                 out_shardings=sharding.replicated(mesh))
  state = sharding.put_replicated(state, mesh)
  logits, labels = [], []
  per = batch_size // jax.process_count()      # this process's rows
  rows = slice(jax.process_index() * per, (jax.process_index() + 1) * per)
  for batch in batching.eval_batches(source, batch_size):
    valid = batch.pop("valid")
    arrays = sharding.shard_batch({"image": batch["image"][rows]}, mesh)
    logits.append(np.asarray(step(state, arrays))[valid])
    labels.append(batch["label"][valid])
  return np.concatenate(logits), np.concatenate(labels)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       progress: bool = True) -> TrainState:
  """Trains the model of ``config`` in ``workdir``, resuming if possible.

  Args:
    config: a config from ``configs/`` (schema: ``lapjax/train/config.py``).
    workdir: run folder: checkpoints, ``config.json``, ``metrics.jsonl``.
    progress: show a progress bar.

  Returns:
    The final ``TrainState`` (also checkpointed).

  Raises:
    NonFiniteError: with ``config.on_nonfinite='stop'``, a step's loss,
      gradients or new state are not finite; the message names the step and
      the last good checkpoint (nothing later is saved).
    ValueError: a bad config, a resume with another config, or a run
      folder with checkpoints but no ``config.json``.
  """
  validate(config)
  if config.multihost and not jax.distributed.is_initialized():
    jax.distributed.initialize()
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  run_folder.check_resume_config(
      workdir, config,
      has_checkpoint=checkpoint.latest_step(workdir) is not None)

  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  sharding.check_batch_size(config.eval_batch_size, mesh,
                            name="eval_batch_size")
  train_source, info = sources.make_source(config.data, "train")
  model = build_model(config, info)
  tx, schedule = make_optimizer(config)
  state = create_train_state(model, tx, jax.random.key(config.seed),
                             info["image_shape"])
  check_trainable(state.params, tuple(config.trainable))
  if config.lap.mode == "plugged":
    lap.extend.check_places(model.pool, [
        name for name, sub in state.params.items()
        if isinstance(sub, dict) and "head" in sub],
        lap.extend.pool_places(model, info["image_shape"]))

  manager = checkpoint.checkpoint_manager(
      workdir, save_every=config.checkpoint_every)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if manager.latest_step() is not None:
    state = checkpoint.restore(manager,
                               sharding.put_replicated(state, mesh))
    unreadable = [s for s in manager.all_steps() if s > int(state.step)]
    if unreadable and jax.process_index() == 0:
      moved = checkpoint.set_aside(manager, unreadable)
      warnings.warn(f"resuming from step {int(state.step)}; the unreadable "
                    f"checkpoint(s) {unreadable} were moved to {moved}",
                    stacklevel=2)
    if jax.process_index() == 0:
      run_folder.truncate_metrics(metrics_path, int(state.step))
  elif config.init_from:
    state = init_from_run(state, tx, config.init_from,
                          into="backbone" if config.lap.mode == "detached"
                          else None, config=config)
  elif config.pretrained.path is not None:
    state = pretrained.init_from_pretrained(
        state, tx, config, num_classes=info["num_classes"])
  state = sharding.put_replicated(state, mesh)
  if jax.process_index() == 0:
    run_folder.atomic_write(os.path.join(workdir, "config.json"),
                            config.to_json_best_effort(indent=2))

  explain = ExplainLoss.from_config(config)
  expert = config.lap.mode != "off" and config.lap.supervision == "expert"
  lap_terms = LAPTraining.from_config(
      config, info, _expert_gamma_iar(config, train_source, info)
      if expert else None)
  balanced = (sources.all_labels(train_source) if config.balanced_batches
              else None)
  best = best_metric = kept = None
  if config.best_checkpoint != "off":
    higher = validation.HIGHER_IS_BETTER[config.best_checkpoint]
    best_metric = validation.validation_metric(
        config.best_checkpoint, model=model,
        source=sources.make_source(config.data, "validation")[0],
        batch_size=config.eval_batch_size, mesh=mesh,
        data_name=config.data.name, explain=explain, lap_terms=lap_terms,
        probabilities=config.probabilities)
    best = checkpoint.best_checkpoint_manager(
        workdir, metric=config.best_checkpoint, higher_is_better=higher)
    kept = checkpoint.best_so_far(best, config.best_checkpoint)
  step_fn = make_train_step(model, tx, mesh, explain, lap_terms,
                            trainable_prefixes(config), config.probabilities,
                            config.on_nonfinite)
  kill_after = os.environ.get(KILL_AFTER_CHECKPOINT)
  kill_after = int(kill_after) if kill_after else None
  local_batch = config.batch_size // jax.process_count()
  start = int(state.step)
  last_saved = start if manager.latest_step() is not None else None
  bar = tqdm.tqdm(total=config.num_steps, initial=start,
                  disable=not progress or jax.process_index() != 0,
                  desc="train", unit="step", mininterval=2.0)
  t0, window = time.perf_counter(), 0     # steps since the last log line
  sums: dict[str, jax.Array] = {}
  unchecked: list[tuple[int, jax.Array, jax.Array]] = []  # stop mode flags
  # Every file of the run folder is written by process 0 only.
  with (open(metrics_path, "a") if jax.process_index() == 0
        else contextlib.nullcontext()) as metrics_file:
    for step in range(start, config.num_steps):
      host_batch = loss_inputs(
          batching.train_batch(train_source, config.batch_size, step,
                               config.data.seed, balanced_labels=balanced,
                               num_classes=info["num_classes"]),
          explain=explain, lap_terms=lap_terms, data_name=config.data.name)
      host_batch = {k: v[jax.process_index() * local_batch:
                         (jax.process_index() + 1) * local_batch]
                    for k, v in host_batch.items()}
      state, metrics = step_fn(state, sharding.shard_batch(host_batch, mesh))
      sums = {k: sums.get(k, 0.0) + v for k, v in metrics.items()}
      window += 1
      done = step + 1
      if config.on_nonfinite == "stop":
        unchecked.append((done, metrics["nonfinite"], metrics["loss"]))
      last = done == config.num_steps
      log_due = done % config.log_every == 0 or last
      save_due = last or manager.should_save(done)
      if log_due:
        record = {"step": done, "lr": float(schedule(step))}
        skipped = int(round(float(sums.pop("nonfinite"))))
        # 'skip' zeroes the metrics of skipped steps: average the others.
        counted = (max(window - skipped, 1)
                   if config.on_nonfinite == "skip" else window)
        record.update({k: float(v) / counted for k, v in sums.items()})
        record["nonfinite_steps"] = skipped
        record["images_per_s"] = (window * config.batch_size
                                  / (time.perf_counter() - t0))
        if jax.process_index() == 0:
          metrics_file.write(run_folder.dumps(record) + "\n")
          metrics_file.flush()
        bar.set_postfix(loss=f"{record['loss']:.4f}",
                        img_s=f"{record['images_per_s']:.0f}")
        t0, window, sums = time.perf_counter(), 0, {}
      if unchecked and (log_due or save_due):
        _raise_if_nonfinite(unchecked, last_saved, manager)
        unchecked = []
      if save_due:
        checkpoint.save(manager, state, step=done, force=last)
        last_saved = done
        if best is not None:
          kept = _keep_if_best(best, best_metric, kept, state, done,
                               config.best_checkpoint, metrics_file)
        if kill_after == done:
          manager.wait_until_finished()
          if best is not None:
            best.wait_until_finished()
          os.kill(os.getpid(), signal.SIGKILL)
      bar.update(1)
  bar.close()
  manager.wait_until_finished()
  manager.close()
  if best is not None:
    best.wait_until_finished()
    best.close()

  val_source, _ = sources.make_source(config.data, "validation")
  logits, labels = predict(state, model, val_source,
                           batch_size=config.eval_batch_size, mesh=mesh)
  val_acc = float(np.mean(logits.argmax(-1) == labels))
  if jax.process_index() == 0:
    with open(metrics_path, "a") as f:
      f.write(json.dumps({"step": int(state.step),
                          "validation_accuracy": val_acc}) + "\n")
  print(f"step {int(state.step)}: validation accuracy {val_acc:.4f} "
        f"({len(labels)} images); workdir {workdir}")
  return state


def _keep_if_best(best: ocp.CheckpointManager,
                  metric: Callable[[TrainState], float],
                  kept: tuple[int, float] | None, state: TrainState,
                  step: int, name: str, metrics_file: Any
                  ) -> tuple[int, float] | None:
  """Measures ``name`` on the validation split and saves ``state`` to the
  best-checkpoint manager if it beats the ``kept`` ``(step, value)``
  (strictly: the first of equal values stays; a resumed run that reaches
  the kept step again finds it saved; a non-finite value never wins);
  returns the new ``kept``; writes a ``metrics.jsonl`` line."""
  value = metric(state)
  higher = validation.HIGHER_IS_BETTER[name]
  better = bool(np.isfinite(value)) and (
      kept is None or (value > kept[1] if higher else value < kept[1]))
  if better:
    best.save(step, args=ocp.args.StandardSave(state),
              metrics={name: value}, force=True)
    kept = (step, value)
  if metrics_file is not None:
    metrics_file.write(run_folder.dumps(
        {"step": step, name: value, "kept_as_best": kept[0] == step})
        + "\n")
    metrics_file.flush()
  return kept


def _raise_if_nonfinite(unchecked: list[tuple[int, jax.Array, jax.Array]],
                        last_saved: int | None,
                        manager: ocp.CheckpointManager) -> None:
  """Raises ``NonFiniteError`` at the first flagged step (one host sync
  for the whole window of ``(step, flag, loss)``)."""
  flags = jax.device_get([(flag, loss) for _, flag, loss in unchecked])
  for (done, _, _), (flag, loss) in zip(unchecked, flags):
    if flag:
      manager.wait_until_finished()
      where = os.fspath(manager.directory)
      good = (f"the last good checkpoint is step {last_saved} in {where} "
              "(kept; nothing later was saved)" if last_saved is not None
              else f"no checkpoint was saved before it (in {where})")
      raise NonFiniteError(
          f"training diverged: step {done} has a non-finite loss, gradient "
          f"or state (loss {float(loss)}); {good}. Lower "
          "config.optimizer.learning_rate or check the data, then train in "
          "a new --workdir (config.init_from=<this run> keeps its last good "
          "weights); or set config.on_nonfinite='skip' to skip such steps")


def _expert_gamma_iar(config: ml_collections.ConfigDict,
                      source: batching.Source, info: dict[str, Any]) -> float:
  """Eq. 8's ``K_IAR / n_e``: ``config.lap.expert_gamma_iar``, or the mean
  box-mask fraction of the DC-present images among 512 training images."""
  if config.lap.expert_gamma_iar is not None:
    return float(config.lap.expert_gamma_iar)
  sample = source.get(np.arange(min(512, source.num_examples)))
  if "boxes" not in sample:
    raise ValueError(f"expert LAP supervision needs boxes; data "
                     f"{config.data.name!r} gives none")
  masks = boxes_lib.boxes_to_mask(sample["boxes"], sample["boxes_valid"],
                                  *sample["image"].shape[1:3])
  return lap.losses.mean_annotated_fraction(
      masks, sample["label"], lap.dc_system(dc_membership(info)))


def graft(params: Any, source: Any) -> tuple[Any, int]:
  """``params`` with every leaf that ``source`` has at the same path and
  shape replaced by it; returns ``(params, leaves replaced)``."""
  flat = {jax.tree_util.keystr(p): v
          for p, v in jax.tree_util.tree_leaves_with_path(source)}
  replaced = 0

  def take(path, leaf):
    nonlocal replaced
    other = flat.get(jax.tree_util.keystr(path))
    if other is not None and np.shape(other) == np.shape(leaf):
      replaced += 1
      return other
    return leaf

  return jax.tree_util.tree_map_with_path(take, params), replaced


def init_from_run(state: TrainState, tx: optax.GradientTransformation,
                  workdir: str, *, into: str | None = None,
                  config: ml_collections.ConfigDict | None = None
                  ) -> TrainState:
  """``state`` with the parameters and BatchNorm statistics of the newest
  checkpoint of the run in ``workdir``; optimiser state re-initialised.

  Parameters are matched by path and shape (``graft``), under the subtree
  ``into`` (e.g. the backbone of a detached LAP model). With ``config``
  (the run being started) and a LAP run (``config.lap.mode`` not
  ``'off'``), the two runs' DC systems must be the same; with
  ``config.lap.heads_from`` the source is a detached LAP run whose backbone
  initialises this plugged model's layers and whose heads initialise its
  LAP-Pools' (``lap_init.seed_pooled_heads``; each copy is printed).

  Raises:
    ValueError: nothing matches; the DC systems differ (the message says
      how); or ``heads_from`` does not fit the source run (see
      ``seed_pooled_heads``).
  """
  other_config = load_run_config(workdir)
  if config is not None and config.lap.mode != "off":
    lap_init.check_same_dc_system(
        _dc_info(other_config), _dc_info(config), workdir=workdir)
  _, other, _ = load_state(other_config, workdir)
  params, stats = dict(state.params), dict(state.batch_stats)
  lines = []
  if config is not None and config.lap.heads_from:
    if other_config.lap.mode != "detached":
      raise ValueError(
          f"config.lap.heads_from seeds LAP-Pools from detached LAPs, but "
          f"init_from={workdir} is a run with lap.mode="
          f"{other_config.lap.mode!r}; give the run folder of a "
          "config.lap.mode='detached' run")
    params, lines = lap_init.seed_pooled_heads(
        params, other.params, heads_from_pairs(config),
        detached_layers=tuple(other_config.lap.places), workdir=workdir)
    params, n = graft(params, other.params["backbone"])
    stats, _ = graft(stats, other.batch_stats.get("backbone", {}))
  elif into is None:
    params, n = graft(params, other.params)
    stats, _ = graft(stats, other.batch_stats)
  else:
    params[into], n = graft(params[into], other.params)
    if into in stats:
      stats[into], _ = graft(stats[into], other.batch_stats)
  if n == 0:
    hint = ("different architecture?" if other_config.lap.mode != "detached"
            else "it is a detached LAP run: to start LAP-Pools from its "
            "heads and backbone, set config.lap.heads_from")
    raise ValueError(f"init_from={workdir}: no parameter matches this model "
                     f"({hint})")
  if lines and jax.process_index() == 0:
    print(f"init_from={workdir}: " + "; ".join(lines))
  return state.replace(params=params, batch_stats=stats,
                       opt_state=tx.init(params))


def _dc_info(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The DC system and class names of a run's data."""
  info = sources.data_info(config.data)
  return {"dc_membership": dc_membership(info),
          "class_names": list(info.get("class_names",
                                       range(info["num_classes"])))}


def load_state(config: ml_collections.ConfigDict, workdir: str, *,
               which: str = "latest"
               ) -> tuple[nn.Module, TrainState, dict[str, Any]]:
  """The model, a checkpointed state and the data info of a run.

  Args:
    config: the run's config.
    workdir: the run folder.
    which: ``'latest'`` (the newest readable checkpoint) or ``'best'``
      (the one ``config.best_checkpoint`` kept in
      ``workdir/checkpoints-best``).

  Raises:
    FileNotFoundError: no such checkpoint (the message says why).
    ValueError: an unknown ``which``, or non-finite parameters.
  """
  validate(config)
  if which not in ("latest", "best"):
    raise ValueError(f"which must be 'latest' or 'best'; got {which!r}")
  info = sources.data_info(config.data)
  model = build_model(config, info)
  tx, _ = make_optimizer(config)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  like = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
      jax.eval_shape(lambda: create_train_state(
          model, tx, jax.random.key(config.seed), info["image_shape"])))
  if which == "best":
    state = _restore_best(config, workdir, like)
  else:
    step = checkpoint.latest_step(workdir)
    if step is None:
      where = os.path.join(os.path.abspath(workdir), "checkpoints")
      raise FileNotFoundError(
          f"no checkpoint in {where}; train first: python train.py "
          f"--config ... --workdir {workdir}")
    manager = checkpoint.checkpoint_manager(
        workdir, save_every=config.checkpoint_every)
    state = checkpoint.restore(manager, like)
    manager.close()
  if not checkpoint.all_finite((state.params, state.batch_stats)):
    raise ValueError(
        f"the checkpoint of step {int(state.step)} in {workdir} holds "
        "non-finite parameters (a diverged run, saved before lapjax "
        "checked); retrain with a lower config.optimizer.learning_rate")
  return model, state, info


def _restore_best(config: ml_collections.ConfigDict, workdir: str,
                  like: TrainState) -> TrainState:
  """The state ``config.best_checkpoint`` kept in ``workdir``."""
  where = os.path.join(os.path.abspath(workdir), checkpoint.BEST_FOLDER)
  if config.best_checkpoint == "off":
    raise FileNotFoundError(
        f"{workdir} was trained with config.best_checkpoint='off', so it "
        "kept no best checkpoint; use the latest, or retrain with "
        "config.best_checkpoint='validation_accuracy'")
  if not os.path.isdir(where):
    raise FileNotFoundError(f"no best checkpoint in {where} (training "
                            "saves one with its first checkpoint)")
  manager = checkpoint.best_checkpoint_manager(
      workdir, metric=config.best_checkpoint,
      higher_is_better=validation.HIGHER_IS_BETTER[config.best_checkpoint])
  try:
    step = manager.best_step()
    if step is None:
      raise FileNotFoundError(f"no best checkpoint in {where} (training "
                              "saves one with its first checkpoint)")
    return checkpoint.restore(manager, like, step=step)
  finally:
    manager.close()
