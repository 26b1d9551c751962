"""CIFAR VGG with BatchNorm (Simonyan & Zisserman 2015), in the CRD/RepDistiller layout.

Layout: five groups of ``conv3x3(bias)-BN-ReLU`` layers with 64/128/256/512/512 channels;
2x2 max-pooling after groups 1-3 (and after group 4 only for inputs of 64 pixels or more,
as in the reference, so a 32x32 image reaches groups 4 and 5 at 4x4), then global average
pooling and a single ``"classifier"`` Dense (no fully connected hidden layers).

Convs per group: vgg8 1/1/1/1/1, vgg11 1/1/2/2/2, vgg13 2/2/2/2/2, vgg16 2/2/3/3/3,
vgg19 2/2/4/4/4. Feature dimension ``D = 512`` for every depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import layers

from keras_kdcap.models._common import bn_relu, conv2d, zoo_model

GROUP_WIDTHS = (64, 128, 256, 512, 512)
CONVS_PER_GROUP = {
    8: (1, 1, 1, 1, 1),
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}


def build_vgg(
    depth: int,
    num_classes: int = 100,
    input_shape: Sequence[int | None] = (32, 32, 3),
    with_features: bool = False,
    kernel_regularizer: Any = None,
    name: str | None = None,
) -> keras.Model:
    """Build a CIFAR VGG-``depth`` with BatchNorm.

    Args:
        depth: one of 8, 11, 13, 16, 19.
        num_classes, input_shape, with_features, kernel_regularizer: as for
            :func:`~keras_kdcap.models.get_model`; the features have ``D = 512``.
        name: model name; ``vgg{depth}`` if None.

    Returns:
        A functional ``keras.Model`` producing float32 logits.
    """
    if depth not in CONVS_PER_GROUP:
        raise ValueError(f"VGG depth must be one of {sorted(CONVS_PER_GROUP)}, got {depth}")
    name = name or f"vgg{depth}"
    pool_group4 = input_shape[0] is not None and input_shape[0] >= 64
    groups = tuple(zip(GROUP_WIDTHS, CONVS_PER_GROUP[depth], strict=True))

    def body(x: Any, reg: Any) -> Any:
        for group, (filters, convs) in enumerate(groups, start=1):
            for i in range(1, convs + 1):
                prefix = f"group{group}_conv{i}"
                x = conv2d(x, filters, 3, 1, name=prefix, use_bias=True, kernel_regularizer=reg)
                x = bn_relu(x, f"{prefix}_bn", f"{prefix}_relu")
            if group <= 3 or (group == 4 and pool_group4):
                x = layers.MaxPooling2D(2, name=f"group{group}_pool")(x)
        return x

    # The reference draws the classifier kernel from N(0, 0.01): classifier_stddev=0.01.
    return zoo_model(body, name, num_classes, input_shape, with_features, kernel_regularizer, 0.01)
