r"""Evaluates a trained lapjax run and writes its report.

  python evaluate.py --workdir runs/default

Reads the config saved in the workdir (or ``--config``), restores the newest
checkpoint (``--checkpoint=best``: the best validation one that
``config.best_checkpoint`` kept) and writes ``report.json``, ``report.md``
and figures there.
The evaluation streams over ``config.evaluation.num_images`` images on
every device (docs/evaluation.md); a killed evaluation resumes from
``<workdir>/eval/state.npz`` when run again with the same settings.

A protocol config (``configs/protocols/*.py``: a ``protocol`` field) runs
that paper protocol instead (``lapjax.evaluation.protocols``); its data
and split come from the config (``--split`` does not apply).
"""

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from lapjax.evaluation.evaluate import evaluate
from lapjax.evaluation.protocols import run_protocol

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (default: the workdir's config.json).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder from train.py.")
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "validation"],
                           "Split to evaluate.")
_CHECKPOINT = flags.DEFINE_enum(
    "checkpoint", "latest", ["latest", "best"],
    "Checkpoint to evaluate: the newest, or the best validation one "
    "(config.best_checkpoint).")
_PROGRESS = flags.DEFINE_bool("progress", True,
                              "Show a progress bar with ETA.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:   # Orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  if config is not None and "protocol" in config:   # configs/protocols/
    report = run_protocol(config, _WORKDIR.value, progress=_PROGRESS.value)
    if jax.process_index() == 0:
      print(f"{report['protocol']} protocol on {report['num_examples']} "
            f"images; report in {report['workdir']}/report.md")
    return
  report = evaluate(_CONFIG.value, _WORKDIR.value, split=_SPLIT.value,
                    progress=_PROGRESS.value,
                    checkpoint=_CHECKPOINT.value)
  if jax.process_index():
    return
  c = report["classification"]
  print(f"{report['split']}: accuracy {c['accuracy']:.4f}, balanced accuracy "
        f"{c['balanced_accuracy']:.4f}, F1 {c['f1_macro']:.4f} (n={c['n']}); "
        f"report in {report['workdir']}/report.md")


if __name__ == "__main__":
  app.run(main)
