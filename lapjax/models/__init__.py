"""Flax linen classifiers with named taps (see ``lapjax.from_flax``)."""

from lapjax.models.cnn import SmallCNN
from lapjax.models.layers import ConvNormAct, GlobalAvgPool, Pool, batch_norm
from lapjax.models.registry import MODELS, create_model
from lapjax.models.resnet import (
                                  BasicBlock,
                                  BottleneckBlock,
                                  ResNet,
                                  ResNet18,
                                  ResNet34,
                                  ResNet50,
)

__all__ = [
    "BasicBlock", "BottleneckBlock", "ConvNormAct", "GlobalAvgPool", "MODELS",
    "Pool", "ResNet", "ResNet18", "ResNet34", "ResNet50", "SmallCNN",
    "batch_norm", "create_model",
]
