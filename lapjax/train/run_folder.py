"""The plain files of a run folder: ``config.json`` and ``metrics.jsonl``.

Files are replaced atomically (``atomic_write``: a temporary file in the same
folder, flushed, then ``os.replace``), so a run killed while writing leaves
the old version or the new one, never half of one. ``metrics.jsonl`` is
appended line by line; a line cut short by a kill is dropped on resume.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any

import ml_collections
import numpy as np

from lapjax.train.config import load_run_config

# Fields that may change when a run resumes (the rest must match).
# ``num_steps`` is not one of them: the learning-rate schedule depends on it
# (warm-up and cosine decay span the run), so a resumed run with another
# ``num_steps`` would jump to another learning rate; with
# ``optimizer.schedule='constant'`` the rate does not depend on it, and
# changing it is allowed.
RESUMABLE_CHANGES = ("log_every", "checkpoint_every", "eval_batch_size",
                     "evaluation", "on_nonfinite")


def atomic_write(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` through a temporary file and a rename."""
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path),
                             suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def strict_json(value: Any) -> Any:
  """``value`` with NaN and infinities as None and NumPy values as Python
  ones, so that ``json.dumps(..., allow_nan=False)`` accepts it (a bare
  ``NaN`` is not JSON)."""
  if isinstance(value, dict):
    return {k: strict_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [strict_json(v) for v in value]
  if isinstance(value, np.ndarray):
    return strict_json(value.tolist())
  if isinstance(value, (np.bool_, bool)):
    return bool(value)
  if isinstance(value, (np.integer, int)):
    return int(value)
  if isinstance(value, (np.floating, float)):
    return float(value) if math.isfinite(value) else None
  return value


def dumps(value: Any, **kwargs) -> str:
  """Strict JSON of ``value`` (``strict_json``: null for NaN/inf)."""
  return json.dumps(strict_json(value), allow_nan=False, **kwargs)


def check_resume_config(workdir: str, config: ml_collections.ConfigDict,
                        *, has_checkpoint: bool) -> None:
  """Refuses to resume a run in ``workdir`` with another config.

  Raises:
    ValueError: ``workdir`` holds checkpoints but no ``config.json`` (not a
      complete lapjax run folder), or the saved config differs from
      ``config`` in a field outside ``RESUMABLE_CHANGES`` (``num_steps``
      included unless the schedule is constant).
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    if has_checkpoint:
      raise ValueError(
          f"{workdir} holds checkpoints but no config.json, so lapjax "
          "cannot tell which config trained them; use a new --workdir, or "
          f"restore {path} if you know it")
    return
  # Fields added to the schema after the run was trained: their defaults.
  saved = json.loads(load_run_config(workdir).to_json_best_effort())
  now = json.loads(config.to_json_best_effort())
  free = set(RESUMABLE_CHANGES)
  if now.get("optimizer", {}).get("schedule") == "constant" == saved.get(
      "optimizer", {}).get("schedule"):
    free.add("num_steps")
  diff = [k for k in sorted(set(saved) | set(now))
          if k not in free and saved.get(k) != now.get(k)]
  if diff:
    hint = ""
    if "num_steps" in diff:
      hint = (f" (num_steps {saved.get('num_steps')} -> "
              f"{now.get('num_steps')}: the learning-rate schedule spans "
              "num_steps, so the rate would jump; train longer in a new "
              f"--workdir with config.init_from={workdir})")
    raise ValueError(
        f"workdir {workdir} holds a run with a different config (fields "
        f"{diff} differ from {path}){hint}; use a new --workdir, or only "
        f"change {list(RESUMABLE_CHANGES)} when resuming")


def truncate_metrics(path: str, after_step: int) -> None:
  """Drops the metric lines of ``path`` past ``after_step`` (written after
  the checkpoint a run resumes from) and a last line cut short by a kill.

  Raises:
    ValueError: a line other than the last is not JSON.
  """
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [ln for ln in f if ln.strip()]
  kept = []
  for i, line in enumerate(lines):
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      if i == len(lines) - 1:      # cut short by a kill: drop it
        continue
      raise ValueError(f"{path} line {i + 1} is not JSON: {line[:80]!r}"
                       ) from None
    if record.get("step", 0) <= after_step:
      kept.append(line if line.endswith("\n") else line + "\n")
  atomic_write(path, "".join(kept))
