"""Class activation maps at a named layer: Grad-CAM and its relatives, LaFAM.

Maps are computed at the layer's resolution ``[h, w]`` and, by default,
resized to the input's ``[H, W]`` (``resize_method``, bilinear by default;
``resize=False`` keeps the native resolution). Methods whose definition
contains a ReLU (Grad-CAM, Grad-CAM++, LayerCAM, Score-CAM, Ablation-CAM)
apply it; XGrad-CAM and HiResCAM are signed sums; none normalises, except
LaFAM, whose definition is a min-max normalised map. FullGrad, which reads
every bias-carrying layer rather than one, is ``fullgrad.py``.
Gradients w.r.t. the layer come from ``deltas`` (no hooks), one forward pass
for all target classes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lapjax.attribution import core, postprocess
from lapjax.attribution.compiled import compiled
from lapjax.attribution.gradients import guided_backprop
from lapjax.classifier import Classifier


def _resize(maps, x, resize: bool, method: str):
  return postprocess.resize(maps, x.shape[1:3] if resize else None, method)


@compiled
def grad_cam(classifier: Classifier, x: jax.Array, targets, *, layer: str,
             resize: bool = True,
             resize_method: str = "bilinear") -> jax.Array:
  """Grad-CAM: ReLU of the activations weighted by their pooled gradients.

  .. math:: L = \\mathrm{ReLU}\\Big(\\sum_k \\alpha_k A^k\\Big), \\quad
     \\alpha_k = \\frac{1}{hw} \\sum_{ij} \\frac{\\partial y}{\\partial
     A^k_{ij}}

  The ReLU is part of Grad-CAM's definition. With a global-average-pool and
  linear head after ``layer``, Grad-CAM equals CAM divided by ``h * w``.

  Args:
    classifier: the model.
    x: ``[B, H, W, C]``.
    targets: ``[B]``, ``[B, C']`` int or ``[B, K]`` float.
    layer: the tapped layer (the last conv block, typically).
    resize: resize to ``[H, W]`` (True) or keep ``[h, w]``.
    resize_method: ``'bilinear'`` (pytorch-grad-cam), ``'nearest'``
      (Captum), ``'bicubic'`` (Xplique) or ``'lanczos3'``.

  Returns:
    ``[B, H, W]`` (or ``[B, C', H, W]``), non-negative.

  References:
    Selvaraju et al., "Grad-CAM", ICCV 2017.
  """
  x, t = core.prepare(classifier, x, targets)
  acts, grads, _ = core.layer_gradients(classifier, x, layer, t.cotangents)
  weights = grads.mean(axis=(2, 3))                       # [C', B, c]
  cam = jax.nn.relu(jnp.einsum("nbc,bhwc->nbhw", weights, acts))
  return core.finish(_resize(cam, x, resize, resize_method), t)


@compiled
def grad_cam_plus_plus(classifier: Classifier, x: jax.Array, targets, *,
                       layer: str, resize: bool = True,
                       resize_method: str = "bilinear") -> jax.Array:
  """Grad-CAM++ with the closed form for an exponential score.

  With ``Y = exp(S)`` and ``S`` (the logit) locally linear in the layer's
  activations, the higher derivatives are ``Y g^2`` and ``Y g^3`` with
  ``g = dS/dA``, which gives

  .. math:: \\alpha^k_{ij} = \\frac{g_{ij}^2}{2 g_{ij}^2 + \\sum_{ab}
     A^k_{ab} g_{ij}^3}, \\quad w_k = \\sum_{ij} \\alpha^k_{ij}
     \\mathrm{ReLU}(g_{ij}), \\quad L = \\mathrm{ReLU}(\\sum_k w_k A^k)

  (Eq. 19 of the paper, the form every public implementation uses; a zero
  denominator gives ``alpha = 0``). Tested against exact derivatives of
  ``exp(S)``.

  References:
    Chattopadhay et al., "Grad-CAM++", WACV 2018.
  """
  x, t = core.prepare(classifier, x, targets)
  acts, grads, _ = core.layer_gradients(classifier, x, layer, t.cotangents)
  g2, g3 = grads**2, grads**3
  denom = 2 * g2 + acts.sum(axis=(1, 2))[None, :, None, None, :] * g3
  alpha = jnp.where(denom != 0, g2 / jnp.where(denom != 0, denom, 1.0), 0.0)
  weights = (alpha * jax.nn.relu(grads)).sum(axis=(2, 3))
  cam = jax.nn.relu(jnp.einsum("nbc,bhwc->nbhw", weights, acts))
  return core.finish(_resize(cam, x, resize, resize_method), t)


@compiled
def layer_cam(classifier: Classifier, x: jax.Array, targets, *, layer: str,
              resize: bool = True,
              resize_method: str = "bilinear") -> jax.Array:
  """LayerCAM: ``ReLU(sum_k ReLU(g^k) * A^k)``, element-wise weights.

  References:
    Jiang et al., "LayerCAM", IEEE TIP 2021.
  """
  x, t = core.prepare(classifier, x, targets)
  acts, grads, _ = core.layer_gradients(classifier, x, layer, t.cotangents)
  cam = jax.nn.relu((jax.nn.relu(grads) * acts[None]).sum(-1))
  return core.finish(_resize(cam, x, resize, resize_method), t)


@compiled
def guided_grad_cam(guided: Classifier, x: jax.Array, targets, *,
                    layer: str, resize_method: str = "bilinear",
                    channels: str | None = "sum") -> jax.Array:
  """Guided Grad-CAM: guided backprop times the upsampled Grad-CAM.

  ``guided`` must be built with guided ReLUs (``guided_classifier``); its
  forward pass is the model's, so Grad-CAM is computed on it too.

  References:
    Selvaraju et al., "Grad-CAM", ICCV 2017.
  """
  cam = grad_cam(guided, x, targets, layer=layer, resize=True,
                 resize_method=resize_method)
  gbp = guided_backprop(guided, x, targets, channels=channels)
  return gbp * (cam if channels is not None else cam[..., None])


@compiled
def score_cam(classifier: Classifier, x: jax.Array, targets, *, layer: str,
              baseline: jax.Array | float | str = 0.0,
              blur_sigma: float = 5.0, chunk_size: int = 64,
              resize: bool = True, resize_method: str = "bilinear"
              ) -> jax.Array:
  """Score-CAM: each channel weighted by the score of the input it masks.

  Channel ``k``'s activation is upsampled (bilinear) and min-max normalised
  to a mask ``M_k`` in [0, 1]; its weight is the target's softmax
  probability on ``x * M_k + baseline * (1 - M_k)``, and the map is
  ``ReLU(sum_k w_k A^k)``; ``baseline``: a number, an array or ``'blur'``
  (``core.baseline_images``, with ``blur_sigma``). Needs integer targets
  (probabilities of a class).
  At most ``chunk_size`` images per forward pass (``max(1, chunk_size //
  B)`` channels of the whole batch); masks are built per chunk, so memory
  is bounded by ``max(chunk_size, B)`` images whatever the channel count.

  References:
    Wang et al., "Score-CAM", CVPR-W 2020.
  """
  x, t = core.prepare(classifier, x, targets)
  if not jnp.issubdtype(jnp.asarray(targets).dtype, jnp.integer):
    raise ValueError("score_cam needs integer targets [B] or [B, C'] (it "
                     "scores class probabilities)")
  core.check_layer(classifier, layer)
  base = core.baseline_images(x, baseline, blur_sigma)
  acts = classifier.apply(x)[1][layer]                     # [B, h, w, c]
  core.check_spatial_layer(layer, acts.shape)
  b, h, w, c = x.shape[0], *x.shape[1:3], acts.shape[-1]

  def scores(channels):                                    # [n] -> [n, C', B]
    # Masks of this chunk's channels only: [n, B, H, W], never all c.
    n = channels.shape[0]
    a = jnp.moveaxis(acts[..., channels], -1, 0)
    up = jax.image.resize(a, (n, b, h, w), "bilinear")
    lo = up.min(axis=(2, 3), keepdims=True)
    hi = up.max(axis=(2, 3), keepdims=True)
    m = jnp.where(hi > lo, (up - lo) / jnp.where(hi > lo, hi - lo, 1.0),
                  0.0)[..., None]                          # [n, B, H, W, 1]
    xs = (x * m + base * (1 - m)).reshape(n * b, *x.shape[1:])
    probs = jax.nn.softmax(classifier.apply(xs)[0]).reshape(n, b, -1)
    return jnp.einsum("nbk,cbk->ncb", probs, t.cotangents)

  weights = core.chunked_map(scores, jnp.arange(c),
                             core.points_per_pass(chunk_size, b))
  cam = jax.nn.relu(jnp.einsum("kcb,bhwk->cbhw", weights, acts))
  return core.finish(_resize(cam, x, resize, resize_method), t)


@compiled
def lafam(classifier: Classifier, x: jax.Array, targets=None, *, layer: str,
          resize: bool = True, resize_method: str = "nearest") -> jax.Array:
  """LaFAM: the label-free, min-max normalised channel mean of a layer.

  .. math:: L = \\frac{\\bar A - \\min \\bar A}{\\max \\bar A - \\min \\bar A
     + 10^{-8}}, \\quad \\bar A = \\frac{1}{c} \\sum_k A^k

  Normalised per map, then upsampled with nearest interpolation (the paper's
  order and method). No ReLU is added (take ``layer`` after an activation, as
  the paper's ResNet-50 ``layer4``). Label-free: ``targets`` only decide the
  output shape (``[B, C']`` targets repeat the map per class).

  References:
    Karjauv et al., "LaFAM: Unsupervised Feature Attribution with
    Label-free Activation Maps", 2024 (paper 002).
  """
  x = jnp.asarray(x)
  core.check_finite_images(x)
  core.check_layer(classifier, layer)
  acts = classifier.apply(x)[1][layer]
  core.check_spatial_layer(layer, acts.shape)
  mean = acts.mean(-1)                                     # [B, h, w]
  lo = mean.min(axis=(1, 2), keepdims=True)
  hi = mean.max(axis=(1, 2), keepdims=True)
  cam = _resize((mean - lo) / (hi - lo + 1e-8), x, resize, resize_method)
  return core.label_free(cam, classifier, x, targets)


@compiled
def xgrad_cam(classifier: Classifier, x: jax.Array, targets, *, layer: str,
              resize: bool = True,
              resize_method: str = "bilinear") -> jax.Array:
  """XGrad-CAM: channels weighted by activation-weighted gradients.

  .. math:: L = \\sum_k w_k A^k, \\quad w_k = \\sum_{ij}
     \\frac{A^k_{ij}}{\\sum_{ab} A^k_{ab}} \\frac{\\partial y}{\\partial
     A^k_{ij}}

  The weights solve the paper's sensitivity and conservation axioms
  approximately (Eq. 9); its map is the weighted sum itself, signed, with no
  ReLU (``postprocess.relu`` gives the ReLU'd map pytorch-grad-cam shows).
  A channel whose activations sum to zero gets weight 0 (pytorch-grad-cam
  adds 1e-7 to the sum instead: the same weights to 1e-7 of the sum).

  Args:
    classifier: the model.
    x: ``[B, H, W, C]``.
    targets: ``[B]``, ``[B, C']`` int or ``[B, K]`` float.
    layer: the tapped layer, a spatial feature map ``[B, h, w, c]``.
    resize: resize to ``[H, W]`` (True) or keep ``[h, w]``.
    resize_method: as for ``grad_cam``.

  Returns:
    ``[B, H, W]`` (or ``[B, C', H, W]``), signed.

  References:
    Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and
    Explanation of CNNs", BMVC 2020.
  """
  x, t = core.prepare(classifier, x, targets)
  acts, grads, _ = core.layer_gradients(classifier, x, layer, t.cotangents)
  total = acts.sum(axis=(1, 2), keepdims=True)             # [B, 1, 1, c]
  share = jnp.where(total != 0, acts / jnp.where(total != 0, total, 1.0),
                    0.0)
  weights = (share[None] * grads).sum(axis=(2, 3))         # [C', B, c]
  cam = jnp.einsum("nbc,bhwc->nbhw", weights, acts)
  return core.finish(_resize(cam, x, resize, resize_method), t)


@compiled
def hires_cam(classifier: Classifier, x: jax.Array, targets, *, layer: str,
              resize: bool = True,
              resize_method: str = "bilinear") -> jax.Array:
  """HiResCAM: gradient times activation, summed over channels only.

  .. math:: L_{ij} = \\sum_k \\frac{\\partial y}{\\partial A^k_{ij}}
     A^k_{ij}

  Grad-CAM without its spatial averaging of the gradients, so a location
  counts only through its own gradient. Signed, no ReLU (the paper's
  definition; pytorch-grad-cam shows the ReLU'd map). With a global average
  pool and a linear head after ``layer`` it equals CAM divided by ``h * w``
  (signed).

  Args:
    classifier: the model.
    x: ``[B, H, W, C]``.
    targets: ``[B]``, ``[B, C']`` int or ``[B, K]`` float.
    layer: the tapped layer, a spatial feature map ``[B, h, w, c]``.
    resize: resize to ``[H, W]`` (True) or keep ``[h, w]``.
    resize_method: as for ``grad_cam``.

  Returns:
    ``[B, H, W]`` (or ``[B, C', H, W]``), signed.

  References:
    Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful
    explanations of convolutional neural networks", arXiv:2011.08891, 2020.
  """
  x, t = core.prepare(classifier, x, targets)
  acts, grads, _ = core.layer_gradients(classifier, x, layer, t.cotangents)
  cam = (grads * acts[None]).sum(-1)                       # [C', B, h, w]
  return core.finish(_resize(cam, x, resize, resize_method), t)


@compiled
def ablation_cam(classifier: Classifier, x: jax.Array, targets, *,
                 layer: str, chunk_size: int = 64, resize: bool = True,
                 resize_method: str = "bilinear") -> jax.Array:
  """Ablation-CAM: each channel weighted by the score drop when it is zeroed.

  .. math:: w_k = \\frac{y - y_k}{y}, \\quad L = \\mathrm{ReLU}\\Big(
     \\sum_k w_k A^k\\Big)

  ``y`` is the target score (the logit, or ``cotangent . logits`` for
  float targets) and ``y_k`` the same score with channel ``k`` of ``layer``
  set to zero, through ``deltas = -A^k`` on that channel (gradient-free;
  the layers before ``layer`` do not depend on the channel and XLA hoists
  them out of the loop over chunks, so only the layers after it run
  again). The ReLU is part of the paper's
  definition. Where ``y = 0`` the weights are 0 (the ratio is undefined).

  Differences from pytorch-grad-cam's ``AblationCAM``: it ablates to zero
  only when the minimum of the layer's activations over the batch is
  exactly 0 and otherwise to that minimum minus 1e7 (lapjax always
  zeroes, as the paper); its ``ratio_channels_to_ablate < 1`` skips
  channels chosen by an SVD heuristic (lapjax ablates every channel). With
  a non-negative layer containing a zero and all channels, the weights are
  the same (tests/attribution/test_cam_comparators.py).

  At most ``chunk_size`` images per forward pass (``max(1, chunk_size //
  B)`` channels of the whole batch), so memory is bounded by
  ``max(chunk_size, B)`` images whatever the channel count.

  Args:
    classifier: the model.
    x: ``[B, H, W, C]``.
    targets: ``[B]``, ``[B, C']`` int or ``[B, K]`` float.
    layer: the tapped layer, a spatial feature map ``[B, h, w, c]``.
    chunk_size: images per forward pass (static).
    resize: resize to ``[H, W]`` (True) or keep ``[h, w]``.
    resize_method: as for ``grad_cam``.

  Returns:
    ``[B, H, W]`` (or ``[B, C', H, W]``), non-negative.

  References:
    Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep
    Convolutional Network via Gradient-free Localization", WACV 2020.
  """
  x, t = core.prepare(classifier, x, targets)
  core.check_layer(classifier, layer)
  logits, feats = classifier.apply(x)
  acts = feats[layer]                                      # [B, h, w, c]
  core.check_spatial_layer(layer, acts.shape)
  b, c = x.shape[0], acts.shape[-1]
  score = jnp.einsum("bk,nbk->nb", logits, t.cotangents)   # [C', B]

  def ablated_scores(channels):                            # [n] -> [n, C', B]
    n = channels.shape[0]
    off = jax.nn.one_hot(channels, c, dtype=acts.dtype)[:, None, None, None]
    deltas = -(acts[None] * off)                           # [n, B, h, w, c]
    xs = jnp.broadcast_to(x[None], (n, *x.shape))
    out = classifier.apply(xs.reshape(n * b, *x.shape[1:]),
                           {layer: deltas.reshape(n * b, *acts.shape[1:])})
    return jnp.einsum("nbk,cbk->ncb", out[0].reshape(n, b, -1),
                      t.cotangents)

  ablated = core.chunked_map(ablated_scores, jnp.arange(c),
                             core.points_per_pass(chunk_size, b))
  safe = jnp.where(score != 0, score, 1.0)
  weights = jnp.where(score != 0, (score - ablated) / safe, 0.0)  # [c, C', B]
  cam = jax.nn.relu(jnp.einsum("kcb,bhwk->cbhw", weights, acts))
  return core.finish(_resize(cam, x, resize, resize_method), t)
