"""The validation metric of best-checkpoint selection.

Paper 000 keeps "the checkpoint achieving the best validation performance
on the primary task", and for detached LAPs "the checkpoint with the lowest
validation loss" (Sec. 3, App. D.1.2). ``config.best_checkpoint`` names the
metric; ``validation_metric`` builds a function ``state -> float`` that
computes it on the validation split, compiled once:

* ``'validation_accuracy'``: top-1 accuracy over every validation example
  (fixed-shape batches, the padded rows of the last one masked out);
* ``'validation_loss'``: the training objective
  (``objectives.training_loss``: classification, LAP and explanation terms
  as configured; for detached LAPs the LAP terms alone) in inference mode
  (BatchNorm running statistics), averaged over the full
  ``eval_batch_size`` batches of the split. The LAP terms are batch-level
  (per-DC normalisations, Top-K over the batch), so a padded batch would
  change them: a partial last batch is left out.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import numpy as np

from lapjax.data import batching
from lapjax.train import sharding
from lapjax.train.objectives import (
  ExplainLoss,
  LAPTraining,
  loss_inputs,
  training_loss,
)
from lapjax.train.state import TrainState

# config.best_checkpoint -> whether higher values are better.
HIGHER_IS_BETTER = {"validation_accuracy": True, "validation_loss": False}


def _rows(batch_size: int) -> slice:
  per = batch_size // jax.process_count()       # this process's rows
  return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def validation_metric(name: str, *, model: nn.Module,
                      source: batching.Source, batch_size: int,
                      mesh: jax.sharding.Mesh, data_name: str,
                      explain: ExplainLoss | None = None,
                      lap_terms: LAPTraining | None = None,
                      probabilities: str = "softmax"
                      ) -> Callable[[TrainState], float]:
  """A function computing the metric ``name`` of a state on ``source``.

  Args:
    name: a key of ``HIGHER_IS_BETTER``.
    model: the trained model.
    source: the validation split.
    batch_size: the global batch (``config.eval_batch_size``).
    mesh: the device mesh (batches on ``'data'``, state replicated).
    data_name: ``config.data.name``, for error messages.
    explain, lap_terms, probabilities: the objective's terms
      (``'validation_loss'`` only).

  Raises:
    ValueError: an unknown ``name``, or ``'validation_loss'`` with fewer
      validation examples than ``batch_size``.
  """
  if name not in HIGHER_IS_BETTER:
    raise ValueError(f"unknown validation metric {name!r}; use one of "
                     f"{sorted(HIGHER_IS_BETTER)}")
  in_shardings = (sharding.replicated(mesh), sharding.data_sharded(mesh))
  rows = _rows(batch_size)
  if name == "validation_accuracy":
    def correct(state, batch):
      logits = model.apply({"params": state.params,
                            "batch_stats": state.batch_stats},
                           batch["image"])
      return logits.argmax(-1) == batch["label"]

    step = jax.jit(correct, in_shardings=in_shardings,
                   out_shardings=sharding.replicated(mesh))

    def accuracy(state: TrainState) -> float:
      hits = []
      for batch in batching.eval_batches(source, batch_size):
        arrays = sharding.shard_batch(
            {k: batch[k][rows] for k in ("image", "label")}, mesh)
        hits.append(np.asarray(step(state, arrays))[batch["valid"]])
      return float(np.mean(np.concatenate(hits)))

    return accuracy

  if source.num_examples < batch_size:
    raise ValueError(
        f"config.best_checkpoint='validation_loss' averages the objective "
        f"over full batches of config.eval_batch_size={batch_size}, but the "
        f"validation split has {source.num_examples} examples; lower "
        "eval_batch_size or raise data.num_validation")
  objective = functools.partial(
      training_loss, model=model, explain=explain, lap_terms=lap_terms,
      probabilities=probabilities, train=False)
  step = jax.jit(
      lambda state, batch: objective(state.params, state.batch_stats, batch,
                                     state.step_key())[0],
      in_shardings=in_shardings, out_shardings=sharding.replicated(mesh))

  def loss(state: TrainState) -> float:
    values = []
    for start in range(0, source.num_examples - batch_size + 1, batch_size):
      batch = loss_inputs(source.get(np.arange(start, start + batch_size)),
                          explain=explain, lap_terms=lap_terms,
                          data_name=data_name)
      arrays = sharding.shard_batch({k: v[rows] for k, v in batch.items()},
                                    mesh)
      values.append(float(step(state, arrays)))
    return float(np.mean(values))

  return loss
