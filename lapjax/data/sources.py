"""Random-access data sources and the config-driven ``make_source``."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from lapjax.data import clues
from lapjax.data.decode import check_indices


class ArraySource:
  """A source over in-memory arrays that share their first axis."""

  def __init__(self, arrays: Mapping[str, np.ndarray]):
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
      raise ValueError(f"arrays must share their first axis; got {sizes}")
    self.arrays = dict(arrays)
    self.num_examples = next(iter(sizes.values()))

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[indices] for k, v in self.arrays.items()}


class ClueSource:
  """``num_examples`` clue-benchmark images of one split, indices ``0..n-1``.

  With ``cache=True`` (default) the split is rendered once, in chunks, and
  kept in memory (64x64: 60 KB an image); otherwise each ``get`` renders.
  """

  def __init__(self, config: clues.CluesConfig, split: str,
               num_examples: int, *, seed: int = 0, cache: bool = True,
               draw_clues: bool = True):
    self.config, self.split, self.seed = config, split, seed
    self.num_examples = num_examples
    self.draw_clues = draw_clues
    self._cache = None
    if cache:
      chunks = [self._render(np.arange(i, min(i + 512, num_examples)))
                for i in range(0, num_examples, 512)]
      self._cache = ArraySource(
          {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]})

  def _render(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return clues.render(self.config, self.split, indices, seed=self.seed,
                        draw_clues=self.draw_clues)

  def labels(self) -> np.ndarray:
    """``[num_examples]`` int32: every example's class, without rendering
    (``index % num_classes``, ``lapjax.data.clues``)."""
    return (np.arange(self.num_examples) % self.config.num_classes
            ).astype(np.int32)

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    indices = np.asarray(indices)
    check_indices(indices, self.num_examples)
    if self._cache is not None:
      return self._cache.get(indices)
    return self._render(indices)


def all_labels(source, *, chunk_size: int = 512) -> np.ndarray:
  """``[num_examples]``: the label of every example of ``source``.

  A source with a ``labels()`` method (``ClueSource``) answers without
  loading images; any other is read in chunks of ``chunk_size`` examples
  (for a tfds source, one pass that decodes every image).
  """
  if callable(getattr(source, "labels", None)):
    return np.asarray(source.labels())
  n = source.num_examples
  return np.concatenate([
      np.asarray(source.get(np.arange(i, min(i + chunk_size, n)))["label"])
      for i in range(0, n, chunk_size)])


def check_labels(labels: np.ndarray, num_classes: int, *, dataset: str,
                 indices: np.ndarray | None = None) -> None:
  """Raises ValueError unless every label is an integer in
  ``[0, num_classes)``, naming the dataset and the first offending value.

  Out-of-range labels do not fail by themselves downstream: ``-1`` (a
  common "unlabelled" marker) indexes class ``K - 1`` in NumPy, one-hot
  targets of too large a label are all zero, and the cross-entropy of
  either is NaN or wrong without an error.
  """
  labels = np.asarray(labels)
  if not (np.issubdtype(labels.dtype, np.integer)
          or labels.dtype == np.bool_):
    raise ValueError(f"dataset {dataset!r}: labels must be integers; got "
                     f"dtype {labels.dtype}")
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if bad.size:
    i = int(bad[0])
    where = f"example {int(np.asarray(indices)[i])}" \
        if indices is not None else f"batch row {i}"
    raise ValueError(
        f"dataset {dataset!r}: label {labels[i].item()} of {where} is "
        f"outside [0, {num_classes}) ({bad.size} such labels in this "
        "batch); relabel the data or fix data.num_clue_classes / the "
        "dataset's class count")


class LabelChecked:
  """A source whose every ``get`` checks its labels (``check_labels``):
  a NumPy min/max per batch, so a bad label fails where it is read.

  Attributes of the wrapped source remain reachable."""

  def __init__(self, source, num_classes: int, *, dataset: str):
    self.source, self.num_classes, self.dataset = source, num_classes, dataset
    self.num_examples = source.num_examples

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    batch = self.source.get(indices)
    if "label" in batch:
      check_labels(batch["label"], self.num_classes, dataset=self.dataset,
                   indices=indices)
    return batch

  def labels(self) -> np.ndarray:
    """Every example's label (``all_labels`` of the wrapped source),
    checked."""
    labels = all_labels(self.source)
    check_labels(labels, self.num_classes, dataset=self.dataset,
                 indices=np.arange(len(labels)))
    return labels

  def __getattr__(self, name):
    return getattr(self.source, name)


def clues_config(data_config: Mapping) -> clues.CluesConfig:
  """The ``CluesConfig`` described by a ``config.data`` block."""
  return clues.CluesConfig(
      image_size=tuple(data_config["image_size"]),
      num_clue_classes=data_config["num_clue_classes"],
      binary=data_config["binary"],
      min_clue_fraction=data_config["min_clue_fraction"],
      max_clue_fraction=data_config["max_clue_fraction"],
      box_padding=data_config["box_padding"])


def data_info(data_config: Mapping) -> dict:
  """``num_classes``, ``class_names``, ``image_shape (H, W, C)`` and, where
  the data defines one, ``dc_membership`` (its LAP DC system, ``[M, N]``) of
  a ``config.data`` block, without loading any images."""
  name = data_config["name"]
  if name == "clues":
    cfg = clues_config(data_config)
    return {"num_classes": cfg.num_classes,
            "class_names": list(cfg.class_names),
            "image_shape": (*cfg.image_size, 3),
            "dc_membership": cfg.dc_membership}
  if name.startswith("tfds:"):
    from lapjax.data import tfds  # tensorflow-datasets only when asked for
    return tfds.dataset_info(name[len("tfds:"):],
                             image_size=tuple(data_config["image_size"]),
                             data_dir=data_config["data_dir"])
  raise ValueError(f"unknown data.name {name!r}: use 'clues' or "
                   "'tfds:<dataset>' (e.g. 'tfds:cifar10')")


def make_source(data_config: Mapping, split: str):
  """The source of ``split`` described by a ``config.data`` block.

  ``data_config.name`` is ``'clues'`` (the embedded benchmark) or
  ``'tfds:<dataset name>'`` for a tensorflow-datasets dataset.

  Returns:
    ``(source, info)``, ``info`` as in ``data_info``; the source checks the
    labels of every batch it returns (``LabelChecked``).
  """
  info = data_info(data_config)
  name = data_config["name"]
  sizes = {"train": data_config["num_train"],
           "validation": data_config["num_validation"],
           "test": data_config["num_test"]}
  if split not in sizes:
    raise ValueError(f"split must be one of {sorted(sizes)}; got {split!r}")
  if name == "clues":
    source = ClueSource(clues_config(data_config), split, sizes[split],
                        seed=data_config["seed"])
  else:
    from lapjax.data import tfds
    source = tfds.TfdsSource(
        name[len("tfds:"):], split=data_config["tfds_splits"][split],
        image_size=tuple(data_config["image_size"]),
        data_dir=data_config["data_dir"], max_examples=sizes[split])
  return LabelChecked(source, info["num_classes"],
                      dataset=f"{name} ({split})"), info
