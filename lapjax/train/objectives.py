"""The training objectives ``train_step`` composes from the config.

The classification loss (softmax cross-entropy, or per-class sigmoid binary
cross-entropy), the LAP supervision terms of the LAP paper (``config.lap``,
``lapjax.lap``) and the explanation loss of paper 001
(``config.explain_loss``, ``lapjax.explain_loss``) add up to one scalar:

.. math::

  L = [\\text{not detached}] \\, L_{ce} + L_{LAP} + \\alpha \\, L_{exp}

``training_loss`` evaluates it in one training forward pass (two with the
explanation loss on running BatchNorm statistics) and returns the logits,
the BatchNorm updates and each term, for the loop to differentiate and log.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lapjax import explain_loss, lap
from lapjax.classifier import apply_tapped, from_flax
from lapjax.data import boxes as boxes_lib
from lapjax.train.config import lap_objective


def dc_membership(info: dict[str, Any]) -> np.ndarray:
  """The data's DC system (one-vs-others without BGO when it has none)."""
  if "dc_membership" in info:
    return np.asarray(info["dc_membership"])
  return lap.one_vs_others(info["num_classes"]).membership


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


def loss_inputs(host_batch: dict[str, np.ndarray], *,
                explain: ExplainLoss | None, lap_terms: LAPTraining | None,
                data_name: str) -> dict[str, np.ndarray]:
  """The arrays of a host batch that ``training_loss`` reads: ``image``,
  ``label`` and, as the terms need them, ``boxes``/``boxes_valid`` (the
  explanation loss) or ``box_mask`` (expert LAP supervision, rendered
  from the boxes).

  Raises:
    ValueError: the terms need boxes and the data gives none, or boxes
      outside the image.
  """
  expert = (lap_terms is not None
            and lap_terms.objective.supervision == "expert")
  keys = ("image", "label") + (("boxes", "boxes_valid") if explain else ())
  if explain is not None or expert:
    if "boxes" not in host_batch:
      raise ValueError(f"config.explain_loss / expert LAP supervision need "
                       f"boxes; data {data_name!r} gives none")
    boxes_lib.validate_boxes(host_batch["boxes"][host_batch["boxes_valid"]],
                             *host_batch["image"].shape[1:3])
  out = {k: host_batch[k] for k in keys}
  if expert:
    out["box_mask"] = boxes_lib.boxes_to_mask(
        host_batch["boxes"], host_batch["boxes_valid"],
        *host_batch["image"].shape[1:3])
  return out


def training_loss(params: Any, batch_stats: Any, batch: dict[str, jax.Array],
                  key: jax.Array, *, model: nn.Module,
                  explain: ExplainLoss | None = None,
                  lap_terms: LAPTraining | None = None,
                  probabilities: str = "softmax", train: bool = True
                  ) -> tuple[jax.Array, tuple[jax.Array, Any,
                                              dict[str, jax.Array]]]:
  """The loss ``L`` of one training forward pass, for ``jax.value_and_grad``.

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
  trainable parameter affects); the terms add up.

  Args:
    params: the parameters differentiated.
    batch_stats: BatchNorm running statistics (``{}`` without BatchNorm).
    batch: ``image [B, H, W, C]``, ``label [B]`` and, as the terms need
      them, ``boxes``, ``boxes_valid`` and ``box_mask``.
    key: the dropout key of this step.
    model: the Flax model.
    explain: the explanation term, or None.
    lap_terms: the LAP terms, or None.
    probabilities: ``'softmax'`` or ``'sigmoid'``.
    train: the model's training mode (False: BatchNorm on its running
      statistics, no dropout; the validation loss of
      ``config.best_checkpoint='validation_loss'``).

  Returns:
    ``(loss, (logits [B, K], new batch_stats, terms))``, ``terms`` a dict
    with ``cross_entropy`` and, where present, the LAP terms and
    ``explain``.
  """
  mutable = ["batch_stats"] + (["lap"] if lap_terms is not None else [])
  tapped = explain is not None and explain.statistics == "batch"
  variables = {"params": params, "batch_stats": batch_stats}
  kwargs = dict(train=train, mutable=mutable, rngs={"dropout": key})
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
