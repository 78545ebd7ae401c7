"""Streaming evaluation: sums and counts, batch by batch, on a mesh.

A split of any size is scored without holding its maps: per batch, a
jitted function explains the images with one method and returns, per
localisation metric, the batch's **count, mean and centred sum of squares**
of the defined values and its **NaN counts** (undefined values are
counted, never averaged in), computed on the mesh's ``data`` axis (the
batch is sharded, the sums come back replicated). The host merges them in
float64 (Chan, Golub and LeVeque's parallel update, so the standard
deviation needs no per-image values):

  n = n_a + n_b,   mean = mean_a + d n_b / n,
  M2 = M2_a + M2_b + d^2 n_a n_b / n,   d = mean_b - mean_a,
  std = sqrt(M2 / n)  (population std, as ``nan_summary``).

The worst-case mean (``metrics.worst_case``: map-side NaNs scored as
misses) needs only the count of map-side NaNs. The last batch is padded to
the full size with copies of an image and a ``valid`` mask, so every batch
has the same shape (one compilation) and padding never enters a sum.

Multi-host: every process loads its own slice of each global batch
(``jax.process_index()``), ``jax.make_array_from_process_local_data``
assembles the global batch and the jitted sums are global; per-image values
are never gathered, except the few maps the report's figure and
faithfulness table use (the first clue images, a bounded subset).

The state (sums, counts, next batch, the kept subset) is saved atomically
in ``workdir/eval/state.npz`` every ``save_every`` batches; a killed
evaluation resumes from it, and a resumed evaluation whose settings differ
from the saved ones is refused with the differing fields.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from lapjax.attribution.checks import jit_checked
from lapjax.evaluation import explanations
from lapjax.metrics import (
  CONSTANT_MAP,
  EMPTY_MASK,
  FULL_MASK,
  NONFINITE_MAP,
  validity,
)
from lapjax.train import sharding

# SIGKILL right after saved state number <n> (tests of the resume).
KILL_AFTER_SAVE = "LAPJAX_EVAL_KILL_AFTER_SAVE"
# Metrics of the map alone: no mask, no "miss", plain summary.
MAP_ONLY_METRICS = ("sparseness",)
# The localisation table's columns, in order (localization_values).
LOCALIZATION_METRICS = (
    "pointing_game", "relevance_mass", "relevance_rank",
    "top_k_intersection", "roc_auc", "iou", "f1", "region_attribution",
    "sparseness")
STATE_FILE = "state.npz"
# Settings that may change when an evaluation resumes.
RESUMABLE_SETTINGS = ("save_every",)


@dataclasses.dataclass
class RunningSummary:
  """``metrics.nan_summary`` of a stream of values, batch by batch."""
  n: int = 0             # defined values
  mean: float = 0.0
  m2: float = 0.0        # sum of squared deviations from the mean
  nan: int = 0           # undefined or invalid values
  invalid: int = 0       # NaN on a non-finite map
  map_side: int = 0      # NaN on a usable mask (scored as a miss, worst)

  def add(self, batch: np.ndarray) -> None:
    """Merges ``[n, mean, m2, nan, invalid, map_side]`` of one batch."""
    n_b, mean_b, m2_b = int(batch[0]), float(batch[1]), float(batch[2])
    if n_b:
      n = self.n + n_b
      d = mean_b - self.mean
      self.mean += d * n_b / n
      self.m2 += m2_b + d * d * self.n * n_b / n
      self.n = n
    self.nan += int(batch[3])
    self.invalid += int(batch[4])
    self.map_side += int(batch[5])

  def result(self, *, with_codes: bool, worst: float = 0.0
             ) -> dict[str, float | int]:
    """The dict ``nan_summary`` returns (with ``codes`` or without)."""
    nan = float("nan")
    out = {"mean": self.mean if self.n else nan,
           "std": float(np.sqrt(max(self.m2, 0.0) / self.n)) if self.n
           else nan, "n": self.n, "nan": self.nan}
    if not with_codes:
      return out
    worst_n = self.n + self.map_side
    return {**out, "invalid": self.invalid,
            "undefined": self.nan - self.invalid,
            "worst_mean": (self.mean * self.n + worst * self.map_side)
            / worst_n if worst_n else nan}


def value_statistics(values: jax.Array, valid: jax.Array,
                     codes: jax.Array | None = None) -> jax.Array:
  """``[6]`` float32: count, mean and centred sum of squares of the defined
  values among the ``valid`` ones, the NaN count, the NaN count on
  non-finite maps and on usable masks (``codes``: ``metrics.validity``;
  None counts no map-side NaN). Jittable; ``RunningSummary.add`` merges
  it."""
  undefined = jnp.isnan(values)
  defined = valid & ~undefined
  n = defined.sum()
  safe = jnp.where(defined, values, 0.0)
  mean = safe.sum() / jnp.maximum(n, 1)
  m2 = jnp.where(defined, (values - mean) ** 2, 0.0).sum()
  nan = valid & undefined
  if codes is None:
    invalid = map_side = jnp.zeros((), jnp.int32)
  else:
    invalid = (nan & (codes == NONFINITE_MAP)).sum()
    map_side = (nan & (codes != EMPTY_MASK) & (codes != FULL_MASK)).sum()
  return jnp.stack([n.astype(jnp.float32), mean, m2,
                    nan.sum().astype(jnp.float32),
                    invalid.astype(jnp.float32),
                    map_side.astype(jnp.float32)])


def localization_statistics(maps: jax.Array, masks: jax.Array,
                            valid: jax.Array) -> dict[str, jax.Array]:
  """Per localisation metric, ``value_statistics`` of the valid images,
  and ``'status'``: ``[usable masks, constant maps, non-finite maps]``
  (the counts of the report's "Maps without a score" table). Jittable."""
  codes = validity(maps, masks)
  out = {name: value_statistics(v, valid, None if name in MAP_ONLY_METRICS
                                else codes)
         for name, v in explanations.localization_values(maps,
                                                         masks).items()}
  usable = valid & (codes != EMPTY_MASK) & (codes != FULL_MASK)
  out["status"] = jnp.stack([usable.sum(),
                             (valid & (codes == CONSTANT_MAP)).sum(),
                             (valid & (codes == NONFINITE_MAP)).sum()])
  return out


def batch_slices(num_images: int, batch_size: int) -> list[tuple[int, int]]:
  """``(start, stop)`` of every global batch over ``num_images``."""
  return [(s, min(s + batch_size, num_images))
          for s in range(0, num_images, batch_size)]


def local_indices(start: int, stop: int, batch_size: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """This process's image indices and ``valid`` flags in the global batch
  ``[start, stop)`` padded to ``batch_size`` (padding repeats ``start``)."""
  idx = np.arange(start, start + batch_size)
  valid = idx < stop
  idx = np.where(valid, idx, start)
  return process_rows(idx), process_rows(valid)


def process_rows(rows: np.ndarray) -> np.ndarray:
  """This process's equal share of a global batch's rows ``[B, ...]``."""
  per = len(rows) // jax.process_count()
  p = jax.process_index()
  return rows[p * per:(p + 1) * per]


def gather(x: Any) -> np.ndarray:
  """The whole of a global array (or the process-order concatenation of
  local arrays) on every process."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def settings_diff(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
  """Names of the settings (dotted paths) that differ, outside
  ``RESUMABLE_SETTINGS``."""
  diff = []
  for k in sorted(set(saved) | set(now)):
    if k in RESUMABLE_SETTINGS:
      continue
    a, b = saved.get(k), now.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      diff += [f"{k}.{d}" for d in settings_diff(a, b)]
    elif a != b:
      diff.append(k)
  return diff


class EvaluationState:
  """Sums, counts and progress of a streaming evaluation, saved in
  ``folder/state.npz`` (atomically: a temporary file, then a rename)."""

  def __init__(self, folder: str, settings: dict[str, Any]):
    self.folder = folder
    self.settings = json.loads(json.dumps(settings))
    self.next_batch: dict[str, int] = {}
    self.summaries: dict[str, dict[str, RunningSummary]] = {}
    self.counts: dict[str, np.ndarray] = {}
    self.arrays: dict[str, np.ndarray] = {}
    self.saves = 0

  @property
  def path(self) -> str:
    return os.path.join(self.folder, STATE_FILE)

  def summary(self, group: str, name: str) -> RunningSummary:
    return self.summaries.setdefault(group, {}).setdefault(
        name, RunningSummary())

  def add_counts(self, name: str, value: np.ndarray) -> None:
    value = np.asarray(value, np.int64)
    self.counts[name] = self.counts.get(name, 0) + value

  def restore(self) -> bool:
    """Loads the saved state; False when there is none.

    Raises:
      ValueError: the saved state was written with other settings (the
        differing fields are named).
    """
    if not os.path.exists(self.path):
      return False
    with np.load(self.path, allow_pickle=False) as f:
      meta = json.loads(str(f["meta"]))
      arrays = {k[len("array/"):]: f[k] for k in f.files
                if k.startswith("array/")}
      counts = {k[len("count/"):]: f[k] for k in f.files
                if k.startswith("count/")}
    diff = settings_diff(meta["settings"], self.settings)
    if diff:
      raise ValueError(
          f"{self.path} holds an unfinished evaluation with other settings "
          f"(fields {diff} differ); evaluate with the saved settings to "
          f"resume it, or delete {self.folder} to start over")
    self.next_batch = meta["next_batch"]
    self.summaries = {g: {k: RunningSummary(**v) for k, v in d.items()}
                      for g, d in meta["summaries"].items()}
    self.counts, self.arrays = counts, arrays
    return True

  def save(self) -> None:
    """Writes the state atomically (process 0 only)."""
    self.saves += 1
    if jax.process_index() == 0:
      os.makedirs(self.folder, exist_ok=True)
      meta = {"settings": self.settings, "next_batch": self.next_batch,
              "summaries": {g: {k: dataclasses.asdict(v)
                                for k, v in d.items()}
                            for g, d in self.summaries.items()}}
      fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".state",
                                 suffix=".npz")
      try:
        with os.fdopen(fd, "wb") as f:
          np.savez(f, meta=np.asarray(json.dumps(meta)),
                   **{f"array/{k}": v for k, v in self.arrays.items()},
                   **{f"count/{k}": v for k, v in self.counts.items()})
          f.flush()
          os.fsync(f.fileno())
        os.replace(tmp, self.path)
      except BaseException:
        if os.path.exists(tmp):
          os.remove(tmp)
        raise
    kill_after = os.environ.get(KILL_AFTER_SAVE)
    if kill_after and int(kill_after) == self.saves:
      os.kill(os.getpid(), signal.SIGKILL)

  def remove(self) -> None:
    """Deletes the saved state (the evaluation finished)."""
    if jax.process_index() == 0 and os.path.exists(self.path):
      os.remove(self.path)


class Progress:
  """A progress bar with ETA over every batch of every phase (process 0;
  ``enabled=False`` shows none)."""

  def __init__(self, total: int, done: int, *, enabled: bool):
    self.bar = tqdm.tqdm(total=total, initial=done, unit="batch",
                         desc="evaluate", mininterval=2.0,
                         disable=not enabled or jax.process_index() != 0)

  def step(self, phase: str) -> None:
    self.bar.set_description(f"evaluate ({phase})")
    self.bar.update(1)

  def close(self) -> None:
    self.bar.close()


def run_phase(state: EvaluationState, phase: str, num_batches: int,
              step: Callable[[int], None], progress: Progress, *,
              save_every: int) -> None:
  """Runs ``step(b)`` for the batches ``b`` of ``phase`` not done yet,
  saving ``state`` every ``save_every`` batches and at the end."""
  start = state.next_batch.get(phase, 0)
  for b in range(start, num_batches):
    step(b)
    state.next_batch[phase] = b + 1
    progress.step(phase)
    if (b + 1) % save_every == 0 or b + 1 == num_batches:
      state.save()


def classification_counts(num_classes: int) -> Callable[..., jax.Array]:
  """``(logits [B, K], labels [B], valid [B]) -> [K, K]`` int32 confusion
  counts of the valid examples (rows: true class). Jittable."""
  def counts(logits, labels, valid):
    true = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)
    pred = jax.nn.one_hot(logits.argmax(-1), num_classes, dtype=jnp.int32)
    return (true * valid[:, None].astype(jnp.int32)).T @ pred
  return counts


def summary_from_confusion(cm: np.ndarray) -> dict[str, Any]:
  """``metrics.classification_summary``'s dict from a confusion matrix
  ``[K, K]`` (rows: true class)."""
  cm = np.asarray(cm, np.int64)
  n = int(cm.sum())
  support = cm.sum(1)
  present = support > 0
  tp = np.diag(cm).astype(np.float64)
  denom = cm.sum(0) + cm.sum(1)
  with np.errstate(invalid="ignore", divide="ignore"):
    f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
  return {
      "n": n,
      "accuracy": float(tp.sum() / n) if n else float("nan"),
      "balanced_accuracy": float(np.mean(tp[present] / support[present])),
      "f1_macro": float(np.nanmean(f1)),
      "f1_per_class": [None if np.isnan(v) else float(v) for v in f1],
      "confusion_matrix": cm.tolist(),
  }


def mesh_inputs(mesh: jax.sharding.Mesh, **arrays: np.ndarray
                ) -> dict[str, jax.Array]:
  """This process's part of a global batch, placed on the mesh."""
  return sharding.shard_batch(arrays, mesh)


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """``tree`` constrained to be replicated (inside ``jit``), so every
  process can read the sums."""
  return jax.lax.with_sharding_constraint(tree, sharding.replicated(mesh))


def checked_map_statistics(fn: Callable[..., jax.Array],
                           mesh: jax.sharding.Mesh
                           ) -> Callable[..., tuple[jax.Array, dict]]:
  """``jit_checked`` ``(images, labels, masks, valid) -> (maps, stats)``:
  the maps of ``fn(images, labels)`` (sharded as the batch) and their
  ``localization_statistics`` plus ``'nonfinite'`` (valid images whose map
  is not finite), replicated."""
  def per_batch(images, labels, masks, valid):
    maps = fn(images, labels)
    stats = localization_statistics(maps, masks, valid)
    stats["nonfinite"] = (valid & ~jnp.isfinite(maps).all((1, 2))).sum()
    return maps, replicate(stats, mesh)
  return jit_checked(per_batch)


def localization_summaries(maps: np.ndarray, masks: np.ndarray
                           ) -> tuple[dict[str, dict], dict[str, int]]:
  """The report's localisation summaries (per metric) and map status
  counts of maps ``[N, H, W]`` against masks, as one batch."""
  stats = jax.device_get(jax.jit(localization_statistics)(
      jnp.asarray(maps), jnp.asarray(masks), jnp.ones(len(maps), bool)))
  usable, constant, nonfinite = np.asarray(stats.pop("status")).tolist()
  scores = {}
  for metric in LOCALIZATION_METRICS:
    s = RunningSummary()
    s.add(np.asarray(stats[metric], np.float64))
    scores[metric] = s.result(with_codes=metric not in MAP_ONLY_METRICS)
  return scores, {"usable_masks": int(usable), "constant_maps": int(constant),
                  "nonfinite_maps": int(nonfinite)}
