"""lapjax: interpretable-by-design classifiers and explanations in JAX.

The public API, re-exported from the modules that define it.
"""

from lapjax import attribution, data, metrics, models
from lapjax.classifier import Classifier, available_layers, from_flax

__version__ = "0.1.0"

__all__ = ["Classifier", "attribution", "available_layers", "data",
           "from_flax", "metrics", "models"]
