"""lapjax: interpretable-by-design classifiers and explanations in JAX.

The public API, re-exported from the modules that define it.
"""

from lapjax import attribution, data, metrics, models
from lapjax.adapters import from_nnx
from lapjax.classifier import Classifier, available_layers, from_flax
from lapjax.models import create_model, get_card, load_pretrained
from lapjax.tokens import TokenLayout

__version__ = "0.1.0"

__all__ = ["Classifier", "TokenLayout", "attribution", "available_layers",
           "create_model", "data", "from_flax", "from_nnx", "get_card",
           "load_pretrained", "metrics", "models"]
