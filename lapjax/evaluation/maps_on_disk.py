"""Attribution maps written to disk in shards, and read back.

With ``config.evaluation.write_maps``, the streaming evaluation writes,
per batch and per process (host), the maps of that process's images:
``<folder>/process<p>/batch<b>.npz`` holding ``index`` (``[n]`` image
indices in the split), ``target`` (``[n]`` the explained class) and one
``[n, H, W]`` float32 array per method. Each file is written atomically
(a temporary file, then a rename), so a killed evaluation leaves whole
shards only; the resumed one rewrites the batches it redoes.
``read_maps`` gathers every shard of a folder, ordered by image index.
"""

from __future__ import annotations

import glob
import os
import tempfile

import jax
import numpy as np


def local_rows(maps: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded ``[B, ...]`` array, in order."""
  shards = sorted(maps.addressable_shards,
                  key=lambda s: s.index[0].start or 0)
  rows, seen = [], set()
  for s in shards:
    start = s.index[0].start or 0
    if start not in seen:             # replicated copies: once
      seen.add(start)
      rows.append(np.asarray(s.data))
  return np.concatenate(rows)


def write_shard(folder: str, batch: int, index: np.ndarray,
                target: np.ndarray, maps: dict[str, np.ndarray]) -> str:
  """Writes one shard of this process; returns its path."""
  folder = os.path.join(folder, f"process{jax.process_index():03d}")
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, f"batch{batch:06d}.npz")
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".batch", suffix=".npz")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, index=np.asarray(index, np.int64),
               target=np.asarray(target, np.int64),
               **{f"map/{k}": np.asarray(v, np.float32)
                  for k, v in maps.items()})
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def read_maps(folder: str) -> dict[str, np.ndarray | dict[str, np.ndarray]]:
  """Every shard under ``folder`` (e.g. ``workdir/eval/maps``).

  Returns:
    ``{'index': [N], 'target': [N], 'maps': {method: [N, H, W]}}``, rows
    ordered by image index.

  Raises:
    FileNotFoundError: no shard under ``folder``.
  """
  paths = sorted(glob.glob(os.path.join(folder, "process*", "batch*.npz")))
  if not paths:
    raise FileNotFoundError(
        f"no map shards under {folder}; evaluate with "
        "--config.evaluation.write_maps=True to write them")
  index, target, maps = [], [], {}
  for path in paths:
    with np.load(path) as f:
      index.append(f["index"])
      target.append(f["target"])
      for k in f.files:
        if k.startswith("map/"):
          maps.setdefault(k[len("map/"):], []).append(f[k])
  order = np.argsort(np.concatenate(index), kind="stable")
  return {"index": np.concatenate(index)[order],
          "target": np.concatenate(target)[order],
          "maps": {k: np.concatenate(v)[order] for k, v in maps.items()}}
