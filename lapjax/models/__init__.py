"""Flax linen classifiers with named taps (see ``lapjax.from_flax``).

The zoo (``CARDS``: ResNet, VGG, DenseNet, EfficientNet, Inception-V3,
ConvNeXt and ViT backbones by timm-style name),
the clue benchmark's ``SmallCNN``, and pretrained-weight import
(``load_pretrained``, ``import_weights``, ``read_checkpoint``).
"""

from lapjax.models.card import Layout, ModelCard, Source
from lapjax.models.cnn import SmallCNN
from lapjax.models.convnext import ConvNeXt
from lapjax.models.densenet import DenseNet
from lapjax.models.efficientnet import EfficientNet
from lapjax.models.inception import InceptionV3
from lapjax.models.layers import ConvNormAct, GlobalAvgPool, Pool, batch_norm
from lapjax.models.registry import (
                                    CARDS,
                                    HF_MODEL_TYPES,
                                    MODELS,
                                    create_model,
                                    get_card,
)
from lapjax.models.resnet import (
                                  BasicBlock,
                                  BottleneckBlock,
                                  ResNet,
                                  ResNet18,
                                  ResNet34,
                                  ResNet50,
                                  ResNet101,
                                  ResNet152,
                                  WideResNet50_2,
)
from lapjax.models.torch_pickle import UnsafePickleError, load_torch_pickle
from lapjax.models.vgg import VGG
from lapjax.models.vit import VisionTransformer
from lapjax.models.weights import (
                                   WeightMismatchError,
                                   import_weights,
                                   load_pretrained,
                                   read_checkpoint,
)

__all__ = [
    "CARDS", "HF_MODEL_TYPES", "MODELS", "VGG", "BasicBlock",
    "BottleneckBlock", "ConvNeXt", "ConvNormAct", "DenseNet", "EfficientNet",
    "GlobalAvgPool", "InceptionV3", "Layout", "ModelCard", "Pool", "ResNet",
    "ResNet18", "ResNet34", "ResNet50", "ResNet101", "ResNet152", "SmallCNN",
    "Source", "UnsafePickleError", "VisionTransformer", "WeightMismatchError",
    "WideResNet50_2",
    "batch_norm", "create_model", "get_card", "import_weights",
    "load_pretrained", "load_torch_pickle", "read_checkpoint",
]
