"""Training: state, optax loop, Orbax checkpoints, data-parallel sharding."""

from lapjax.train.loop import (
                               cross_entropy_loss,
                               load_state,
                               make_optimizer,
                               predict,
                               train_and_evaluate,
                               train_step,
)
from lapjax.train.state import TrainState, create_train_state

__all__ = ["TrainState", "create_train_state", "cross_entropy_loss",
           "load_state", "make_optimizer", "predict", "train_and_evaluate",
           "train_step"]
