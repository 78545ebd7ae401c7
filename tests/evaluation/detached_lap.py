"""A detached-LAP model on the tiny run's backbone, for the LAP report's
tests: built by ``conftest.py``'s ``detached_lap`` fixture and, in their
own processes, by ``lap_report_worker.py``."""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from configs import lap as lap_configs
from lapjax.data import sources
from lapjax.evaluation import lap_report
from lapjax.train import loop
from lapjax.train.state import TrainState, create_train_state


@dataclasses.dataclass(frozen=True)
class DetachedLap:
  """A detached-LAP model on the tiny run's backbone, its LAP heads at
  their initialisation, and the data its LAP report is computed on."""
  config: ml_collections.ConfigDict  # lap_detached,multi,tiny; read-only
  model: nn.Module
  state: TrainState                  # params["backbone"]: the run's
  test: Any                          # config.data's test and validation
  val: Any                           # sources (sources.make_source)
  info: dict[str, Any]

  def lap_evaluation(self, *, test: Any = None, state: Any = None,
                     **evaluation) -> dict[str, Any]:
    """``lap_report.lap_evaluation`` of this model (key 0), with
    ``evaluation`` overriding fields of a copy of ``config.evaluation``;
    ``test`` replaces the test source, ``state`` (a
    ``streaming.EvaluationState``) makes the section resumable."""
    config = self.config.copy_and_resolve_references()
    config.evaluation.update(evaluation)
    variables = {"params": self.state.params,
                 "batch_stats": self.state.batch_stats}
    return lap_report.lap_evaluation(
        config, self.model, variables,
        self.test if test is None else test, self.val,
        lap_layers=loop.lap_map_layers(config),
        membership=loop.dc_membership(self.info), key=jax.random.key(0),
        state=state)


def build(run_dir: str) -> DetachedLap:
  """``configs/lap.py:lap_detached,multi,tiny`` initialised from the run
  in ``run_dir`` (``init_from`` into the backbone, heads from key 0)."""
  config = lap_configs.get_config("lap_detached,multi,tiny")
  config.init_from = run_dir
  test, info = sources.make_source(config.data, "test")
  val, _ = sources.make_source(config.data, "validation")
  model = loop.build_model(config, info)
  tx, _ = loop.make_optimizer(config)
  state = create_train_state(model, tx, jax.random.key(0),
                             info["image_shape"])
  state = loop.init_from_run(state, tx, run_dir, into="backbone")
  return DetachedLap(config=config, model=model, state=state, test=test,
                     val=val, info=info)
