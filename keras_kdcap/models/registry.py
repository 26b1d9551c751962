"""Model registry: build any zoo model by name, and expose its penultimate features.

Every zoo model is a functional ``keras.Model`` ending in a ``keras.layers.Dense`` named
``"classifier"`` (float32 raw logits). Its input is the globally pooled penultimate feature
vector of dimension ``FEATURE_DIMS[name]``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import keras

from keras_kdcap.models.mobilenetv2 import build_mobilenetv2
from keras_kdcap.models.resnet import NARROW_WIDTHS, WIDE_WIDTHS, build_resnet
from keras_kdcap.models.shufflenet import build_shufflenetv1, build_shufflenetv2
from keras_kdcap.models.vgg import build_vgg
from keras_kdcap.models.wrn import build_wide_resnet

_BUILDERS: dict[str, Callable[..., keras.Model]] = {
    **{
        f"resnet{d}": functools.partial(build_resnet, d, NARROW_WIDTHS)
        for d in (8, 14, 20, 32, 44, 56, 110)
    },
    "resnet8x4": functools.partial(build_resnet, 8, WIDE_WIDTHS),
    "resnet32x4": functools.partial(build_resnet, 32, WIDE_WIDTHS),
    **{
        f"wrn_{d}_{k}": functools.partial(build_wide_resnet, d, k)
        for d, k in ((16, 1), (16, 2), (40, 1), (40, 2))
    },
    **{f"vgg{d}": functools.partial(build_vgg, d) for d in (8, 11, 13, 16, 19)},
    "mobilenetv2": functools.partial(build_mobilenetv2, 0.5, 6),
    "shufflenetv1": build_shufflenetv1,
    "shufflenetv2": functools.partial(build_shufflenetv2, 1.0),
}

MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)
"""Names accepted by ``get_model``, in the order of the documentation table."""

FEATURE_DIMS: dict[str, int] = {
    **{f"resnet{d}": 64 for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": 256,
    "resnet32x4": 256,
    "wrn_16_1": 64,
    "wrn_16_2": 128,
    "wrn_40_1": 64,
    "wrn_40_2": 128,
    **{f"vgg{d}": 512 for d in (8, 11, 13, 16, 19)},
    "mobilenetv2": 1280,
    "shufflenetv1": 960,
    "shufflenetv2": 1024,
}
"""Penultimate feature dimension ``D`` (input width of ``"classifier"``) per model."""

ALIASES: dict[str, str] = {
    "mobile_half": "mobilenetv2",
    "shufflev1": "shufflenetv1",
    "shufflev2": "shufflenetv2",
}
"""RepDistiller/CRD spellings accepted by ``get_model`` (matched case-insensitively)."""


def _canonical(name: str) -> str:
    if name in _BUILDERS:
        return name
    key = name.lower() if isinstance(name, str) else name
    if key in _BUILDERS:
        return key
    if key in ALIASES:
        return ALIASES[key]
    raise ValueError(
        f"Unknown model name {name!r}; valid names are: {', '.join(MODEL_NAMES)} "
        f"(aliases: {', '.join(ALIASES)})"
    )


def get_model(
    name: str,
    num_classes: int = 100,
    input_shape: Sequence[int | None] = (32, 32, 3),
    with_features: bool = False,
    **kwargs: Any,
) -> keras.Model:
    """Build a zoo model by name.

    Args:
        name: one of ``MODEL_NAMES`` (or an alias in ``ALIASES``).
        num_classes: number of logits (>= 1).
        input_shape: image shape ``(H, W, C)``, channels last; the CRD protocol uses 32x32x3.
        with_features: if True the model outputs ``{"logits": [B, num_classes],
            "features": [B, FEATURE_DIMS[name]]}`` from one forward pass.
        **kwargs: forwarded to the family builder (``build_resnet``, ...), e.g.
            ``kernel_regularizer`` (a Keras regularizer or its name such as ``"l2"``, applied
            to every conv, depthwise and dense kernel; none if None) or ``name``.

    Returns:
        A functional ``keras.Model`` whose last layer is the Dense ``"classifier"``.

    Raises:
        ValueError: for an unknown ``name`` or ``num_classes < 1``.
    """
    builder = _BUILDERS[_canonical(name)]
    return builder(
        num_classes=num_classes, input_shape=input_shape, with_features=with_features, **kwargs
    )


def feature_model(model: keras.Model) -> keras.Model:
    """Wrap a zoo model so one call returns ``(logits, features)``, sharing its weights.

    Args:
        model: any functional model with a single-use layer named ``"classifier"``
            (every zoo model, built with or without ``with_features``).

    Returns:
        A ``keras.Model`` on the same input whose outputs are ``(logits, features)``, where
        ``features`` is the input of ``"classifier"``.

    Raises:
        ValueError: if ``model`` has no layer named ``"classifier"``.
    """
    try:
        classifier = model.get_layer("classifier")
    except ValueError as err:
        raise ValueError(f"model {model.name!r} has no layer named 'classifier'") from err
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, (classifier.output, classifier.input), name=f"{model.name}_features")
