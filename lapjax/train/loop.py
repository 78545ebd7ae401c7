"""``train_and_evaluate(config, workdir)``: the optax training loop.

One jitted step over a ``jax.sharding`` mesh (batch split on ``'data'``, state
replicated); Orbax checkpoints every ``config.checkpoint_every`` steps and at
the end, with the config saved beside them as ``config.json``; automatic
resume from the newest checkpoint in ``workdir``; a progress bar with loss and
images/s; metrics as JSON lines in ``workdir/metrics.jsonl``.

Resuming is exact: training batch ``s`` and the key of step ``s`` are pure
functions of ``(seed, s)``, so a run interrupted and resumed ends with the
parameters of an uninterrupted run (tested bit for bit).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from lapjax import explain_loss, lap
from lapjax.classifier import apply_tapped, from_flax
from lapjax.data import batching, sources
from lapjax.data import boxes as boxes_lib
from lapjax.models import create_model
from lapjax.train import checkpoint, sharding
from lapjax.train.config import lap_objective, load_run_config, validate
from lapjax.train.state import TrainState, create_train_state

# Fields that may change when a run resumes (the rest must match).
RESUMABLE_CHANGES = ("num_steps", "log_every", "checkpoint_every",
                     "eval_batch_size", "evaluation")


def dc_membership(info: dict[str, Any]) -> np.ndarray:
  """The data's DC system (one-vs-others without BGO when it has none)."""
  if "dc_membership" in info:
    return np.asarray(info["dc_membership"])
  return lap.one_vs_others(info["num_classes"]).membership


def build_model(config: ml_collections.ConfigDict, info: dict[str, Any]
                ) -> nn.Module:
  """The model of ``config.model``, LAP-extended as ``config.lap`` says."""
  kwargs = dict(config.model.kwargs)
  c = config.lap
  if c.mode == "off":
    return create_model(config.model.name, num_classes=info["num_classes"],
                        **kwargs)
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


def cross_entropy_loss(logits: jax.Array, labels: jax.Array,
                       probabilities: str = "softmax") -> jax.Array:
  """``[B, K], [B] -> []``: mean softmax cross-entropy, or with
  ``probabilities='sigmoid'`` binary cross-entropy of one sigmoid per class
  against the one-hot labels, averaged over classes and batch (PyTorch's
  ``BCEWithLogitsLoss``)."""
  if probabilities not in explain_loss.PROBABILITIES:
    raise ValueError(f"probabilities must be one of "
                     f"{explain_loss.PROBABILITIES}; got {probabilities!r}")
  if probabilities == "sigmoid":
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return optax.sigmoid_binary_cross_entropy(logits, onehot).mean()
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


class ExplainLoss(NamedTuple):
  """The explanation term of the loss (``config.explain_loss``), hashable."""
  kind: str
  alpha: float
  layer: str
  top_k: float
  reading: str
  temperature: float
  statistics: str = "batch"

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict
                  ) -> ExplainLoss | None:
    e = config.explain_loss
    if e.type == "cross_entropy":
      return None
    return cls(e.type, float(e.alpha), e.layer, float(e.top_k), e.reading,
               float(e.temperature), e.statistics)


class LAPTraining(NamedTuple):
  """The LAP terms of the loss (``config.lap``), hashable."""
  objective: lap.LAPObjective
  detached: bool                 # no classification loss (frozen backbone)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict,
                  info: dict[str, Any], expert_gamma_iar: float | None = None
                  ) -> LAPTraining | None:
    if config.lap.mode == "off":
      return None
    return cls(lap_objective(config, dc_membership(info), expert_gamma_iar),
               config.lap.mode == "detached")


def train_step(state: TrainState, batch: dict[str, jax.Array], *,
               model: nn.Module, tx: optax.GradientTransformation,
               explain: ExplainLoss | None = None,
               lap_terms: LAPTraining | None = None,
               trainable: tuple[str, ...] = (),
               probabilities: str = "softmax"
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser step on a (global) batch; returns the new state, metrics.

  ``probabilities`` (``config.probabilities``): the classification loss
  (``cross_entropy_loss``) and the explanation loss's ``prob_*`` scores.

  With ``explain``, the loss adds ``alpha * L_exp`` (``explain_loss``):
  with ``statistics='batch'`` its Grad-CAM differentiates the tapped layer
  of the training forward pass itself (BatchNorm on the batch's
  statistics, one forward pass, as the paper's ``create_graph`` Grad-CAM);
  with ``'running'`` it runs a second, inference-mode pass (exactly the
  Grad-CAM lapjax computes for the current parameters). With
  ``lap_terms``, it adds the LAP objective of the maps the model records
  (and, for detached LAPs, drops the classification loss, which no
  trainable parameter affects); the terms add up. With ``trainable``
  (``trainable_prefixes``), BatchNorm statistics outside those prefixes
  are kept as they were (the optimiser already freezes the parameters).
  """
  mutable = ["batch_stats"] + (["lap"] if lap_terms is not None else [])
  tapped = explain is not None and explain.statistics == "batch"

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    kwargs = dict(train=True, mutable=mutable,
                  rngs={"dropout": state.step_key()})
    if tapped:
      def forward(delta):
        (logits, updates), feats = apply_tapped(
            model, variables, batch["image"], layers=[explain.layer],
            deltas=None if delta is None else {explain.layer: delta},
            **kwargs)
        return logits, (feats[explain.layer], updates)

      zeros = jax.eval_shape(lambda: forward(None)[1][0])
      heat, logits, updates = explain_loss.heatmap_from_forward(
          forward, jnp.zeros(zeros.shape, zeros.dtype), explain.kind,
          positive=batch["label"], negative=0, probabilities=probabilities)
    else:
      logits, updates = model.apply(variables, batch["image"], **kwargs)
    ce = cross_entropy_loss(logits, batch["label"], probabilities)
    parts = {"cross_entropy": ce}
    detached = lap_terms is not None and lap_terms.detached
    loss = jnp.zeros(()) if detached else ce
    if lap_terms is not None:
      maps, disc = lap.lap_outputs(updates["lap"])
      lap_loss, lap_parts = lap_terms.objective(
          maps, disc, batch["label"], batch.get("box_mask"))
      parts.update(lap_parts)
      loss = loss + lap_loss
    if explain is not None:
      if not tapped:
        heat, _ = explain_loss.grad_cam_heatmap(
            from_flax(model, variables, layers=[explain.layer]),
            batch["image"], explain.layer, explain.kind,
            positive=batch["label"], negative=0, probabilities=probabilities)
      parts["explain"] = explain_loss.training_loss(
          heat, batch, fraction=explain.top_k, reading=explain.reading,
          temperature=explain.temperature)
      loss = loss + explain.alpha * parts["explain"]
    return loss, (logits, updates.get("batch_stats", {}), parts)

  (loss, (logits, batch_stats, parts)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  if trainable:
    keep = trainable_mask(batch_stats, trainable)
    batch_stats = jax.tree.map(lambda k, new, old: new if k else old, keep,
                               batch_stats, state.batch_stats)
  new_state = state.replace(step=state.step + 1,
                            params=optax.apply_updates(state.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  extra = parts if explain is not None or lap_terms is not None else {}
  return new_state, {"loss": loss, "accuracy": accuracy, **extra}


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    mesh: jax.sharding.Mesh,
                    explain: ExplainLoss | None = None,
                    lap_terms: LAPTraining | None = None,
                    trainable: tuple[str, ...] = (),
                    probabilities: str = "softmax"):
  """``train_step`` jitted over ``mesh``: batch split on 'data', state
  replicated, the input state donated."""
  return jax.jit(
      functools.partial(train_step, model=model, tx=tx, explain=explain,
                        lap_terms=lap_terms, trainable=trainable,
                        probabilities=probabilities),
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
  state = jax.device_put(state, sharding.replicated(mesh))
  logits, labels = [], []
  for batch in batching.eval_batches(source, batch_size):
    valid = batch.pop("valid")
    arrays = sharding.shard_batch({"image": batch["image"]}, mesh)
    logits.append(np.asarray(step(state, arrays))[valid])
    labels.append(batch["label"][valid])
  return np.concatenate(logits), np.concatenate(labels)


def _check_resume_config(workdir: str, config: ml_collections.ConfigDict
                         ) -> None:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  now = json.loads(config.to_json_best_effort())
  diff = [k for k in sorted(set(saved) | set(now))
          if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k)]
  if diff:
    raise ValueError(
        f"workdir {workdir} holds a run with a different config (fields "
        f"{diff} differ from {path}); use a new --workdir, or only change "
        f"{list(RESUMABLE_CHANGES)} when resuming")


def _truncate_metrics(path: str, after_step: int) -> None:
  """Drops metric lines past the restored step (written before a crash)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [ln for ln in f if ln.strip()
             and json.loads(ln).get("step", 0) <= after_step]
  with open(path, "w") as f:
    f.writelines(lines)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       progress: bool = True) -> TrainState:
  """Trains the model of ``config`` in ``workdir``, resuming if possible.

  Args:
    config: a config from ``configs/`` (schema: ``lapjax/train/config.py``).
    workdir: run folder: checkpoints, ``config.json``, ``metrics.jsonl``.
    progress: show a progress bar.

  Returns:
    The final ``TrainState`` (also checkpointed).
  """
  validate(config)
  if config.multihost:
    jax.distributed.initialize()
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  _check_resume_config(workdir, config)

  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  sharding.check_batch_size(config.eval_batch_size, mesh,
                            name="eval_batch_size")
  train_source, info = sources.make_source(config.data, "train")
  model = build_model(config, info)
  tx, schedule = make_optimizer(config)
  state = create_train_state(model, tx, jax.random.key(config.seed),
                             info["image_shape"])
  if config.lap.mode == "plugged":
    lap.extend.check_places(model.pool, [
        name for name, sub in state.params.items()
        if isinstance(sub, dict) and "head" in sub])

  manager = checkpoint.checkpoint_manager(
      workdir, save_every=config.checkpoint_every)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if manager.latest_step() is not None:
    state = checkpoint.restore(manager, jax.device_put(
        state, sharding.replicated(mesh)))
    _truncate_metrics(metrics_path, int(state.step))
  elif config.init_from:
    state = init_from_run(state, tx, config.init_from,
                          into="backbone" if config.lap.mode == "detached"
                          else None)
  state = jax.device_put(state, sharding.replicated(mesh))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  explain = ExplainLoss.from_config(config)
  expert = config.lap.mode != "off" and config.lap.supervision == "expert"
  lap_terms = LAPTraining.from_config(
      config, info, _expert_gamma_iar(config, train_source, info)
      if expert else None)
  needs_boxes = bool(explain) or expert
  keys = ("image", "label") + (("boxes", "boxes_valid") if explain else ())
  keys += ("box_mask",) if expert else ()
  step_fn = make_train_step(model, tx, mesh, explain, lap_terms,
                            trainable_prefixes(config), config.probabilities)
  local_batch = config.batch_size // jax.process_count()
  start = int(state.step)
  bar = tqdm.tqdm(total=config.num_steps, initial=start, disable=not progress,
                  desc="train", unit="step", mininterval=2.0)
  t0, window = time.perf_counter(), 0     # steps since the last log line
  sums: dict[str, jax.Array] = {}
  with open(metrics_path, "a") as metrics_file:
    for step in range(start, config.num_steps):
      host_batch = batching.train_batch(
          train_source, config.batch_size, step, config.data.seed)
      if needs_boxes:
        if "boxes" not in host_batch:
          raise ValueError(f"config.explain_loss / expert LAP supervision "
                           f"need boxes; data {config.data.name!r} gives "
                           "none")
        boxes_lib.validate_boxes(
            host_batch["boxes"][host_batch["boxes_valid"]],
            *host_batch["image"].shape[1:3])
        if expert:
          host_batch["box_mask"] = boxes_lib.boxes_to_mask(
              host_batch["boxes"], host_batch["boxes_valid"],
              *host_batch["image"].shape[1:3])
      host_batch = {k: host_batch[k][jax.process_index() * local_batch:
                                     (jax.process_index() + 1) * local_batch]
                    for k in keys}
      state, metrics = step_fn(state, sharding.shard_batch(host_batch, mesh))
      sums = {k: sums.get(k, 0.0) + v for k, v in metrics.items()}
      window += 1
      done = step + 1
      checkpoint.save(manager, state, step=done,
                      force=done == config.num_steps)
      if done % config.log_every == 0 or done == config.num_steps:
        record = {"step": done, "lr": float(schedule(step))}
        record.update({k: float(v) / window for k, v in sums.items()})
        record["images_per_s"] = (window * config.batch_size
                                  / (time.perf_counter() - t0))
        if jax.process_index() == 0:
          metrics_file.write(json.dumps(record) + "\n")
          metrics_file.flush()
        bar.set_postfix(loss=f"{record['loss']:.4f}",
                        img_s=f"{record['images_per_s']:.0f}")
        t0, window, sums = time.perf_counter(), 0, {}
      bar.update(1)
  bar.close()
  manager.wait_until_finished()
  manager.close()

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
                  workdir: str, *, into: str | None = None) -> TrainState:
  """``state`` with the parameters and BatchNorm statistics of the newest
  checkpoint of the run in ``workdir`` (under the subtree ``into``, e.g. the
  backbone of a detached LAP model); optimiser state re-initialised."""
  other_config = load_run_config(workdir)
  _, other, _ = load_state(other_config, workdir)
  params, stats = dict(state.params), dict(state.batch_stats)
  if into is None:
    params, n = graft(params, other.params)
    stats, _ = graft(stats, other.batch_stats)
  else:
    params[into], n = graft(params[into], other.params)
    if into in stats:
      stats[into], _ = graft(stats[into], other.batch_stats)
  if n == 0:
    raise ValueError(f"init_from={workdir}: no parameter matches this model "
                     "(different architecture?)")
  return state.replace(params=params, batch_stats=stats,
                       opt_state=tx.init(params))


def load_state(config: ml_collections.ConfigDict, workdir: str
               ) -> tuple[nn.Module, TrainState, dict[str, Any]]:
  """The model, its newest checkpointed state and the data info of a run."""
  validate(config)
  step = checkpoint.latest_step(workdir)
  if step is None:
    where = os.path.join(os.path.abspath(workdir), "checkpoints")
    raise FileNotFoundError(
        f"no checkpoint in {where}; train first: python train.py --config "
        f"... --workdir {workdir}")
  info = sources.data_info(config.data)
  model = build_model(config, info)
  tx, _ = make_optimizer(config)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  like = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
      jax.eval_shape(lambda: create_train_state(
          model, tx, jax.random.key(config.seed), info["image_shape"])))
  manager = checkpoint.checkpoint_manager(
      workdir, save_every=config.checkpoint_every)
  state = checkpoint.restore(manager, like, step)
  manager.close()
  return model, state, info
