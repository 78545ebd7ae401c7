"""The Classifier: the one interface every attribution method and metric sees.

A ``Classifier`` is a pure function plus the names of the layers it can tap::

  logits, features = classifier.apply(x, deltas=None)

``x [B, H, W, C]`` float in the model's input space; ``logits [B, K]``;
``features`` maps each name in ``classifier.layers`` to that layer's output
(``[B, h, w, c]`` for convolutional taps). ``deltas`` maps layer names to
arrays added to those layers' outputs, so ``d logits / d deltas[name]`` at
zero is the gradient w.r.t. that activation (the semantics of Flax's
``Module.perturb``), which is how CAM-type methods reach intermediate
gradients without hooks. Any framework fits behind a three-line adapter.

``from_flax`` builds one from any Flax linen module without changing it: layer
names are submodule paths (``'block2'``, ``'stage3/block1'``), tapped with
``flax.linen.intercept_methods`` around each submodule's ``__call__``. The
module runs with no mutable collections, so a BatchNorm that tried to update
its statistics (training mode) raises instead of mixing batch items.

Transformers (DESIGN.md §10). A classifier with a ``TokenLayout``
(``classifier.tokens``; ``from_flax`` reads it from the module's
``token_layout()``, as lapjax's ``VisionTransformer`` has, or takes
``tokens=``) returns every token tap ``[B, T, D]`` as the grid of its patch
tokens ``[B, h, w, D]`` (``lapjax.tokens.tokens_to_grid``: class/register
tokens dropped, row-major), and takes ``deltas`` of that grid shape (added
to the patch tokens, ``grid_to_tokens``), so every method that needs a
spatial map runs on a ViT unchanged. Attention probabilities ``[B, heads,
T, T]`` and every other tap are returned as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from lapjax.tokens import (
  TokenLayout,
  grid_to_tokens,
  module_token_layout,
  tap_layout,
  tokens_to_grid,
)


class Classifier(NamedTuple):
  """A model as lapjax sees it.

  Attributes:
    apply: ``apply(x, deltas=None) -> (logits [B, K], {layer: array})``.
    layers: names that may be tapped or perturbed, shallow to deep.
    tokens: for a transformer, how its tokens lie on the image (patch size,
      class/register tokens); its token taps are then ``[B, h, w, D]``
      grids. None for other models.
  """
  apply: Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
  layers: tuple[str, ...]
  tokens: TokenLayout | None = None


def check_images(x: Any, *, channels: int | None = None,
                 name: str = "x") -> None:
  """Raises ValueError unless ``x`` is a float ``[B, H, W, C]`` batch."""
  shape = getattr(x, "shape", None)
  dtype = getattr(x, "dtype", None)
  if shape is None or len(shape) != 4:
    raise ValueError(
        f"{name} must be a batch of images [B, H, W, C]; got shape {shape}"
        + (" (add a batch axis: x[None])" if shape is not None
           and len(shape) == 3 else ""))
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
        f"{name} must be floating point in the model's input space (e.g. "
        f"float32 in [0, 1]); got dtype {dtype}: convert and normalise first")
  if channels is not None and shape[-1] != channels:
    raise ValueError(
        f"{name} has {shape[-1]} channels (shape {tuple(shape)}); the model "
        f"expects {channels}")


def _path(module: nn.Module) -> str:
  return "/".join(module.path)


def _kernel_in_features(module: nn.Module) -> int | None:
  """Input channels a Conv or Dense expects, or None for other modules."""
  kernel = module.variables.get("params", {}).get("kernel")
  if kernel is None or not isinstance(module, (nn.Conv, nn.Dense)):
    return None
  groups = getattr(module, "feature_group_count", 1)
  return kernel.shape[-2] * groups


def perturb_tap(name: str, out: jax.Array, delta: jax.Array | None,
                tokens: TokenLayout | None, image_hw: tuple[int, int]
                ) -> tuple[jax.Array, jax.Array]:
  """``(the layer's perturbed output, its feature)``: ``out + delta``
  (``delta`` None: ``out``) and what the classifier returns for it. With
  ``tokens``, a token tap's feature and ``delta`` are its patch grid; the
  grid delta reaches the patch tokens only."""
  if tokens is None or out.ndim != 3:
    feature = out
    if delta is not None:
      if jnp.shape(delta) != out.shape:
        raise ValueError(
            f"deltas[{name!r}] has shape {jnp.shape(delta)}; layer "
            f"{name!r} outputs shape {out.shape}")
      out = feature = out + delta
    return out, feature
  layout = tap_layout(tokens, out.shape[1], image_hw)
  grid = tokens_to_grid(out, layout, image_hw, name=f"layer {name!r}")
  if delta is None:
    return out, grid
  if jnp.shape(delta) != grid.shape:
    raise ValueError(
        f"deltas[{name!r}] has shape {jnp.shape(delta)}; layer {name!r} is "
        f"a token layer whose patch grid has shape {grid.shape} (tokens "
        f"{out.shape}): give the delta of the grid")
  out = out + grid_to_tokens(delta, layout)
  return out, tokens_to_grid(out, layout, image_hw, name=f"layer {name!r}")


def _trace(module: nn.Module, variables: Mapping[str, Any], x: jax.Array,
           apply_kwargs: Mapping[str, Any], wanted: frozenset[str],
           deltas: Mapping[str, jax.Array], mutable: Any = False,
           tokens: TokenLayout | None = None):
  """Runs the module once, recording (and perturbing) the wanted taps.

  Returns ``(output, features, available)``: ``module.apply``'s output
  (logits; ``(logits, updates)`` when ``mutable``), and ``available``
  lists, in call order, every submodule path whose ``__call__`` returned an
  array (with its own output shape, tokens as tokens). With ``tokens``,
  wanted token taps are recorded as patch grids (``perturb_tap``).
  """
  features: dict[str, jax.Array] = {}
  available: dict[str, tuple[int, ...]] = {}
  checked_input = False

  def interceptor(next_fun, args, kwargs, context):
    nonlocal checked_input
    if context.method_name != "__call__" or not context.module.path:
      return next_fun(*args, **kwargs)
    mod = context.module
    if not checked_input and args and args[0] is x:
      expected = _kernel_in_features(mod)
      if expected is not None:
        checked_input = True
        check_images(x, channels=expected)
    out = next_fun(*args, **kwargs)
    name = _path(mod)
    if not isinstance(out, jax.Array):
      return out
    if name in available and name in wanted:
      raise ValueError(
          f"layer {name!r} is called more than once in one forward pass, so "
          "a tap on it is ambiguous; tap a submodule that runs once")
    available[name] = out.shape
    if name in wanted:
      out, features[name] = perturb_tap(name, out, deltas.get(name),
                                        tokens, x.shape[1:3])
    return out

  with nn.intercept_methods(interceptor):
    try:
      output = module.apply(variables, x, mutable=mutable, **apply_kwargs)
    except flax.errors.ModifyScopeVariableError as e:
      raise ValueError(
          "the model tried to update a variable while explaining (BatchNorm "
          "updating its 'batch_stats' in training mode?); attribution must "
          "run in inference mode so batch items stay independent: pass the "
          "model's flag through from_flax, e.g. from_flax(..., train=False)"
          f". Flax said: {e}") from None
  return output, features, available


def unknown_layer_error(unknown: Sequence[str],
                        available: Mapping[str, tuple[int, ...]]
                        ) -> ValueError:
  """The error for layer names a model lacks, listing the ones it has."""
  listing = ", ".join(f"{n} {list(s)}" for n, s in available.items())
  return ValueError(f"unknown layer(s) {sorted(unknown)}; available layers "
                    f"(call order, output shape): {listing}")


def resolve_layers(layers: Sequence[str] | None,
                   available: Mapping[str, tuple[int, ...]] | None,
                   adapter: str, *, tokens: TokenLayout | None = None,
                   image_hw: tuple[int, int] | None = None
                   ) -> tuple[str, ...]:
  """The layers an adapter taps, in call order.

  With ``available`` (every tappable path and its output shape, in call
  order) unknown names are refused and ``layers=None`` means every
  top-level spatial (``[B, h, w, c]``) layer, or for a transformer
  (``tokens`` and the ``image_hw`` of ``available``'s input) every
  top-level token layer ``[B, T, D]`` whose tokens are the patch grid
  (plus the prefix tokens): ``patch_embed``, the blocks, ``norm``. Without
  ``available`` the names are checked at the first call and ``layers`` is
  required.
  """
  if available is not None:
    if layers is None:
      if tokens is None:
        layers = [n for n, s in available.items()
                  if "/" not in n and len(s) == 4]
      else:
        layers = [n for n, s in available.items()
                  if "/" not in n and tokens.is_token_tap(s, image_hw)]
    unknown = [n for n in layers if n not in available]
    if unknown:
      raise unknown_layer_error(unknown, available)
    order = list(available)
    return tuple(sorted(layers, key=order.index))
  if layers is None:
    raise ValueError(f"{adapter} needs layers=... or input_shape=(H, W, C) "
                     "to find the default layers")
  return tuple(layers)


def check_deltas(deltas: Mapping[str, jax.Array] | None,
                 layers: Sequence[str]) -> dict[str, jax.Array]:
  """``deltas`` as a dict, refusing names the classifier does not tap."""
  deltas = dict(deltas or {})
  extra = [n for n in deltas if n not in layers]
  if extra:
    raise ValueError(f"deltas names layers {extra} that this classifier "
                     f"does not tap; its layers are {list(layers)}")
  return deltas


def apply_tapped(module: nn.Module, variables: Mapping[str, Any],
                 x: jax.Array, *, layers: Sequence[str],
                 deltas: Mapping[str, jax.Array] | None = None,
                 mutable: Any = False, tokens: TokenLayout | None = None,
                 **apply_kwargs: Any
                 ) -> tuple[Any, dict[str, jax.Array]]:
  """``module.apply`` with ``deltas`` added to the outputs of ``layers``.

  The primitive under ``from_flax``, for code that needs the module's own
  mode, e.g. a training step whose loss differentiates a layer of the
  training forward pass (``train=True, mutable=['batch_stats']``), where
  BatchNorm uses the batch's statistics and so couples batch items.

  With ``tokens``, token taps and their ``deltas`` are patch grids (module
  docstring).

  Returns:
    ``(output, features)``: what ``module.apply(variables, x,
    mutable=mutable, **apply_kwargs)`` returns, and ``{layer: output}``.
  """
  wanted = frozenset(layers)
  output, features, avail = _trace(module, variables, x, apply_kwargs,
                                   wanted, dict(deltas or {}), mutable,
                                   tokens)
  missing = [n for n in layers if n not in features]
  if missing:
    raise unknown_layer_error(missing, avail)
  return output, {n: features[n] for n in layers}


def available_layers(module: nn.Module, variables: Mapping[str, Any],
                     input_shape: Sequence[int],
                     **apply_kwargs: Any) -> dict[str, tuple[int, ...]]:
  """Every tappable submodule path of ``module``, in call order.

  Args:
    module: a Flax linen module.
    variables: its variables.
    input_shape: ``(H, W, C)`` of one image.
    **apply_kwargs: extra arguments of ``module.apply``.

  Returns:
    ``{path: output shape}`` for a batch of one, shallow to deep.
  """
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)

  def run(x):
    return _trace(module, variables, x, apply_kwargs, frozenset(), {})[2]

  shapes = {}

  def collect(x):
    shapes.update(run(x))
    return 0

  jax.eval_shape(collect, x)
  return shapes


AUTO = "auto"


def resolve_tokens(module: Any, tokens: TokenLayout | None | str
                   ) -> TokenLayout | None:
  """``tokens`` of an adapter: ``'auto'`` reads the module's layout."""
  if isinstance(tokens, str):
    if tokens != AUTO:
      raise ValueError(f"tokens must be a TokenLayout, None or 'auto'; got "
                       f"{tokens!r}")
    return module_token_layout(module)
  if tokens is not None and not isinstance(tokens, TokenLayout):
    raise ValueError("tokens must be a lapjax.tokens.TokenLayout, None or "
                     f"'auto'; got {type(tokens).__name__}")
  return tokens


def from_flax(module: nn.Module, variables: Mapping[str, Any], *,
              layers: Sequence[str] | None = None,
              input_shape: Sequence[int] | None = None,
              tokens: TokenLayout | None | str = AUTO,
              **apply_kwargs: Any) -> Classifier:
  """Builds a ``Classifier`` from any Flax linen module, unchanged.

  Args:
    module: the linen module; ``module.apply(variables, x, **apply_kwargs)``
      must return logits ``[B, K]`` in inference mode (lapjax models default
      to ``train=False``; pass e.g. ``deterministic=True`` for others).
    variables: its variables (``params``, ``batch_stats``, ...).
    layers: submodule paths to tap, e.g. ``('block2', 'stage3/block1')``.
      ``None`` taps every direct child with a 4-D output, or for a
      transformer every direct child with token output (needs
      ``input_shape``).
    input_shape: ``(H, W, C)`` of one image; when given, layer names are
      checked now rather than at the first call.
    tokens: how a transformer's tokens lie on the image. ``'auto'`` (the
      default) reads the module's ``token_layout()`` (lapjax's
      ``VisionTransformer`` and wrappers of it), None otherwise; a
      ``TokenLayout`` for other transformers; None keeps token taps as
      tokens ``[B, T, D]``. With a layout, token taps are ``[B, h, w, D]``
      patch grids and ``deltas`` for them take that shape (module
      docstring); a token tap whose length is not the patch grid (plus the
      prefix tokens) of the input raises, naming the layer, its shape and
      the grid expected.
    **apply_kwargs: extra keyword arguments of ``module.apply``.

  Returns:
    A ``Classifier`` (``tokens`` set for transformers); its ``apply`` is
    pure and jittable.

  Raises:
    ValueError: unknown layer names (the message lists the available ones
      with their output shapes), or ``layers=None`` without ``input_shape``.
  """
  if "mutable" in apply_kwargs:
    raise ValueError(
        "from_flax runs the module with no mutable collections, so that "
        "batch items stay independent; got mutable="
        f"{apply_kwargs['mutable']!r}. For a training-mode forward pass "
        "(BatchNorm on batch statistics) use lapjax.classifier.apply_tapped")
  tokens = resolve_tokens(module, tokens)
  avail = (None if input_shape is None else
           available_layers(module, variables, input_shape, **apply_kwargs))
  layers = resolve_layers(layers, avail, "from_flax", tokens=tokens,
                          image_hw=None if input_shape is None
                          else tuple(input_shape[:2]))

  def apply(x: jax.Array, deltas: Mapping[str, jax.Array] | None = None
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
    check_images(x)
    deltas = check_deltas(deltas, layers)
    return apply_tapped(module, variables, x, layers=layers, deltas=deltas,
                        tokens=tokens, **apply_kwargs)

  return Classifier(apply=apply, layers=layers, tokens=tokens)
