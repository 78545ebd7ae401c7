"""Training: state, objectives, optax loop, Orbax checkpoints, sharding."""

from lapjax.train.loop import (
                               NonFiniteError,
                               load_state,
                               make_optimizer,
                               predict,
                               train_and_evaluate,
                               train_step,
)
from lapjax.train.objectives import cross_entropy_loss, training_loss
from lapjax.train.state import TrainState, create_train_state

__all__ = ["NonFiniteError", "TrainState", "create_train_state",
           "cross_entropy_loss", "load_state", "make_optimizer", "predict",
           "train_and_evaluate", "train_step", "training_loss"]
