r"""Trains a lapjax model.

  python train.py --config configs/default.py --workdir runs/default

Resumes from the newest checkpoint in ``--workdir``. Override fields on the
command line, e.g. ``--config.num_steps=3000``. A step with a NaN or
infinite loss, gradient or state stops the run with ``NonFiniteError``
naming the step and the last good checkpoint (never saving a non-finite
state); ``--config.on_nonfinite=skip`` skips such steps instead.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from lapjax.train import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:   # Orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  train_and_evaluate(_CONFIG.value, _WORKDIR.value, progress=_PROGRESS.value)


if __name__ == "__main__":
  app.run(main)
