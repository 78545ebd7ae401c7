"""Data: the embedded clue benchmark, grids, tfds pipelines, batching."""

from lapjax.data import boxes, clues
from lapjax.data.batching import eval_batches, train_batch, train_indices
from lapjax.data.clues import CluesConfig, render
from lapjax.data.sources import ArraySource, ClueSource, data_info, make_source

__all__ = ["ArraySource", "ClueSource", "CluesConfig", "boxes", "clues",
           "data_info", "eval_batches", "make_source", "render",
           "train_batch", "train_indices"]
