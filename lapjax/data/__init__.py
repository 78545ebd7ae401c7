"""Data: the embedded clue benchmark, grids, tfds pipelines, batching.

Submodules load on first use, so that ``python -m lapjax.data.clues`` runs
the module fresh and tensorflow-datasets is imported only when asked for.
"""

import importlib

_EXPORTS = {
    "ArraySource": "sources", "ClueSource": "sources", "data_info": "sources",
    "make_source": "sources", "CluesConfig": "clues", "render": "clues",
    "eval_batches": "batching", "train_batch": "batching",
    "train_indices": "batching",
}
_SUBMODULES = ("batching", "boxes", "clues", "coco", "grid", "image_dir",
               "sources", "tfds")

__all__ = sorted(_EXPORTS) + list(_SUBMODULES)


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"lapjax.data.{name}")
  if name in _EXPORTS:
    module = importlib.import_module(f"lapjax.data.{_EXPORTS[name]}")
    return getattr(module, name)
  raise AttributeError(f"module 'lapjax.data' has no attribute {name!r}")
