"""``evaluate(config, workdir)``: the report of a trained run.

Loads the newest checkpoint of ``workdir``, predicts the test split and
writes ``report.json``, ``report.md`` and ``predictions.png`` (sample test
images with their ground-truth outlines, true and predicted class).
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import numpy as np

from lapjax import viz
from lapjax.data import sources
from lapjax.evaluation.report import write_report
from lapjax.metrics import classification_summary
from lapjax.train.loop import load_state, predict

NUM_FIGURE_IMAGES = 24


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved beside its checkpoints (``config.json``)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} not found: {workdir} is not a lapjax run folder (train "
        "first, or pass --config)")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def evaluate(config: ml_collections.ConfigDict | None, workdir: str, *,
             split: str = "test") -> dict[str, Any]:
  """Evaluates the run in ``workdir``; returns the report dict.

  Args:
    config: the run's config; None reads ``workdir/config.json``.
    workdir: the run folder written by ``train.py``.
    split: ``'test'`` (default) or ``'validation'``.
  """
  workdir = os.path.abspath(workdir)
  config = load_config(workdir) if config is None else config
  model, state, info = load_state(config, workdir)
  source, _ = sources.make_source(config.data, split)
  logits, labels = predict(state, model, source,
                           batch_size=config.eval_batch_size)
  report = {
      "workdir": workdir,
      "step": int(state.step),
      "split": split,
      "model": config.model.name,
      "data": config.data.name,
      "class_names": info["class_names"],
      "classification": classification_summary(logits, labels),
  }
  figure = "predictions.png"
  shown = np.arange(min(NUM_FIGURE_IMAGES, source.num_examples))
  batch = source.get(shown)
  names = info["class_names"]
  predicted = logits[shown].argmax(-1)
  titles = [f"{names[t]} -> {names[p]}" + ("" if t == p else " (wrong)")
            for t, p in zip(batch["label"], predicted)]
  viz.sample_grid(batch, titles, os.path.join(workdir, figure))
  report["figures"] = [figure]
  write_report(workdir, report)
  return report
