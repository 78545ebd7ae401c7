"""Vision Transformer (ViT) in timm's layout, numerically equal to timm's.

The image ``x [B, H, W, C]`` is cut into ``p x p`` patches, each embedded
linearly (``patch_embed``, a ``p x p`` convolution with stride ``p``); a
learned class token is prepended and learned position embeddings are added;
``depth`` pre-norm transformer blocks follow:

.. math::

  z' = z + \\mathrm{Attn}(\\mathrm{LN}_1(z)), \\qquad
  z'' = z' + \\mathrm{MLP}(\\mathrm{LN}_2(z')),

with multi-head attention
:math:`\\mathrm{softmax}(q k^\\top / \\sqrt{d_h})\\, v` from one fused ``qkv``
projection, an MLP ``fc1 -> GELU (exact erf) -> fc2``, LayerNorm
``epsilon=1e-6`` (timm; Hugging Face checkpoints carry theirs, ``1e-12``),
a final LayerNorm and a linear head on the class token (timm's ``'token'``
pooling).

Taps (``lapjax.from_flax`` layer names), shallow to deep:

* ``patch_embed``: patch tokens ``[B, N, D]``, ``N = (H/p)(W/p)`` in
  row-major grid order (before the class token and position embeddings);
* ``block1`` .. ``block{depth}``: tokens ``[B, 1 + N, D]``, class token first;
* ``block{i}/attn/probs``: attention probabilities ``[B, heads, 1 + N,
  1 + N]`` (rows: queries, columns: keys; every row sums to 1). A tap like
  any other, so ``deltas`` perturb the probabilities after the softmax and
  give their gradients (attention rollout, Grad-Rollout, T-Attr);
* ``norm``: the final normalised tokens ``[B, 1 + N, D]``; ``head``: logits.

CAM layer. The head reads only the class token, so the patch tokens that
the last block outputs do not reach the logits: their gradient is exactly
zero and a Grad-CAM there is an empty map. The cards' ``cam_layer`` is
therefore ``block{depth}/norm1``, the normalised input of the last block,
whose patch tokens the class token attends to (pytorch-grad-cam's choice,
``model.blocks[-1].norm1``, so maps compare with published ones). Token taps
become ``[B, h, w, D]`` maps by dropping the class token and reshaping the
patch tokens to the input's grid (row-major): ``lapjax.from_flax`` reads
``token_layout()`` and does it for every token tap (``from_flax(...,
tokens=None)`` keeps the tokens).

Input size. The position embeddings are learned for the patch grid of
``image_size``. Any other input whose sides are multiples of ``p`` is
accepted: the grid part of the embeddings is resampled to the new grid as
timm does (``resample_abs_pos_embed``, i.e. PyTorch's antialiased bicubic
``F.interpolate``, the class token's embedding unchanged), so the numbers
equal timm's ``dynamic_img_size=True`` model. Non-square inputs and grids
are supported. Hugging Face's ``interpolate_pos_encoding=True`` resamples
with plain (not antialiased) bicubic and gives different numbers at other
sizes; at the checkpoint's own size both agree.

References:
  Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image
  Recognition at Scale", ICLR 2021.
  Steiner et al., "How to train your ViT? Data, Augmentation, and
  Regularization in Vision Transformers", TMLR 2022 (the augreg weights).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lapjax.models.card import (
  INCEPTION_MEAN,
  INCEPTION_STD,
  TORCH_LEAF,
  Layout,
  ModelCard,
  Source,
  VariablePath,
)
from lapjax.models.layers import Activation
from lapjax.tokens import TokenLayout


def _cubic_antialias(x: np.ndarray) -> np.ndarray:
  """Keys' cubic kernel with ``a = -0.5`` (PIL's, PyTorch's antialiased)."""
  a = -0.5
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def bicubic_resize_matrix(size_in: int, size_out: int) -> np.ndarray:
  """``[size_out, size_in]`` weights of PyTorch's antialiased bicubic resize.

  One axis of ``F.interpolate(mode='bicubic', align_corners=False,
  antialias=True)``: output sample ``i`` sits at ``c = s (i + 1/2)`` in input
  coordinates (``s = size_in / size_out``); the kernel, widened by ``s`` when
  shrinking, is evaluated at the input samples within its support, cut at
  the borders and normalised to sum to 1 (PIL's scheme).
  """
  scale = size_in / size_out
  support = 2.0 * max(scale, 1.0)
  inv = 1.0 / scale if scale >= 1.0 else 1.0
  weights = np.zeros((size_out, size_in), np.float64)
  for i in range(size_out):
    center = scale * (i + 0.5)
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), size_in)
    taps = np.arange(lo, hi)
    w = _cubic_antialias((taps - center + 0.5) * inv)
    weights[i, lo:hi] = w / w.sum()
  return weights


def resample_pos_embed(pos_embed: jax.Array, grid_in: Sequence[int],
                       grid_out: Sequence[int], *,
                       num_prefix_tokens: int = 1) -> jax.Array:
  """Resamples position embeddings to another patch grid, as timm does.

  Args:
    pos_embed: ``[1, num_prefix_tokens + h * w, D]``, grid tokens row-major.
    grid_in: ``(h, w)`` of ``pos_embed``.
    grid_out: the new ``(h', w')``.
    num_prefix_tokens: leading (class) tokens, kept unchanged.

  Returns:
    ``[1, num_prefix_tokens + h' * w', D]``: the grid part resized by
    antialiased bicubic interpolation (``bicubic_resize_matrix`` per axis),
    equal to timm's ``resample_abs_pos_embed``.
  """
  (h, w), (h2, w2) = tuple(grid_in), tuple(grid_out)
  if (h, w) == (h2, w2):
    return pos_embed
  prefix = pos_embed[:, :num_prefix_tokens]
  grid = pos_embed[:, num_prefix_tokens:].reshape(h, w, -1)
  rows = jnp.asarray(bicubic_resize_matrix(h, h2), pos_embed.dtype)
  cols = jnp.asarray(bicubic_resize_matrix(w, w2), pos_embed.dtype)
  grid = jnp.einsum("ih,hwd->iwd", rows, grid, precision="highest")
  grid = jnp.einsum("jw,iwd->ijd", cols, grid, precision="highest")
  return jnp.concatenate([prefix, grid.reshape(1, h2 * w2, -1)], axis=1)


class PatchEmbed(nn.Module):
  """``[B, H, W, C] -> [B, (H/p)(W/p), D]``: a ``p x p`` stride-``p`` conv."""
  embed_dim: int
  patch_size: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.patch_size
    x = nn.Conv(self.embed_dim, (p, p), (p, p), padding="VALID",
                name="proj")(x)
    b, h, w, d = x.shape
    return x.reshape(b, h * w, d)


class AttentionProbs(nn.Module):
  """Softmax over keys, ``[B, heads, T, T]``; a module so it is a tap."""

  @nn.compact
  def __call__(self, scores: jax.Array) -> jax.Array:
    return jax.nn.softmax(scores, axis=-1)


class Attention(nn.Module):
  """Multi-head self-attention with a fused ``qkv`` projection (timm's).

  ``qkv`` outputs ``[q | k | v]``, each ``heads x head_dim`` (head-major),
  the order of timm's ``reshape(B, N, 3, heads, head_dim)``.
  """
  num_heads: int
  qkv_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"embedding width {d} is not divisible by "
                       f"num_heads={self.num_heads}")
    head_dim = d // self.num_heads
    qkv = nn.Dense(3 * d, use_bias=self.qkv_bias, name="qkv")(x)
    q, k, v = jnp.moveaxis(qkv.reshape(b, t, 3, self.num_heads, head_dim),
                           2, 0)
    scores = jnp.einsum("bqhc,bkhc->bhqk", q * head_dim ** -0.5, k)
    probs = AttentionProbs(name="probs")(scores)
    out = jnp.einsum("bhqk,bkhc->bqhc", probs, v).reshape(b, t, d)
    return nn.Dense(d, name="proj")(out)


def gelu(x: jax.Array) -> jax.Array:
  """The exact GELU, ``x * Phi(x)`` with the normal CDF by ``erf`` (timm's
  ``nn.GELU``, Hugging Face's ``'gelu'``)."""
  return nn.gelu(x, approximate=False)


def gelu_tanh(x: jax.Array) -> jax.Array:
  """GELU with the tanh approximation (Hugging Face's ``'gelu_new'``)."""
  return nn.gelu(x, approximate=True)


class Mlp(nn.Module):
  """``fc2(act(fc1(x)))``."""
  hidden_dim: int
  act: Activation = gelu

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.Dense(self.hidden_dim, name="fc1")(x)
    return nn.Dense(x.shape[-1], name="fc2")(self.act(y))


class Block(nn.Module):
  """Pre-norm transformer block: attention then MLP, each residual."""
  num_heads: int
  mlp_dim: int
  layer_norm_eps: float = 1e-6
  qkv_bias: bool = True
  act: Activation = gelu

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    norm = functools.partial(nn.LayerNorm, epsilon=self.layer_norm_eps,
                             use_fast_variance=False)
    x = x + Attention(self.num_heads, self.qkv_bias, name="attn")(
        norm(name="norm1")(x))
    return x + Mlp(self.mlp_dim, self.act, name="mlp")(
        norm(name="norm2")(x))


class VisionTransformer(nn.Module):
  """ViT classifier on ``x [B, H, W, C]`` (normalised), logits ``[B, K]``.

  Attributes:
    num_classes: logits ``K``.
    patch_size: ``p``; ``H`` and ``W`` must be multiples of it.
    embed_dim: token width ``D``.
    depth: number of blocks (taps ``block1`` .. ``block{depth}``).
    num_heads: attention heads (``D`` divisible by it).
    mlp_dim: MLP hidden width; ``4 D`` when None.
    image_size: ``(H, W)`` the position embeddings are learned for; other
      sizes resample them (module docstring).
    layer_norm_eps: LayerNorm epsilon (timm 1e-6, Hugging Face 1e-12).
    qkv_bias: whether ``qkv`` has a bias.
    act: the MLP activation: ``gelu`` (exact, timm's ``nn.GELU``) or
      ``gelu_tanh`` (Hugging Face ``'gelu_new'``). Injectable like the
      ``act`` of lapjax's ReLU models, so ``guided_classifier`` sees that a
      ViT is not a ReLU network and refuses it by name.
  """
  num_classes: int = 1000
  patch_size: int = 16
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int | None = None
  image_size: tuple[int, int] = (224, 224)
  layer_norm_eps: float = 1e-6
  qkv_bias: bool = True
  act: Activation = gelu

  def token_layout(self) -> TokenLayout:
    """How the token taps map onto the image: ``patch_size`` square patches
    after one class token. ``lapjax.from_flax`` reads it, so token taps
    come out as ``[B, h, w, D]`` grids with no argument from the user."""
    return TokenLayout((self.patch_size, self.patch_size),
                       num_prefix_tokens=1)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Logits ``[B, num_classes]``; ``train`` is accepted for the common
    model signature and changes nothing (this ViT has no dropout)."""
    del train
    p, d = self.patch_size, self.embed_dim
    _, height, width, _ = x.shape
    if height % p or width % p:
      raise ValueError(
          f"input of {height}x{width} pixels is not a whole number of "
          f"{p}x{p} patches; resize or crop it to multiples of {p} (the "
          f"model was trained at {self.image_size[0]}x{self.image_size[1]})")
    grid_in = (self.image_size[0] // p, self.image_size[1] // p)
    grid = (height // p, width // p)
    tokens = PatchEmbed(d, p, name="patch_embed")(x)
    cls_token = self.param("cls_token", nn.initializers.normal(1e-6),
                           (1, 1, d))
    pos_embed = self.param("pos_embed", nn.initializers.normal(0.02),
                           (1, 1 + grid_in[0] * grid_in[1], d))
    pos_embed = resample_pos_embed(pos_embed, grid_in, grid)
    cls_tokens = jnp.broadcast_to(cls_token.astype(tokens.dtype),
                                  (tokens.shape[0], 1, d))
    x = jnp.concatenate([cls_tokens, tokens], axis=1) + pos_embed
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_dim or 4 * d, self.layer_norm_eps,
                self.qkv_bias, self.act, name=f"block{i + 1}")(x)
    x = nn.LayerNorm(epsilon=self.layer_norm_eps, use_fast_variance=False,
                     name="norm")(x)
    return nn.Dense(self.num_classes, name="head")(x[:, 0])


def attention_taps(depth: int) -> tuple[str, ...]:
  """The attention-probability taps ``block{i}/attn/probs``, shallow first."""
  return tuple(f"block{i + 1}/attn/probs" for i in range(depth))


# Checkpoint layouts. A Flax path is ('params', *modules, leaf); blocks are
# 1-based here ('block1') and 0-based in PyTorch ('blocks.0').

_BLOCK = re.compile(r"block(\d+)$")


def _split_path(path: VariablePath) -> tuple[int | None, tuple[str, ...], str]:
  """``('params', 'block3', 'attn', 'qkv', 'kernel')`` -> ``(2, ('attn',
  'qkv'), 'kernel')``; the block index is None outside the blocks."""
  if path[0] != "params":
    raise KeyError(f"a ViT has only 'params'; got {'/'.join(path)}")
  modules, leaf = tuple(path[1:-1]), path[-1]
  match = _BLOCK.match(modules[0]) if modules else None
  if match:
    return int(match.group(1)) - 1, modules[1:], leaf
  return None, modules, leaf


def _timm_key(path: VariablePath) -> str:
  block, modules, leaf = _split_path(path)
  if not modules:                       # cls_token, pos_embed
    return leaf
  name = ".".join(modules) + "." + TORCH_LEAF[leaf]
  return name if block is None else f"blocks.{block}.{name}"


TIMM_LAYOUT = Layout(name="timm", key=_timm_key)
"""timm's ``VisionTransformer`` state dict (``blocks.0.attn.qkv.weight``)."""

_HF_BLOCK = {
    ("norm1",): "layernorm_before",
    ("attn", "proj"): "attention.output.dense",
    ("norm2",): "layernorm_after",
    ("mlp", "fc1"): "intermediate.dense",
    ("mlp", "fc2"): "output.dense",
}
_HF_TOP = {
    ("patch_embed", "proj"): "vit.embeddings.patch_embeddings.projection",
    ("norm",): "vit.layernorm",
    ("head",): "classifier",
}
_HF_TOP_PARAM = {"cls_token": "cls_token",
                 "pos_embed": "position_embeddings"}


def _fused_qkv_kernel(query: np.ndarray, key: np.ndarray,
                      value: np.ndarray) -> np.ndarray:
  """Three PyTorch ``[D, D]`` weights -> the Flax ``qkv`` kernel ``[D, 3D]``."""
  return np.concatenate([query, key, value], axis=0).T


def _fused_qkv_bias(query: np.ndarray, key: np.ndarray,
                    value: np.ndarray) -> np.ndarray:
  return np.concatenate([query, key, value], axis=0)


def _hf_key(path: VariablePath) -> str | Source:
  block, modules, leaf = _split_path(path)
  if block is None:
    if not modules:
      return f"vit.embeddings.{_HF_TOP_PARAM[leaf]}"
    return f"{_HF_TOP[modules]}.{TORCH_LEAF[leaf]}"
  layer = f"vit.encoder.layer.{block}"
  if modules == ("attn", "qkv"):
    keys = tuple(f"{layer}.attention.attention.{n}.{TORCH_LEAF[leaf]}"
                 for n in ("query", "key", "value"))
    combine = _fused_qkv_kernel if leaf == "kernel" else _fused_qkv_bias
    return Source(keys, combine)
  return f"{layer}.{_HF_BLOCK[modules]}.{TORCH_LEAF[leaf]}"


HF_LAYOUT = Layout(name="hf", key=_hf_key)
"""Hugging Face ``ViTForImageClassification`` (``save_pretrained`` names):
separate ``query``/``key``/``value`` tensors, fused into ``qkv`` on import."""

LAYOUTS: Mapping[str, Layout] = {"timm": TIMM_LAYOUT, "hf": HF_LAYOUT}

_HF_GELU = {"gelu": gelu, "gelu_new": gelu_tanh,
            "gelu_pytorch_tanh": gelu_tanh}


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
  if isinstance(value, int):
    return value, value
  value = tuple(int(v) for v in value)
  if len(value) != 2:
    raise ValueError(f"config {name}={list(value)}: expected an int or "
                     "[height, width]")
  return value


def vit_from_hf_config(config: Mapping[str, Any],
                       num_classes: int | None = None
                       ) -> tuple[VisionTransformer, Layout]:
  """Builds a ViT of any size from a Hugging Face ``config.json`` dict.

  Args:
    config: the ``ViTConfig`` as a dict (``hidden_size``,
      ``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size``,
      ``image_size``, ``patch_size``, ``layer_norm_eps``, ``hidden_act``,
      ``qkv_bias``, ``id2label`` / ``num_labels``); missing keys take
      ``ViTConfig``'s defaults.
    num_classes: logits of the head; None takes the config's labels.

  Returns:
    ``(module, HF_LAYOUT)``.
  """
  act = config.get("hidden_act", "gelu")
  if act not in _HF_GELU:
    raise ValueError(f"ViT config hidden_act={act!r} is not supported; "
                     f"supported: {sorted(_HF_GELU)}")
  patch = _pair(config.get("patch_size", 16), "patch_size")
  if patch[0] != patch[1]:
    raise ValueError(f"ViT config patch_size={list(patch)}: only square "
                     "patches are supported")
  if num_classes is None:
    labels = config.get("id2label")
    num_classes = (len(labels) if labels
                   else int(config.get("num_labels", 2)))
  module = VisionTransformer(
      num_classes=num_classes,
      patch_size=patch[0],
      embed_dim=int(config.get("hidden_size", 768)),
      depth=int(config.get("num_hidden_layers", 12)),
      num_heads=int(config.get("num_attention_heads", 12)),
      mlp_dim=int(config.get("intermediate_size", 3072)),
      image_size=_pair(config.get("image_size", 224), "image_size"),
      layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
      qkv_bias=bool(config.get("qkv_bias", True)),
      act=_HF_GELU[act])
  return module, HF_LAYOUT


HF_MODEL_TYPES: dict[str, Callable[..., tuple[nn.Module, Layout]]] = {
    "vit": vit_from_hf_config,
}


def _card(name: str, *, patch_size: int, embed_dim: int, num_heads: int,
          depth: int = 12) -> ModelCard:
  """A timm ImageNet-1k ViT at 224 (augreg weights: mean = std = 0.5,
  crop_pct 0.9 -> resize 248, bicubic; timm's default pretrained_cfg)."""
  build = functools.partial(VisionTransformer, patch_size=patch_size,
                            embed_dim=embed_dim, depth=depth,
                            num_heads=num_heads, image_size=(224, 224))
  grid = 224 // patch_size
  blocks = tuple(f"block{i + 1}" for i in range(depth))
  return ModelCard(
      name=name, build=build, input_size=(224, 224),
      cam_layer=f"{blocks[-1]}/norm1", taps=("patch_embed", *blocks, "norm"),
      layouts=LAYOUTS, mean=INCEPTION_MEAN, std=INCEPTION_STD,
      resize_size=248, interpolation="bicubic", num_classes=1000,
      token_grid=(grid, grid), num_prefix_tokens=1)


CARDS: dict[str, ModelCard] = {
    "vit_small_patch16_224": _card("vit_small_patch16_224", patch_size=16,
                                   embed_dim=384, num_heads=6),
    "vit_base_patch16_224": _card("vit_base_patch16_224", patch_size=16,
                                  embed_dim=768, num_heads=12),
    "vit_base_patch32_224": _card("vit_base_patch32_224", patch_size=32,
                                  embed_dim=768, num_heads=12),
    "vit_base_patch8_224": _card("vit_base_patch8_224", patch_size=8,
                                 embed_dim=768, num_heads=12),
}
