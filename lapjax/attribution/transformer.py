"""Attribution methods of vision transformers, read from attention taps.

Every method here reads the attention probabilities ``A_l [B, heads, T, T]``
of the blocks ``l = 1 .. L`` (rows: queries, columns: keys; taps named
``block{l}/attn/probs`` in ``lapjax.models.vit``), from one forward pass,
with their gradients through ``deltas`` where the method needs them. Each
builds a token-to-token transition matrix ``M_l [T, T]`` per block and
propagates the class token's row through the blocks, deepest first:

.. math:: r = e_{cls}^\\top M_L M_{L-1} \\cdots M_s,

the first row of the product the papers write (``rollout[:, 0]``), computed
as vector-matrix products (``O(T^2)`` per block instead of ``O(T^3)``).
The patch columns of ``r`` (class and register tokens dropped) form the
``[h, w]`` patch grid, resized to the input's ``[H, W]`` like a CAM.

The token layout (patch size, number of prefix tokens) comes from the
classifier (``classifier.tokens``, set by ``from_flax`` on a ViT) or from
the ``tokens=`` option; a classifier without attention taps (a CNN) is
refused with the list of its layers, never answered with a wrong map.

Methods: ``attention_rollout`` (label-free), ``gae`` (Grad-Rollout),
``transformer_attribution`` (T-Attr; needs a classifier built by
``relevance_transformer.transformer_relevance_classifier``), ``bi_attn``,
``t_attn`` and ``inflow`` (needs ``inflow_classifier``). Targets and
outputs follow the common contract (``[B]``, ``[B, C']`` or float ``[B,
K]`` targets; raw ``[B, H, W]`` maps).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lapjax.attribution import core, postprocess, relevance_transformer
from lapjax.attribution.compiled import compiled
from lapjax.classifier import Classifier, from_flax
from lapjax.models import vit
from lapjax.tokens import TokenLayout

ATTENTION_TAP_SUFFIX = "attn/probs"
_HIGHEST = jax.lax.Precision.HIGHEST


def attention_layers(classifier: Classifier, x: jax.Array,
                     layers: Sequence[str] | None = None,
                     *, method: str = "this method") -> tuple[str, ...]:
  """The attention taps a transformer method reads, shallow to deep.

  Args:
    classifier: the model.
    x: ``[B, H, W, C]`` (for the tap shapes).
    layers: tap names; None takes every tapped layer whose name ends in
      ``'attn/probs'`` (``lapjax.models.vit.attention_taps(depth)``).
    method: the caller's name, for errors.

  Raises:
    ValueError: no attention taps (e.g. a CNN), a name the classifier does
      not tap, or taps that are not ``[B, heads, T, T]`` with one ``T``.
  """
  if layers is None:
    layers = tuple(n for n in classifier.layers
                   if n.endswith(ATTENTION_TAP_SUFFIX))
    if not layers:
      raise ValueError(
          f"{method} reads a transformer's attention probabilities, but "
          f"this classifier taps no attention layer (names ending in "
          f"{ATTENTION_TAP_SUFFIX!r}); its layers are "
          f"{list(classifier.layers)}. For a lapjax ViT build it with "
          "from_flax(module, variables, layers=lapjax.models.vit."
          "attention_taps(depth)); a CNN has no attention: use a CAM or "
          "gradient method")
  layers = tuple(layers)
  for name in layers:
    core.check_layer(classifier, name)
  shapes = jax.eval_shape(classifier.apply, x)[1]
  tokens = None
  for name in layers:
    shape = tuple(shapes[name].shape)
    if len(shape) != 4 or shape[2] != shape[3] or (
        tokens is not None and shape[2] != tokens):
      raise ValueError(
          f"{method}: layer {name!r} must be attention probabilities "
          f"[B, heads, T, T] with the same T in every block; its output "
          f"has shape {shape}")
    tokens = shape[2]
  return layers


def token_layout(classifier: Classifier, tokens: TokenLayout | None,
                 *, method: str = "this method") -> TokenLayout:
  """``tokens``, else the classifier's ``tokens`` field; an error if
  neither says how tokens map onto the image."""
  layout = tokens if tokens is not None else getattr(classifier, "tokens",
                                                     None)
  if layout is None:
    raise ValueError(
        f"{method} needs the model's token layout to place patch tokens on "
        "the image; this classifier has none (classifier.tokens): pass "
        "tokens=lapjax.tokens.TokenLayout(patch_size=(p, p), "
        "num_prefix_tokens=1)")
  return layout


def class_row_to_map(row: jax.Array, layout: TokenLayout, x: jax.Array, *,
                     resize: bool, resize_method: str,
                     name: str = "attention") -> jax.Array:
  """The class token's row ``[..., T]`` as maps ``[..., H, W]``
  (``[..., h, w]`` without ``resize``); prefix tokens dropped."""
  image_hw = tuple(x.shape[1:3])
  h, w = layout.grid(image_hw)
  expected = layout.num_prefix_tokens + h * w
  if row.shape[-1] != expected:
    raise ValueError(
        f"{name} covers {row.shape[-1]} tokens; expected {expected}: "
        f"{layout.num_prefix_tokens} prefix token(s) and a {h}x{w} patch "
        f"grid ({layout.patch_size[0]}x{layout.patch_size[1]} patches of a "
        f"{image_hw[0]}x{image_hw[1]} input)")
  grid = row[..., layout.num_prefix_tokens:].reshape(*row.shape[:-1], h, w)
  return postprocess.resize(grid, image_hw if resize else None,
                            resize_method)


def propagate_class_row(matrices: Sequence[jax.Array],
                        row: jax.Array | None = None) -> jax.Array:
  """``e_cls^T M_L ... M_1`` for ``matrices = [M_1, ..., M_L]`` ``[..., T,
  T]``, or ``row^T M_L ... M_1`` when ``row [..., T]`` is given."""
  if row is None:
    t = matrices[-1].shape[-1]
    row = jnp.broadcast_to(jax.nn.one_hot(0, t, dtype=matrices[-1].dtype),
                           matrices[-1].shape[:-1])
  for m in reversed(matrices):
    row = jnp.einsum("...i,...ij->...j", row, m, precision=_HIGHEST)
  return row


def _check_start(start_block: int, depth: int, *,
                 allow_empty: bool = False) -> None:
  """``start_block`` must name a block (or, with ``allow_empty``, may lie
  past the last one: an empty product, as the released code allows)."""
  top = depth + 1 if allow_empty else depth
  if not 0 <= int(start_block) < top:
    raise ValueError(f"start_block must be in [0, {top}) for {depth} "
                     f"attention layers; got {start_block}")


def attention_gradients(classifier: Classifier, x: jax.Array,
                        layers: Sequence[str], cotangents: jax.Array
                        ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """Attention probabilities and their gradients, one forward pass.

  Returns:
    ``({layer: A [B, heads, T, T]}, {layer: dA [C', B, heads, T, T]})``:
    ``dA = d (cot . logits) / d A`` through ``deltas``, one backward pass
    per cotangent over the shared VJP.
  """
  shapes = jax.eval_shape(classifier.apply, x)[1]
  zeros = {n: jnp.zeros(shapes[n].shape, shapes[n].dtype) for n in layers}

  def run(deltas):
    logits, feats = classifier.apply(x, deltas)
    return logits, {n: feats[n] for n in layers}

  logits_type, vjp, attn = jax.vjp(run, zeros, has_aux=True)
  grads = jax.vmap(lambda c: vjp(c.astype(logits_type.dtype))[0])(
      cotangents)
  return attn, grads


def integrated_attention_gradient(classifier: Classifier, x: jax.Array,
                                  layer: str, cotangents: jax.Array, *,
                                  steps: int, chunk_size: int) -> jax.Array:
  """Mean gradient of one attention tap along ``alpha x``, ``alpha`` in
  ``linspace(0, 1, steps)`` (both ends, equal weights: Yuan et al.'s and
  Chen et al.'s released code), ``[C', B, heads, T, T]``."""
  core.check_positive("steps", steps)
  b = x.shape[0]
  shape = jax.eval_shape(classifier.apply, x)[1][layer].shape

  def gradients(alphas):                                 # [n] -> [n, ...]
    n = alphas.shape[0]
    xs = (alphas[:, None, None, None, None] * x[None]).reshape(
        n * b, *x.shape[1:])
    zeros = jnp.zeros((n * b, *shape[1:]), jnp.float32)

    def run(delta):
      return classifier.apply(xs, {layer: delta})[0]

    logits, vjp = jax.vjp(run, zeros)
    g = jax.vmap(lambda c: vjp(jnp.tile(c, (n, 1)).astype(logits.dtype))[0])(
        cotangents)
    return jnp.moveaxis(g.reshape(g.shape[0], n, b, *shape[1:]), 1, 0)

  alphas = jnp.linspace(0.0, 1.0, steps, dtype=jnp.float32)
  weights = jnp.full((steps,), 1.0 / steps, jnp.float32)
  return core.chunked_sum(gradients, alphas, weights,
                          core.points_per_pass(chunk_size, b))


@compiled
def attention_rollout(classifier: Classifier, x: jax.Array, targets=None, *,
                      tokens: TokenLayout | None = None,
                      layers: Sequence[str] | None = None,
                      start_block: int = 0, resize: bool = True,
                      resize_method: str = "bilinear") -> jax.Array:
  """Attention rollout: the product of residual-augmented attention.

  .. math:: \\bar A_l = \\mathbb{E}_h A_l^{(h)}, \\quad
     \\hat A_l = \\frac{\\bar A_l + I}{\\mathrm{rowsum}(\\bar A_l + I)}
     = \\tfrac12 (\\bar A_l + I), \\quad
     \\mathrm{map} = \\big[\\hat A_L \\cdots \\hat A_{s}\\big]_{cls,
     patches}

  (Abnar & Zuidema, "attention rollout"; row sums of ``A`` are 1,
  so the row normalisation is the paper's ``0.5 A + 0.5 I``). Label-free:
  ``targets`` only shape the output (``[B, C']`` repeats the map). Chefer
  et al.'s ``Baselines.generate_rollout`` (Transformer-Explainability,
  ``ViT_explanation_generator.py``) computes the same map.

  Args:
    classifier: tapping the attention probabilities (``layers``).
    x: ``[B, H, W, C]``.
    targets: None, ``[B]``, ``[B, C']`` or ``[B, K]``.
    tokens: the token layout; None reads ``classifier.tokens``.
    layers: the attention taps, shallow to deep; None finds them.
    start_block: 0-based index of the first block in the product.
    resize: resize the ``[h, w]`` patch map to ``[H, W]``.
    resize_method: as for the CAMs.

  Returns:
    ``[B, H, W]`` (``[B, C', H, W]`` for ``[B, C']`` targets),
    non-negative.

  References:
    Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL
    2020.
  """
  x = jnp.asarray(x)
  core.check_finite_images(x)
  layout = token_layout(classifier, tokens, method="attention_rollout")
  names = attention_layers(classifier, x, layers,
                           method="attention_rollout")
  _check_start(start_block, len(names))
  feats = classifier.apply(x)[1]
  matrices = []
  for name in names[start_block:]:
    mean = feats[name].mean(1)                            # [B, T, T]
    aug = mean + jnp.eye(mean.shape[-1], dtype=mean.dtype)
    matrices.append(aug / aug.sum(-1, keepdims=True))
  row = propagate_class_row(matrices)
  maps = class_row_to_map(row, layout, x, resize=resize,
                          resize_method=resize_method)
  return core.label_free(maps, classifier, x, targets)


def _gradient_weighted_mean(attn: jax.Array, grad: jax.Array) -> jax.Array:
  """``E_h[(grad * attn)^+]``: ``[C', B, heads, T, T] -> [C', B, T, T]``."""
  return jax.nn.relu(grad * attn[None]).mean(2)


@compiled
def gae(classifier: Classifier, x: jax.Array, targets, *,
        tokens: TokenLayout | None = None,
        layers: Sequence[str] | None = None, start_block: int = 0,
        resize: bool = True, resize_method: str = "bilinear") -> jax.Array:
  """Grad-Rollout / GAE: gradient-weighted attention, accumulated.

  .. math:: \\bar A_l = \\mathbb{E}_h\\big[(\\nabla A_l \\odot A_l)^+\\big],
     \\quad R \\leftarrow R + \\bar A_l R \\;(l = s, \\dots, L,\\ R = I),
     \\quad \\mathrm{map} = R_{cls, patches}

  (Chefer et al. 2021b, Eq. 5-6 for self-attention), i.e. ``R = (I +
  \\bar A_L) \\cdots (I + \\bar A_s)``; ``\\nabla A_l`` is the gradient of
  the target score ``cot . logits`` at block ``l``'s attention
  probabilities, all from one forward and one backward pass. No
  normalisation: the map is the class row of ``R`` as the authors' code
  returns it (``R[0, 1:]``).

  Args:
    classifier: tapping the attention probabilities.
    x: ``[B, H, W, C]``.
    targets: ``[B]``, ``[B, C']`` int or ``[B, K]`` float.
    tokens, layers, start_block, resize, resize_method: as for
      ``attention_rollout``.

  Returns:
    ``[B, H, W]`` (or ``[B, C', H, W]``), non-negative.

  References:
    Chefer, Gur & Wolf, "Generic Attention-model Explainability for
    Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV 2021.
  """
  x, t = core.prepare(classifier, x, targets)
  layout = token_layout(classifier, tokens, method="gae")
  names = attention_layers(classifier, x, layers, method="gae")
  _check_start(start_block, len(names))
  attn, grads = attention_gradients(classifier, x, names, t.cotangents)
  eye = jnp.eye(attn[names[0]].shape[-1], dtype=jnp.float32)
  matrices = [eye + _gradient_weighted_mean(attn[n], grads[n])
              for n in names[start_block:]]
  row = propagate_class_row(matrices)                     # [C', B, T]
  maps = class_row_to_map(row, layout, x, resize=resize,
                          resize_method=resize_method)
  return core.finish(maps, t)


@compiled
def transformer_attribution(classifier: Classifier, x: jax.Array, targets,
                            *, tokens: TokenLayout | None = None,
                            layers: Sequence[str] | None = None,
                            start_block: int = 0, resize: bool = True,
                            resize_method: str = "bilinear") -> jax.Array:
  """T-Attr: attention relevance (LRP) weighted by attention gradients.

  .. math:: \\bar A_l = I + \\mathbb{E}_h\\big[(\\nabla A_l \\odot
     R^{A_l})^+\\big], \\quad C = \\bar A_L \\cdots \\bar A_s, \\quad
     \\mathrm{map} = C_{cls, patches}

  (Chefer et al. 2021a, Sec. 3, the gradient-weighted relevance rollout).
  ``R^{A_l}`` is the LRP relevance of block ``l``'s attention probabilities,
  propagated from the target's one-hot output (``R = cot`` at the logits, the
  paper's initialisation) with the paper's rules: z⁺-type α1β0 on linear layers
  without their bias, identity through LayerNorm, GELU and softmax, the bilinear
  ``q k^T`` and ``A v`` products split half to each operand, residual sums split
  in proportion to each summand's relevance and rescaled to conserve it
  (``relevance_transformer``). ``\\nabla A_l`` is the plain gradient of ``cot .
  logits``. No row normalisation (as the paper and its code). The relevance
  needs a classifier built by
  ``relevance_transformer.transformer_relevance_classifier``.

  Args:
    classifier: ``transformer_relevance_classifier(module, variables,
      layers=attention_taps(depth))``.
    x: ``[B, H, W, C]``.
    targets: ``[B]``, ``[B, C']`` int or ``[B, K]`` float.
    tokens, layers, start_block, resize, resize_method: as for
      ``attention_rollout``.

  Returns:
    ``[B, H, W]`` (or ``[B, C', H, W]``), non-negative.

  References:
    Chefer, Gur & Wolf, "Transformer Interpretability Beyond Attention
    Visualization", CVPR 2021.
  """
  x, t = core.prepare(classifier, x, targets)
  layout = token_layout(classifier, tokens,
                        method="transformer_attribution")
  names = attention_layers(classifier, x, layers,
                           method="transformer_attribution")
  _check_start(start_block, len(names))
  _, grads = attention_gradients(classifier, x, names, t.cotangents)
  relevance = relevance_transformer.attention_relevance(
      classifier, x, names, t.cotangents)
  eye = jnp.eye(grads[names[0]].shape[-1], dtype=jnp.float32)
  matrices = [eye + jax.nn.relu(grads[n] * relevance[n]).mean(2)
              for n in names[start_block:]]
  row = propagate_class_row(matrices)
  maps = class_row_to_map(row, layout, x, resize=resize,
                          resize_method=resize_method)
  return core.finish(maps, t)


@compiled
def bi_attn(classifier: Classifier, x: jax.Array, targets, *,
            tokens: TokenLayout | None = None,
            layers: Sequence[str] | None = None, start_block: int = 3,
            steps: int = 20, chunk_size: int = 64, resize: bool = True,
            resize_method: str = "bilinear") -> jax.Array:
  """Bi-attn: head-weighted attention perception times reasoning feedback.

  Attention perception (Chen et al., head-wise approximation, "Ours-H"): each
  head is weighted by how much its attention map and the map's gradient agree,

  .. math:: I_l^{(h)} = \\frac{\\bar I_l^{(h)}}{\\sum_{h'} \\bar
     I_l^{(h')}}, \\quad \\bar I_l^{(h)} = \\mathrm{mean}_{ij}
     \\big|(A_l^{(h)\\top} \\nabla A_l^{(h)})_{ij}\\big|, \\quad
     R \\leftarrow R + \\Big(\\sum_h I_l^{(h)} A_l^{(h)}\\Big) R

  for blocks ``l >= start_block`` (``R = I``). Reasoning feedback: the
  integrated gradient of the last block's attention along ``alpha x``,

  .. math:: W = \\mathbb{E}_h\\Big[\\Big(\\frac1n \\sum_{\\alpha}
     \\nabla A_L(\\alpha x)\\Big)^+\\Big], \\quad
     \\mathrm{map} = (W \\odot R)_{cls, patches}

  with ``alpha`` in ``linspace(0, 1, steps)``, as the authors' released
  ``generate_ours`` (defaults: ``start_layer=4`` there, i.e. blocks from
  the fourth, ``start_block=3`` here; 20 steps). Head weights are per
  image and class (the released code assumes one image).

  Args:
    classifier: tapping the attention probabilities.
    x: ``[B, H, W, C]``.
    targets: ``[B]``, ``[B, C']`` int or ``[B, K]`` float.
    tokens, layers, resize, resize_method: as for ``attention_rollout``.
    start_block: 0-based index of the first block of the perception part
      (past the last block: no perception, ``R = I``, as the released
      code on a model that shallow).
    steps: points of the integrated gradient.
    chunk_size: images per forward/backward pass of the integral.

  Returns:
    ``[B, H, W]`` (or ``[B, C', H, W]``), non-negative.

  References:
    Chen, Li, Chen & Liu, "Beyond Intuition: Rethinking Token Attributions
    inside Transformers", TMLR 2023.
  """
  x, t = core.prepare(classifier, x, targets)
  layout = token_layout(classifier, tokens, method="bi_attn")
  names = attention_layers(classifier, x, layers, method="bi_attn")
  _check_start(start_block, len(names), allow_empty=True)
  attn, grads = attention_gradients(classifier, x, names, t.cotangents)
  matrices = []
  for name in names[start_block:]:
    a, g = attn[name], grads[name]                     # [B,h,T,T], [C',...]
    agree = jnp.abs(jnp.einsum("bhki,cbhkj->cbhij", a, g,
                               precision=_HIGHEST)).mean((-2, -1))
    weights = agree / agree.sum(-1, keepdims=True)     # [C', B, h]
    mixed = jnp.einsum("cbh,bhij->cbij", weights, a, precision=_HIGHEST)
    matrices.append(jnp.eye(a.shape[-1], dtype=a.dtype) + mixed)
  last = attn[names[-1]]
  cls = jnp.broadcast_to(jax.nn.one_hot(0, last.shape[-1], dtype=last.dtype),
                         (t.cotangents.shape[0], x.shape[0], last.shape[-1]))
  row = propagate_class_row(matrices, cls)             # [C', B, T]
  feedback = integrated_attention_gradient(
      classifier, x, names[-1], t.cotangents, steps=steps,
      chunk_size=chunk_size)
  row = jax.nn.relu(feedback).mean(2)[..., 0, :] * row
  maps = class_row_to_map(row, layout, x, resize=resize,
                          resize_method=resize_method)
  return core.finish(maps, t)


@compiled
def t_attn(classifier: Classifier, x: jax.Array, targets, *,
           tokens: TokenLayout | None = None,
           layers: Sequence[str] | None = None, start_block: int = 4,
           steps: int = 20, chunk_size: int = 64, resize: bool = True,
           resize_method: str = "bilinear") -> jax.Array:
  """T-attn (Transition Attention Maps): a Markov chain over tokens,
  weighted by integrated attention gradients.

  The class token's state after the last block is its head-mean
  attention row; each earlier block is a transition with a residual
  (Yuan et al., information flow as a Markov chain):

  .. math:: s_L = (\\bar A_L)_{cls}, \\quad s \\leftarrow s\\,\\bar A_l
     + s \\;(l = L-1, \\dots, s_0), \\qquad
     \\mathrm{map} = s \\odot \\mathbb{E}_h\\Big[\\Big(\\frac1n
     \\sum_{\\alpha} \\nabla A_L(\\alpha x)\\Big)^+\\Big]_{cls}

  with ``\\bar A = E_h A``, unnormalised, and the integrated gradient of
  the last attention along ``alpha x``, ``alpha`` in ``linspace(0, 1,
  steps)``, as the authors' released ``transition_attention_maps``
  (defaults ``start_layer=4``, 0-based, and 20 steps; ``with_integral``).

  Args:
    classifier: tapping the attention probabilities.
    x: ``[B, H, W, C]``.
    targets: ``[B]``, ``[B, C']`` int or ``[B, K]`` float.
    tokens, layers, resize, resize_method: as for ``attention_rollout``.
    start_block: 0-based index of the first block of the chain (blocks
      ``start_block .. L-2`` are transitions; the last gives the state;
      ``>= L-1``: the last block's row alone).
    steps: points of the integrated gradient.
    chunk_size: images per forward/backward pass of the integral.

  Returns:
    ``[B, H, W]`` (or ``[B, C', H, W]``), non-negative.

  References:
    Yuan, Li, Xiong, Cao & Dou, "Explaining Information Flow Inside Vision
    Transformers Using Markov Chain", NeurIPS 2021 XAI4Debugging workshop.
  """
  x, t = core.prepare(classifier, x, targets)
  layout = token_layout(classifier, tokens, method="t_attn")
  names = attention_layers(classifier, x, layers, method="t_attn")
  _check_start(start_block, len(names), allow_empty=True)
  feats = classifier.apply(x)[1]
  means = [feats[n].mean(1) for n in names]               # [B, T, T]
  eye = jnp.eye(means[0].shape[-1], dtype=means[0].dtype)
  state = propagate_class_row(
      [eye + m for m in means[min(start_block, len(means) - 1):-1]],
      means[-1][:, 0])
  feedback = integrated_attention_gradient(
      classifier, x, names[-1], t.cotangents, steps=steps,
      chunk_size=chunk_size)
  row = jax.nn.relu(feedback).mean(2)[..., 0, :] * state[None]
  maps = class_row_to_map(row, layout, x, resize=resize,
                          resize_method=resize_method)
  return core.finish(maps, t)


PROBE_SUFFIX = "probe"


def inflow_classifier(module: nn.Module, variables) -> Classifier:
  """A classifier of a lapjax ViT with what InFlow reads, from one forward.

  ``apply(x, deltas)`` returns the logits and, per block ``l`` (``b =
  block{l}``), the taps ``b/attn/probs`` (perturbable by ``deltas``),
  ``b/attn`` (the attention output after its projection), ``b/mlp`` (the
  MLP output) and ``b`` (the block output), all as raw tokens ``[B, T,
  D]``, and ``b/probe``: the block's own class scores ``[B, K]``, the
  model's final LayerNorm and head applied to the token mean of the
  block output, ``head(mean_t norm(z_l))`` (Walker et al.'s released
  ``forward_features``).

  Args:
    module: a ``lapjax.models.vit.VisionTransformer``.
    variables: its variables.

  Raises:
    ValueError: for other modules.
  """
  if not isinstance(module, vit.VisionTransformer):
    raise ValueError(
        "inflow_classifier reads the blocks, final norm and head of "
        "lapjax.models.vit.VisionTransformer; got "
        f"{type(module).__name__}")
  blocks = tuple(f"block{i + 1}" for i in range(module.depth))
  taps = [name for b in blocks
          for name in (f"{b}/{ATTENTION_TAP_SUFFIX}", f"{b}/attn",
                       f"{b}/mlp", b)]
  base = from_flax(module, variables, layers=taps, tokens=None)
  norm = nn.LayerNorm(epsilon=module.layer_norm_eps, use_fast_variance=False)
  head = nn.Dense(module.num_classes)
  params = variables["params"]

  def apply(x, deltas=None):
    logits, feats = base.apply(x, deltas)
    feats = dict(feats)
    for b in blocks:
      pooled = norm.apply({"params": params["norm"]}, feats[b]).mean(1)
      feats[f"{b}/{PROBE_SUFFIX}"] = head.apply({"params": params["head"]},
                                                pooled)
    return logits, feats

  return Classifier(apply=apply, layers=base.layers,
                    tokens=module.token_layout())


def _share(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(a, b) / max(a + b, 1e-12)`` for non-negative ``a``, ``b`` (PyTorch's
  ``normalize(p=1)`` over the pair)."""
  total = jnp.maximum(a + b, 1e-12)
  return a / total, b / total


@compiled
def inflow(classifier: Classifier, x: jax.Array, targets, *,
           tokens: TokenLayout | None = None,
           bottom_up_gradient: bool = True, residuals: str = "both",
           resize: bool = True, resize_method: str = "bilinear"
           ) -> jax.Array:
  """InFlow: rollout through both residual connections of every block.

  InFlow models each block as the paper's series and converging-path
  algebra of transition matrices and patch embeddings; lapjax follows the
  released ``generate_InFlow`` / ``compute_InFlow`` (the paper's equations
  were not available to this implementation, so no equation numbers are
  named). Per block ``l``: the heads are weighted as in Bi-attn,
  ``I^h = mean_ij |(A^{h\\top} \\nabla A^h)_{ij}|`` normalised over the
  heads (``\\nabla A``: gradient of the target score), and the strongest
  weighted head kept per entry, ``\\tilde A = \\max_h I^h A^h``; with the
  bottom-up gradient, ``\\tilde A \\leftarrow (\\mathbb{E}_h[\\nabla_{A}
  s_l] \\odot \\tilde A)^+`` where ``s_l = head(mean_t norm(z_l))_{target}``
  is the block's own class score. Each residual connection is weighted by
  the per-token L2 norms of its two summands, ``a_t = |x_t| / (|x_t| +
  |attn_t|)``, ``b_t = 1 - a_t`` (block input ``x``, attention output) and
  ``c_t = |r_t| / (|r_t| + |mlp_t|)``, ``d_t = 1 - c_t`` (first residual
  sum ``r``, MLP output):

  .. math:: M^{(1)} = \\tilde A\\, \\mathrm{diag}(b) + \\mathrm{diag}(a),
     \\quad M^{(2)} = \\mathrm{diag}(\\rho \\odot d + c), \\quad
     \\rho = \\frac{d / c}{\\lVert d / c \\rVert_1}, \\quad
     M_l = \\mathrm{rownorm}(M^{(1)} M^{(2)}),

  and the map is the class row of ``M_L \\cdots M_1`` (patch columns).
  As in the released code the attention-output share ``b`` scales the
  columns (keys) of ``\\tilde A``, and ``s_l`` are the head's logits, not
  probabilities. Head weights are per image and class (the released code
  assumes one image); a block whose head agreements are all zero gets zero
  weights (the released code divides by zero there).

  Args:
    classifier: ``inflow_classifier(module, variables)``.
    x: ``[B, H, W, C]``.
    targets: ``[B]``, ``[B, C']`` int or ``[B, K]`` float.
    tokens: the token layout; None reads ``classifier.tokens``.
    bottom_up_gradient: weight ``\\tilde A`` by the block's own score
      gradient (the released ``withgrad=True``, the default).
    residuals: ``'both'`` (InFlow) or ``'attention'`` (only ``M^{(1)}``,
      the released ``ablate=1``).
    resize, resize_method: as for ``attention_rollout``.

  Returns:
    ``[B, H, W]`` (or ``[B, C', H, W]``), non-negative.

  References:
    Walker, Ahmed, Jha & Ewetz, "Explaining ViTs Using Information Flow",
    AISTATS 2025 (PMLR 258:2440-2448); code:
    github.com/chasewalker26/InFlow-ViT-Explanation.
  """
  if residuals not in ("both", "attention"):
    raise ValueError(f"residuals must be 'both' or 'attention'; got "
                     f"{residuals!r}")
  x, t = core.prepare(classifier, x, targets)
  layout = token_layout(classifier, tokens, method="inflow")
  names = attention_layers(classifier, x, method="inflow")
  blocks = [n[:-len(ATTENTION_TAP_SUFFIX) - 1] for n in names]
  shapes = jax.eval_shape(classifier.apply, x)[1]
  needed = [f"{b}/{s}" for b in blocks for s in ("attn", "mlp",
                                                  PROBE_SUFFIX)] + blocks
  missing = [n for n in needed if n not in shapes]
  if missing or any(len(shapes[b].shape) != 3 for b in blocks):
    raise ValueError(
        "inflow reads each block's input, attention and MLP outputs as raw "
        "tokens and its own class scores; build the classifier with "
        "lapjax.attribution.transformer.inflow_classifier(module, "
        f"variables) (missing: {missing[:4]})")
  zeros = {n: jnp.zeros(shapes[n].shape, shapes[n].dtype) for n in names}

  def run(deltas):
    logits, feats = classifier.apply(x, deltas)
    probes = jnp.stack([feats[f"{b}/{PROBE_SUFFIX}"] for b in blocks])
    return (logits, probes), feats

  (logits, probes), vjp, feats = jax.vjp(run, zeros, has_aux=True)
  cot = t.cotangents.astype(logits.dtype)                 # [C', B, K]
  final = jax.vmap(lambda c: vjp((c, jnp.zeros_like(probes)))[0])(cot)
  matrices = []
  for i, (name, b) in enumerate(zip(names, blocks)):
    a, g = feats[name], final[name]                      # [B,h,T,T], [C',..]
    agree = jnp.abs(jnp.einsum("bhki,cbhkj->cbhij", a, g,
                               precision=_HIGHEST)).mean((-2, -1))
    total = agree.sum(-1, keepdims=True)
    weights = jnp.where(total > 0, agree / jnp.where(total > 0, total, 1.0),
                        0.0)                              # [C', B, h]
    kept = (a[None] * weights[..., None, None]).max(2)    # [C', B, T, T]
    if bottom_up_gradient:
      at_block = jnp.zeros_like(probes)
      up = jax.vmap(lambda c, i=i, at=at_block, n=name: vjp(
          (jnp.zeros_like(logits), at.at[i].set(c)))[0][n])(cot)
      kept = jax.nn.relu(up.mean(2) * kept)
    out = feats[b]
    resid = out - feats[f"{b}/mlp"]                       # x + attn
    block_in = resid - feats[f"{b}/attn"]
    norm = functools.partial(jnp.linalg.norm, axis=-1)
    keep_in, attn_share = _share(norm(block_in), norm(feats[f"{b}/attn"]))
    m = kept * attn_share[None, :, None, :] + jnp.eye(
        a.shape[-1], dtype=a.dtype) * keep_in[None, :, None, :]
    if residuals == "both":
      keep_resid, mlp_share = _share(norm(resid), norm(feats[f"{b}/mlp"]))
      ratio = mlp_share / keep_resid
      ratio = ratio / jnp.maximum(jnp.abs(ratio).sum(-1, keepdims=True),
                                  1e-12)
      m = m * (ratio * mlp_share + keep_resid)[None, :, None, :]
    matrices.append(m / m.sum(-1, keepdims=True))
  row = propagate_class_row(matrices)                     # [C', B, T]
  maps = class_row_to_map(row, layout, x, resize=resize,
                          resize_method=resize_method)
  return core.finish(maps, t)
