"""Explanation-aware training loss: a differentiable Grad-CAM (paper 001).

``L_total = L_ce + alpha * L_exp`` (Eq. 1), where for each positive sample
with at least one box:

* ``H = ReLU(sum_c alpha_c A^c)``, ``alpha_c = mean_ij ds/dA^c_ij`` at a
  named layer (Eq. 3-4): the gradient of the explanation score ``s`` w.r.t.
  the layer comes from a ``jax.grad`` *inside* the loss, which the outer
  ``jax.grad`` differentiates again (no stop-gradient on the heatmap);
* ``H_hat`` = ``H`` min-max normalised (eps-safe);
* ``H_plus`` = the top ``k`` of ``H_hat`` (Eq. 5), read differentiably
  (``top_k_mask``);
* ``L_exp = 1 - sum(H_plus * M) / sum(H_plus)`` (Eq. 6), ``M`` the union of
  the boxes at the heatmap's resolution (``box_mask``), averaged over the
  samples that have a box.

The explanation scores (Sec. 3.2.2) of a two-class output ``(z0, z1)``:
``logit_diff`` = z1 - z0, ``logit_abs`` = |z1 - z0|, ``logit_sqr`` =
(z1 - z0)^2, ``logit`` = z1, and ``prob_diff``, ``prob_abs``, ``prob_sqr`` on
the model's probabilities: softmax, or one sigmoid per class (the paper's
two BCE-trained outputs). With softmax, ``p1 - p0 = tanh((z1 - z0) / 2)``,
so each logit score and its probability twin give the same normalised
heatmap (Grad-CAM scales by the score's derivative, min-max removes it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lapjax.attribution import core
from lapjax.classifier import Classifier
from lapjax.data import boxes as boxes_lib

SCORES = ("logit_diff", "logit_abs", "logit_sqr", "logit", "prob_diff",
          "prob_abs", "prob_sqr")
READINGS = ("mask_values", "sigmoid", "straight_through")
STATISTICS = ("batch", "running")
PROBABILITIES = ("softmax", "sigmoid")
EPS = 1e-8


def explanation_score(logits: jax.Array, kind: str, *, positive=1,
                      negative=0, probabilities: str = "softmax"
                      ) -> jax.Array:
  """``[B, K] -> [B]``: the scalar whose Grad-CAM the loss supervises.

  ``positive`` / ``negative``: class indices, one for all or ``[B]`` (e.g.
  each sample's label against the background class 0). ``probabilities``:
  how ``prob_*`` scores read the logits, ``'softmax'`` or ``'sigmoid'``.
  """
  if kind not in SCORES:
    raise ValueError(f"explanation score must be one of {SCORES}; got "
                     f"{kind!r}")
  if probabilities not in PROBABILITIES:
    raise ValueError(f"probabilities must be one of {PROBABILITIES}; got "
                     f"{probabilities!r}")
  v = logits
  if kind.startswith("prob"):
    v = (jax.nn.softmax(logits) if probabilities == "softmax"
         else jax.nn.sigmoid(logits))

  def pick(c):
    c = jnp.broadcast_to(jnp.asarray(c, jnp.int32), v.shape[:1])
    return jnp.take_along_axis(v, c[:, None], -1)[:, 0]

  if kind == "logit":
    return pick(positive)
  d = pick(positive) - pick(negative)
  if kind.endswith("abs"):
    return jnp.abs(d)
  if kind.endswith("sqr"):
    return d ** 2
  return d


def grad_cam_heatmap(classifier: Classifier, x: jax.Array, layer: str,
                     kind: str, *, positive=1, negative=0,
                     probabilities: str = "softmax"
                     ) -> tuple[jax.Array, jax.Array]:
  """``(H [B, h, w], logits [B, K])``: Grad-CAM of ``explanation_score`` at
  ``layer``'s resolution, differentiable w.r.t. everything ``classifier``
  closes over (its parameters). Items are independent when the model is."""
  core.check_layer(classifier, layer)
  shapes = jax.eval_shape(classifier.apply, x)[1]

  def forward(delta):
    logits, feats = classifier.apply(x, {layer: delta})
    return logits, (feats[layer], None)

  h, logits, _ = heatmap_from_forward(
      forward, jnp.zeros(shapes[layer].shape, shapes[layer].dtype), kind,
      positive=positive, negative=negative, probabilities=probabilities)
  return h, logits


def heatmap_from_forward(forward, zeros: jax.Array, kind: str, *,
                         positive=1, negative=0,
                         probabilities: str = "softmax"):
  """Grad-CAM of ``explanation_score`` for any forward pass.

  ``forward(delta) -> (logits [B, K], (acts [B, h, w, c], aux))`` runs the
  model with ``delta`` (``zeros``: the layer's shape) added to the layer's
  output ``acts``, e.g. the training step's own forward pass (BatchNorm on
  the batch's statistics), so the loss needs no second pass.

  Returns:
    ``(H [B, h, w], logits, aux)``, differentiable w.r.t. everything
    ``forward`` closes over.
  """
  logits, vjp, (acts, aux) = jax.vjp(forward, zeros, has_aux=True)
  cot = jax.grad(lambda z: explanation_score(
      z, kind, positive=positive, negative=negative,
      probabilities=probabilities).sum())(logits)
  weights = vjp(cot)[0].mean(axis=(1, 2))                     # [B, c]
  return jax.nn.relu(jnp.einsum("bc,bhwc->bhw", weights, acts)), logits, aux


def normalize_minmax(h: jax.Array, eps: float = EPS) -> jax.Array:
  """Per-map ``(h - min) / (max - min + eps)``; a constant map gives 0."""
  lo = h.min(axis=(-2, -1), keepdims=True)
  hi = h.max(axis=(-2, -1), keepdims=True)
  return (h - lo) / (hi - lo + eps)


def check_fraction(fraction: float) -> None:
  if not 0 < fraction <= 1:
    raise ValueError(f"top_k (fraction of heatmap pixels kept) must be in "
                     f"(0, 1]; got {fraction}")


def top_k_mask(h_hat: jax.Array, fraction: float = 0.5, *,
               reading: str = "mask_values", temperature: float = 0.05
               ) -> jax.Array:
  """``H_plus``: the top ``fraction`` of each normalised map ``[B, h, w]``.

  The hard mask ``1[H_hat >= q]`` (``q`` the ``1 - fraction`` quantile) has
  zero gradient almost everywhere; readings (REFERENCE-NOTES.md):

  * ``'mask_values'``: ``H_hat * stop_gradient(1[H_hat >= q])``, the
    gradient flows through the kept heatmap values;
  * ``'sigmoid'``: ``sigmoid((H_hat - q) / temperature)``, ``q``
    differentiable;
  * ``'straight_through'``: the hard mask forward, the sigmoid's gradient
    backward.
  """
  check_fraction(fraction)
  if reading not in READINGS:
    raise ValueError(f"reading must be one of {READINGS}; got {reading!r}")
  flat = h_hat.reshape(h_hat.shape[0], -1)
  q = jnp.quantile(flat, 1.0 - fraction, axis=-1)[:, None, None]
  hard = (h_hat >= q).astype(h_hat.dtype)
  if reading == "mask_values":
    return h_hat * jax.lax.stop_gradient(hard)
  soft = jax.nn.sigmoid((h_hat - q) / temperature)
  if reading == "sigmoid":
    return soft
  return soft + jax.lax.stop_gradient(hard - soft)


def box_mask(boxes: jax.Array, valid: jax.Array, size: tuple[int, int],
             image_size: tuple[int, int]) -> jax.Array:
  """``[B, h, w]`` float: union of the valid boxes ``[B, N, 4]`` ``(y0, x0,
  y1, x1)`` in image pixels, scaled to the heatmap ``size``; a cell is in
  when its centre is (nearest downsampling of the box mask)."""
  boxes = jnp.asarray(boxes, jnp.float32)
  if core._is_concrete(boxes) and core._is_concrete(valid):
    boxes_lib.validate_boxes(np.asarray(boxes)[np.asarray(valid, bool)],
                             *image_size)
  h, w = size
  sy, sx = h / image_size[0], w / image_size[1]
  cy = (jnp.arange(h) + 0.5)[None, None, :, None]
  cx = (jnp.arange(w) + 0.5)[None, None, None, :]
  y0, x0, y1, x1 = (boxes[..., i, None, None] for i in range(4))
  inside = ((cy >= y0 * sy) & (cy < y1 * sy) & (cx >= x0 * sx)
            & (cx < x1 * sx) & jnp.asarray(valid, bool)[..., None, None])
  return inside.any(axis=1).astype(jnp.float32)


def explanation_loss(h: jax.Array, mask: jax.Array, has_box: jax.Array, *,
                     fraction: float = 0.5, reading: str = "mask_values",
                     temperature: float = 0.05) -> jax.Array:
  """Eq. 6 averaged over the samples with ``has_box`` (0 if none).

  Args:
    h: ``[B, h, w]`` raw heatmaps (``grad_cam_heatmap``).
    mask: ``[B, h, w]`` union box masks at the heatmap's resolution.
    has_box: ``[B]`` bool, positive samples with at least one box.
  """
  plus = top_k_mask(normalize_minmax(h), fraction, reading=reading,
                    temperature=temperature)
  outside = 1.0 - (plus * mask).sum((1, 2)) / (plus.sum((1, 2)) + EPS)
  w = jnp.asarray(has_box, jnp.float32)
  return (outside * w).sum() / jnp.maximum(w.sum(), 1.0)


def training_loss(heatmaps: jax.Array, batch: dict[str, jax.Array], *,
                  fraction: float = 0.5, reading: str = "mask_values",
                  temperature: float = 0.05) -> jax.Array:
  """``L_exp`` of a training batch (``image``, ``label``, ``boxes``,
  ``boxes_valid``) from its Grad-CAM ``heatmaps [B, h, w]`` of each
  sample's class against class 0 (``heatmap_from_forward``): positive
  samples are those with ``label > 0`` and a valid box."""
  mask = box_mask(batch["boxes"], batch["boxes_valid"], heatmaps.shape[1:],
                  batch["image"].shape[1:3])
  has_box = (batch["label"] > 0) & jnp.any(batch["boxes_valid"], -1)
  return explanation_loss(heatmaps, mask, has_box, fraction=fraction,
                          reading=reading, temperature=temperature)
