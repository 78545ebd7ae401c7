"""Pretrained weights: checkpoint files in, Flax variables out.

Three layers, each usable alone:

* ``read_checkpoint(path)`` reads a file or a Hugging Face model directory
  into a flat ``{name: np.ndarray}`` state dict: ``.safetensors`` (the
  ``safetensors`` package, NumPy side), PyTorch pickles ``.pth`` / ``.pt`` /
  ``.bin`` (``lapjax.models.torch_pickle``: no torch, no code run), ``.npz``
  (no pickles), and directories as ``save_pretrained`` writes them
  (``model.safetensors``, sharded ``model.safetensors.index.json``, or
  ``pytorch_model.bin``).
* ``import_weights(module, checkpoint, layout=...)`` maps every variable of
  a Flax module to its checkpoint tensor through a ``Layout``
  (``lapjax.models.card``), converts it by the standard rule of its leaf
  (a convolution ``kernel`` from PyTorch's ``[out, in, h, w]`` to Flax's
  ``[h, w, in, out]``, a dense ``kernel`` transposed, everything else as
  is) and checks its shape. It is strict: every variable is found, every
  checkpoint tensor is used exactly once (except the layout's ``ignore``
  patterns), and whatever does not fit is listed in the error.
* ``load_pretrained(name_or_dir, path)`` does both for a registered model
  (its card gives the module and the layout) or a Hugging Face directory
  (its ``config.json`` gives the family and the size).

A different number of classes re-initialises the classifier head (the
layout's ``head`` submodules) and logs a warning on the
``lapjax.models.weights`` logger naming the re-initialised variables, so
that a pretrained backbone can be fine-tuned on a new task.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import safetensors.numpy
from flax import traverse_util

from lapjax.models.card import Layout, ModelCard, Source
from lapjax.models.torch_pickle import load_torch_pickle

logger = logging.getLogger(__name__)

StateDict = dict[str, np.ndarray]
Checkpoint = str | os.PathLike | Mapping[str, Any]

_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Entries under which training scripts nest the state dict, most likely first.
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module",
                "state_dict_ema", "model_ema", "params", "weights", "net")
_LISTED = 10                       # names shown per category in errors
# What a layout's key function raises for a path it cannot name.
_LAYOUT_ERRORS = (KeyError, ValueError, IndexError, TypeError, AttributeError)


# ----------------------------------------------------------------- reading


def _read_safetensors(path: pathlib.Path) -> StateDict:
  try:
    return dict(safetensors.numpy.load_file(path))
  except KeyError as e:
    if e.args != ("BF16",):
      raise
  return _read_safetensors_bf16(path)


def _read_safetensors_bf16(path: pathlib.Path) -> StateDict:
  """The safetensors format by hand, for ``BF16`` (NumPy has no bfloat16).

  Format: an unsigned little-endian int64 ``n``, a JSON header of ``n``
  bytes (``{name: {dtype, shape, data_offsets: [begin, end]}}``), then the
  tensors' bytes, offsets relative to the end of the header.
  """
  dtypes = {**{k: np.dtype(v) for k, v in safetensors.numpy._TYPES.items()},
            "BF16": np.dtype(ml_dtypes.bfloat16)}
  raw = path.read_bytes()
  (n,) = struct.unpack("<Q", raw[:8])
  header = json.loads(raw[8:8 + n])
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    begin, end = info["data_offsets"]
    dtype = dtypes[info["dtype"]]
    buf = raw[8 + n + begin:8 + n + end]
    out[name] = np.frombuffer(buf, dtype.newbyteorder("<")).astype(
        dtype).reshape(info["shape"])
  return out


def _read_npz(path: pathlib.Path) -> StateDict:
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def _read_hf_directory(path: pathlib.Path) -> StateDict:
  if (path / "model.safetensors").exists():
    return _read_safetensors(path / "model.safetensors")
  index = path / "model.safetensors.index.json"
  if index.exists():
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    state: StateDict = {}
    for shard in shards:
      state.update(_read_safetensors(path / shard))
    return state
  if (path / "pytorch_model.bin").exists():
    return _flat_state_dict(load_torch_pickle(path / "pytorch_model.bin"),
                            str(path / "pytorch_model.bin"))
  raise FileNotFoundError(
      f"{path} holds no model.safetensors, model.safetensors.index.json or "
      f"pytorch_model.bin; it has {sorted(p.name for p in path.iterdir())}")


def read_checkpoint(path: str | os.PathLike) -> StateDict:
  """Reads a checkpoint file or Hugging Face directory as a flat state dict.

  Args:
    path: a ``.safetensors``, ``.npz`` or PyTorch (``.pth``, ``.pt``,
      ``.bin``, ``.ckpt``) file, or a directory written by Hugging Face's
      ``save_pretrained``.

  Returns:
    ``{name: np.ndarray}``. A PyTorch file whose state dict is nested
    (``{'state_dict': ...}``, ``{'model': ...}``) is unwrapped, and a
    ``module.`` prefix on every key (``nn.DataParallel``) is stripped; both
    are logged.

  Raises:
    FileNotFoundError: no such file.
    ValueError: an unknown suffix, or a file that is not a checkpoint.
    lapjax.models.torch_pickle.UnsafePickleError: a PyTorch pickle that holds
      anything but tensors and containers.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"no checkpoint at {path}")
  if path.is_dir():
    return _read_hf_directory(path)
  suffix = path.suffix.lower()
  if suffix == ".safetensors":
    return _read_safetensors(path)
  if suffix == ".npz":
    return _read_npz(path)
  if suffix in _TORCH_SUFFIXES:
    return _flat_state_dict(load_torch_pickle(path), str(path))
  raise ValueError(
      f"unknown checkpoint format {suffix!r} of {path}; lapjax reads "
      f".safetensors, .npz, PyTorch {', '.join(_TORCH_SUFFIXES)} files and "
      "Hugging Face model directories")


def _is_tensor(value: Any) -> bool:
  return isinstance(value, (np.ndarray, np.generic, jax.Array))


def _flat_state_dict(obj: Any, origin: str) -> StateDict:
  """Unwraps a nested checkpoint to its ``{name: array}`` state dict."""
  if not isinstance(obj, Mapping):
    raise ValueError(f"{origin} holds a {type(obj).__name__}, not a state "
                     "dict of named tensors")
  if obj and all(_is_tensor(v) for v in obj.values()):
    state = {str(k): np.asarray(v) for k, v in obj.items()}
  else:
    nested = [k for k in _NESTED_KEYS if isinstance(obj.get(k), Mapping)]
    nested += [k for k, v in obj.items()
               if isinstance(v, Mapping) and k not in nested]
    if not nested:
      kinds = {str(k): type(v).__name__ for k, v in obj.items()}
      raise ValueError(f"{origin} is not a state dict of tensors: its "
                       f"entries are {kinds}")
    logger.warning("%s: using the state dict under %r (other entries: %s)",
                   origin, nested[0], sorted(str(k) for k in obj
                                             if k != nested[0]))
    return _flat_state_dict(obj[nested[0]], f"{origin}[{nested[0]!r}]")
  if state and all(k.startswith("module.") for k in state):
    logger.warning("%s: stripped the 'module.' prefix (nn.DataParallel) from "
                   "every key", origin)
    state = {k[len("module."):]: v for k, v in state.items()}
  return state


# ----------------------------------------------------------------- mapping


def convert(path: Sequence[str], tensor: np.ndarray) -> np.ndarray:
  """PyTorch tensor -> Flax variable by the standard rule of its leaf name.

  A ``kernel`` of rank ``n >= 3`` (convolution, ``[out, in, *window]``)
  becomes ``[*window, in, out]``; a 2-D ``kernel`` (``nn.Linear``'s
  ``[out, in]``) is transposed; everything else is unchanged.
  """
  if path[-1] != "kernel" or tensor.ndim < 2:
    return tensor
  if tensor.ndim == 2:
    return tensor.T
  return tensor.transpose(*range(2, tensor.ndim), 1, 0)


def _torch_shape(path: Sequence[str], shape: Sequence[int]) -> tuple[int, ...]:
  """The checkpoint shape that ``convert`` turns into ``shape``."""
  shape = tuple(shape)
  if path[-1] != "kernel" or len(shape) < 2:
    return shape
  if len(shape) == 2:
    return shape[::-1]
  return (shape[-1], shape[-2], *shape[:-2])


def _default_input_shape(module: nn.Module) -> tuple[int, int, int]:
  for attr in ("img_size", "image_size", "input_size"):
    size = getattr(module, attr, None)
    if isinstance(size, int):
      return (size, size, 3)
    if isinstance(size, Sequence) and len(size) == 2:
      return (int(size[0]), int(size[1]), 3)
  return (224, 224, 3)


def _init(module: nn.Module, input_shape: Sequence[int], key: jax.Array,
          abstract: bool) -> dict[str, Any]:
  x = jnp.zeros((1, *input_shape), jnp.float32)
  init = jax.eval_shape(module.init, key, x) if abstract else module.init(
      key, x)
  return traverse_util.flatten_dict(dict(init))


def _fmt(shape: Sequence[int]) -> str:
  return "[" + ", ".join(str(d) for d in shape) + "]"


def _listing(title: str, rows: Sequence[str]) -> str:
  if not rows:
    return ""
  more = len(rows) - _LISTED
  lines = [f"  {title} ({len(rows)}):"] + [f"    {r}" for r in rows[:_LISTED]]
  if more > 0:
    lines.append(f"    ... and {more} more")
  return "\n".join(lines) + "\n"


class WeightMismatchError(ValueError):
  """A checkpoint that does not fit the module, with what did not fit.

  Attributes:
    missing: ``(variable path, checkpoint key)`` of variables whose tensor is
      not in the checkpoint (or that the layout cannot name).
    unexpected: checkpoint keys that no variable uses.
    mismatched: ``(variable path, checkpoint key, expected, got)`` shapes.
    duplicated: checkpoint keys used by more than one variable.
  """

  def __init__(self, message: str, *, missing=(), unexpected=(),
               mismatched=(), duplicated=()):
    super().__init__(message)
    self.missing = list(missing)
    self.unexpected = list(unexpected)
    self.mismatched = list(mismatched)
    self.duplicated = list(duplicated)


def _in_head(path: tuple[str, ...], head: Sequence[str]) -> bool:
  module_path = "/".join(path[1:-1])
  return any(module_path == h or module_path.startswith(h + "/")
             for h in head)


def _differs_in_last_axis_only(a: Sequence[int], b: Sequence[int]) -> bool:
  return len(a) == len(b) and len(a) > 0 and tuple(a[:-1]) == tuple(b[:-1])


def import_weights(module: nn.Module, checkpoint: Checkpoint, *,
                   layout: Layout, reinit_head: bool = False,
                   input_shape: Sequence[int] | None = None,
                   key: jax.Array | None = None) -> dict[str, Any]:
  """Flax variables for ``module`` from a PyTorch-convention checkpoint.

  Every variable ``(collection, *module_path, leaf)`` of ``module`` (found
  with ``jax.eval_shape`` of its ``init``, so nothing is computed) is named
  by ``layout.key`` and taken from the checkpoint: a plain key is converted
  by ``convert`` (``[out, in, h, w] -> [h, w, in, out]`` for a convolution
  ``kernel``, transposed for a dense one), a ``Source`` is built by its
  ``combine``. The value is cast to the variable's dtype.

  Args:
    module: the Flax linen module, built with its final number of classes.
    checkpoint: a path (any format ``read_checkpoint`` reads) or a state
      dict ``{name: array}`` (nested ``{'state_dict': ...}`` is unwrapped).
    layout: the checkpoint's naming (``card.layouts['torchvision']`` ...).
      Its ``prefix`` is stripped from the keys that carry it.
    reinit_head: when the checkpoint's head (``layout.head`` submodules)
      has another number of classes than the module's -- variables that
      differ in their last axis only, or are absent -- keep the module's
      fresh initialisation for them (fine-tuning) instead of failing, and
      log a warning naming the re-initialised variables.
    input_shape: ``(H, W, C)`` to trace ``init`` with; by default the
      module's ``img_size`` / ``image_size`` / ``input_size`` attribute, else
      ``(224, 224, 3)``.
    key: PRNG key of the re-initialised head (default ``key(0)``).

  Returns:
    The variables, ``{'params': ..., 'batch_stats': ...}`` as
    ``module.init`` would return them, ready for ``module.apply``.

  Raises:
    WeightMismatchError: variables without a checkpoint tensor, checkpoint
      tensors no variable uses (or used twice), or mis-shaped tensors; the
      message lists the first ones of each with their shapes.
  """
  if isinstance(checkpoint, Mapping):
    state = _flat_state_dict(checkpoint, "the state dict")
  else:
    state = read_checkpoint(checkpoint)
  if layout.prefix:
    state = {k[len(layout.prefix):] if k.startswith(layout.prefix) else k: v
             for k, v in state.items()}
  key = jax.random.key(0) if key is None else key
  input_shape = tuple(input_shape or _default_input_shape(module))
  expected = _init(module, input_shape, key, abstract=True)

  values: dict[tuple[str, ...], Any] = {}
  # Plain keys must be used once; a Source may share its keys with other
  # Sources (a fused tensor split into several variables).
  uses: dict[str, int] = {}
  plain: set[str] = set()
  missing, mismatched, head = [], [], []
  # Parameters first: their names and shapes are what errors should show.
  for path, spec in sorted(expected.items(), key=lambda i: i[0][0] != "params"):
    name = "/".join(path)
    try:
      source = layout.key(path)
    except _LAYOUT_ERRORS as e:
      missing.append((name, f"<layout {layout.name!r} has no name: {e}>"))
      continue
    keys = (source,) if isinstance(source, str) else tuple(source.keys)
    for k in keys:
      uses[k] = uses.get(k, 0) + 1
      if isinstance(source, str):
        plain.add(k)
    absent = [k for k in keys if k not in state]
    reinit = reinit_head and _in_head(path, layout.head)
    if absent:
      if reinit:
        head.append((path, f"{', '.join(absent)} not in the checkpoint"))
      else:
        missing.extend((name, k) for k in absent)
      continue
    tensors = [np.asarray(state[k]) for k in keys]
    if isinstance(source, Source):
      value = np.asarray(source.combine(*tensors))
    else:
      value = convert(path, tensors[0])
    if value.shape != tuple(spec.shape):
      got = _fmt(tensors[0].shape) if isinstance(source, str) else " + ".join(
          f"{k} {_fmt(t.shape)}" for k, t in zip(keys, tensors))
      if reinit and _differs_in_last_axis_only(value.shape, spec.shape):
        head.append((path, f"checkpoint {got}"))
        continue
      mismatched.append((name, ", ".join(keys),
                         _fmt(_torch_shape(path, spec.shape))
                         if isinstance(source, str) else _fmt(spec.shape),
                         got))
      continue
    values[path] = value.astype(spec.dtype)

  ignore = [re.compile(p) for p in layout.ignore]
  unexpected = [k for k in state if k not in uses
                and not any(p.search(k) for p in ignore)]
  duplicated = [k for k, n in uses.items() if n > 1 and k in plain]
  if missing or unexpected or mismatched or duplicated:
    raise _mismatch_error(module, layout, state, missing, unexpected,
                          mismatched, duplicated)
  if head:
    fresh = _init(module, input_shape, key, abstract=False)
    for path, _ in head:
      values[path] = fresh[path]
    logger.warning(
        "re-initialised the classifier head of %s (a different number of "
        "classes than the checkpoint; fine-tune it): %s",
        type(module).__name__,
        "; ".join(f"{'/'.join(p)} {_fmt(expected[p].shape)} ({why})"
                  for p, why in head))
  return traverse_util.unflatten_dict(
      {p: jnp.asarray(v) for p, v in values.items()})


def _mismatch_error(module, layout, state, missing, unexpected, mismatched,
                    duplicated) -> WeightMismatchError:
  counts = ", ".join(f"{len(v)} {k}" for k, v in (
      ("mis-shaped", mismatched), ("missing", missing),
      ("unexpected", unexpected), ("used twice", duplicated)) if v)
  text = (f"checkpoint does not fit {type(module).__name__} in layout "
          f"{layout.name!r}: {counts}\n")
  text += _listing("mis-shaped (variable: checkpoint key expected shape, got)",
                   [f"{n}: {k} expected {e}, got {g}"
                    for n, k, e, g in mismatched])
  text += _listing("missing (variable: checkpoint key)",
                   [f"{n}: {k}" for n, k in missing])
  text += _listing("unexpected (checkpoint key [shape])",
                   [f"{k} {_fmt(np.shape(state[k]))}" for k in unexpected])
  text += _listing("used by several variables", duplicated)
  head_only = mismatched and not missing and not unexpected and all(
      _in_head(tuple(n.split("/")), layout.head) for n, *_ in mismatched)
  if head_only:
    text += ("hint: only the classifier head differs -- the checkpoint has "
             "another number of classes: build the model with that number, "
             "or pass reinit_head=True (load_pretrained(num_classes=...)) to "
             "fine-tune a new head\n")
  elif len(missing) + len(mismatched) > len(state) // 2:
    text += ("hint: most names or shapes differ -- is this a checkpoint of "
             "another architecture, size or layout? the checkpoint's first "
             f"names are {list(state)[:3]}\n")
  return WeightMismatchError(text.rstrip(), missing=missing,
                             unexpected=unexpected, mismatched=mismatched,
                             duplicated=duplicated)


# ----------------------------------------------------------- entry points


def _hf_image_shape(config: Mapping[str, Any]) -> tuple[int, int, int]:
  size = config.get("image_size", 224)
  h, w = (size, size) if isinstance(size, int) else size
  return (int(h), int(w), int(config.get("num_channels", 3)))


def _hf_num_labels(config: Mapping[str, Any]) -> int | None:
  if config.get("id2label"):
    return len(config["id2label"])
  return config.get("num_labels")


def _load_hf(directory: pathlib.Path, *, num_classes: int | None,
             layout: Layout | None, key: jax.Array | None
             ) -> tuple[nn.Module, dict[str, Any]]:
  from lapjax.models.registry import HF_MODEL_TYPES

  config = json.loads((directory / "config.json").read_text())
  model_type = config.get("model_type")
  if model_type not in HF_MODEL_TYPES:
    raise ValueError(
        f"{directory}/config.json has model_type {model_type!r}, which lapjax "
        f"cannot build; supported Hugging Face model types: "
        f"{sorted(HF_MODEL_TYPES)}")
  module, hf_layout = HF_MODEL_TYPES[model_type](config, num_classes)
  reinit = num_classes is not None and num_classes != _hf_num_labels(config)
  variables = import_weights(module, directory, layout=layout or hf_layout,
                             reinit_head=reinit,
                             input_shape=_hf_image_shape(config), key=key)
  return module, variables


def _choose_layout(card: ModelCard, state: StateDict) -> Layout:
  """The card's layout that names the most checkpoint keys."""
  if len(card.layouts) == 1:
    return next(iter(card.layouts.values()))
  module = card.build(num_classes=card.num_classes)
  paths = list(_init(module, (*card.input_size, 3), jax.random.key(0),
                     abstract=True))

  def score(layout: Layout) -> int:
    keys = {k[len(layout.prefix):] if layout.prefix and k.startswith(
        layout.prefix) else k for k in state}
    hits = 0
    for path in paths:
      try:
        source = layout.key(path)
      except _LAYOUT_ERRORS:
        continue
      names = (source,) if isinstance(source, str) else source.keys
      hits += all(n in keys for n in names)
    return hits

  return max(card.layouts.values(), key=score)


def load_pretrained(name_or_dir: str | os.PathLike,
                    path: str | os.PathLike | Mapping[str, Any] | None = None,
                    *, num_classes: int | None = None,
                    layout: str | Layout | None = None,
                    key: jax.Array | None = None,
                    **model_kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
  """A zoo model and its pretrained variables, from local files only.

  Two forms::

    module, variables = load_pretrained('resnet50', 'resnet50.pth')
    module, variables = load_pretrained('path/to/hf-vit')   # save_pretrained

  Args:
    name_or_dir: a registered model name (``lapjax.models.CARDS``) or a
      Hugging Face model directory (``config.json`` + weights), built at the
      size its config says.
    path: the checkpoint of a named model (any format ``read_checkpoint``
      reads, or a state dict); lapjax downloads nothing.
    num_classes: logits of the returned model; when it differs from the
      checkpoint's, the head is re-initialised (and a warning logged).
      Default: the checkpoint's.
    layout: the checkpoint's naming, a name in ``card.layouts`` or a
      ``Layout``; default: the card's layout that names the checkpoint
      (torchvision, timm or HF).
    key: PRNG key of a re-initialised head.
    **model_kwargs: attributes of the model (``card.build``), e.g. ``act``.

  Returns:
    ``(module, variables)``: ``module.apply(variables, x)`` gives the logits
    of images ``x [B, H, W, 3]`` normalised with the card's mean and std.

  Raises:
    ValueError: unknown name (with the close matches), no ``path`` for a
      name, an HF directory of an unsupported ``model_type`` (with the
      supported ones), or a checkpoint that does not fit
      (``WeightMismatchError``, listing the names and shapes).
  """
  from lapjax.models.registry import get_card

  as_path = pathlib.Path(name_or_dir)
  if as_path.is_dir():
    if (as_path / "config.json").exists():
      if path is not None or model_kwargs:
        raise ValueError("a Hugging Face directory is built from its own "
                         "config.json; pass neither path nor model options")
      hf_layout = layout if isinstance(layout, Layout) else None
      return _load_hf(as_path, num_classes=num_classes, layout=hf_layout,
                      key=key)
    raise ValueError(f"{as_path} is a directory without config.json; give a "
                     "model name and path=<checkpoint file> instead")
  card = get_card(str(name_or_dir))
  if path is None:
    raise ValueError(
        f"load_pretrained({str(name_or_dir)!r}) needs path=<checkpoint file>: "
        "lapjax downloads nothing. Layouts it reads for this model: "
        f"{sorted(card.layouts)}")
  state = (_flat_state_dict(path, "the state dict")
           if isinstance(path, Mapping) else read_checkpoint(path))
  if isinstance(layout, str):
    if layout not in card.layouts:
      raise ValueError(f"model {card.name!r} has no layout {layout!r}; it "
                       f"has {sorted(card.layouts)}")
    layout = card.layouts[layout]
  elif layout is None:
    layout = _choose_layout(card, state)
  classes = card.num_classes if num_classes is None else num_classes
  module = card.build(num_classes=classes, **model_kwargs)
  variables = import_weights(module, state, layout=layout,
                             reinit_head=classes != card.num_classes,
                             input_shape=(*card.input_size, 3), key=key)
  return module, variables


__all__ = ["WeightMismatchError", "convert", "import_weights",
           "load_pretrained", "read_checkpoint"]

