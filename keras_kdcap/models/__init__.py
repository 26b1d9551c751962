"""CIFAR model zoo of the CRD/RepDistiller distillation benchmark, in Keras 3.

Build a model with ``get_model(name, num_classes)``; see ``MODEL_NAMES`` for the names and
``FEATURE_DIMS`` for the penultimate feature width of each. ``feature_model`` exposes the
features of any zoo model without a second forward pass, ``count_flops`` and
``count_params`` give the numbers of the documentation table (docs/models.md).
"""

from keras_kdcap.models.flops import count_flops, count_params
from keras_kdcap.models.mobilenetv2 import build_mobilenetv2
from keras_kdcap.models.registry import (
    ALIASES,
    FEATURE_DIMS,
    MODEL_NAMES,
    feature_model,
    get_model,
)
from keras_kdcap.models.resnet import build_resnet
from keras_kdcap.models.shufflenet import (
    ChannelShuffle,
    ChannelSplit,
    build_shufflenetv1,
    build_shufflenetv2,
)
from keras_kdcap.models.vgg import build_vgg
from keras_kdcap.models.wrn import build_wide_resnet

__all__ = [
    "ALIASES",
    "FEATURE_DIMS",
    "MODEL_NAMES",
    "ChannelShuffle",
    "ChannelSplit",
    "build_mobilenetv2",
    "build_resnet",
    "build_shufflenetv1",
    "build_shufflenetv2",
    "build_vgg",
    "build_wide_resnet",
    "count_flops",
    "count_params",
    "feature_model",
    "get_model",
]
