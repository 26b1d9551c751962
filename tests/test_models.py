"""Tests of the CIFAR model zoo: builds, forward passes, parameter/MAC counts, features."""

from __future__ import annotations

import functools
import hashlib

import keras
import numpy as np
import pytest

from keras_kdcap.models import (
    FEATURE_DIMS,
    MODEL_NAMES,
    ChannelShuffle,
    count_flops,
    count_params,
    feature_model,
    get_model,
)

# Trainable parameters for 100 classes (PyTorch's count: BN moving statistics excluded).
EXACT_PARAMS = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "mobilenetv2": 812_836,
    "shufflenetv1": 949_258,
    "shufflenetv2": 1_355_528,
}

# Counts published with the CRD benchmark (Tian et al. 2020 and its RepDistiller code).
PUBLISHED_PARAMS = {
    "resnet20": 0.28e6,
    "resnet56": 0.86e6,
    "resnet110": 1.74e6,
    "resnet8x4": 1.23e6,
    "resnet32x4": 7.43e6,
    "wrn_16_2": 0.70e6,
    "wrn_40_2": 2.26e6,
    "vgg8": 3.96e6,
    "vgg13": 9.46e6,
    "mobilenetv2": 0.81e6,
    "shufflenetv1": 0.95e6,
    "shufflenetv2": 1.36e6,
}

# sha256 (first 16 hex digits) of the model's "<layer name> <layer class>" lines in order:
# saved .keras and .weights.h5 files of existing teachers load only while these hold.
LAYER_FINGERPRINTS = {
    "resnet8": "a5d41a74e732f31a",
    "resnet14": "e2531888072a133c",
    "resnet20": "8c735fae72d8f7ab",
    "resnet32": "7403e6e8b58ed603",
    "resnet44": "8eaab6c4407447e4",
    "resnet56": "8c5d05fc2d3e7e33",
    "resnet110": "82ef7f7d287b90ee",
    "resnet8x4": "84b34261de0e085d",
    "resnet32x4": "5316f90804b9633e",
    "wrn_16_1": "d484f103e86b7cea",
    "wrn_16_2": "00b0cee1275ef2aa",
    "wrn_40_1": "4bbebcd06583cc40",
    "wrn_40_2": "648309da779682c0",
    "vgg8": "bc5b5550c44570c2",
    "vgg11": "ac1aac5257951204",
    "vgg13": "9041c2846ad00551",
    "vgg16": "97889a4774fa0e84",
    "vgg19": "2905fb2d1ca404e2",
    "mobilenetv2": "506ecfdb68eb6fae",
    "shufflenetv1": "5f93a639a9f34529",
    "shufflenetv2": "4a3b1429eaf7cd90",
}

# One model per family module (the param test checks D of every model via the classifier).
FAMILY_REPRESENTATIVES = ("resnet8", "wrn_16_1", "vgg8", "mobilenetv2", "shufflenetv2")


@functools.cache
def _built(name: str) -> keras.Model:
    """A 100-class model, built once per test session (tests do not modify it)."""
    return get_model(name, num_classes=100)


def _images(batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 32, 32, 3), dtype=np.float32)


def _forward(model: keras.Model, x: np.ndarray):
    """Eager inference outputs as NumPy.

    Eager calls share the per-op compilation cache of the JAX backend between models of the
    same architecture, so every test uses batches of 2 and 10 classes to hit it.
    """
    return keras.tree.map_structure(keras.ops.convert_to_numpy, model(x, training=False))


def test_registry_lists_every_model():
    assert set(MODEL_NAMES) == set(EXACT_PARAMS) == set(FEATURE_DIMS)
    assert len(MODEL_NAMES) == len(set(MODEL_NAMES)) == 21


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_pass_gives_logits(name):
    model = get_model(name, num_classes=10)
    logits = _forward(model, _images())
    assert logits.shape == (2, 10)
    assert np.all(np.isfinite(logits))
    assert model.layers[-1].name == "classifier"
    assert isinstance(model.layers[-1], keras.layers.Dense)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_count(name):
    model = _built(name)
    params = count_params(model)
    assert params == EXACT_PARAMS[name]
    if name in PUBLISHED_PARAMS:
        assert abs(params - PUBLISHED_PARAMS[name]) / PUBLISHED_PARAMS[name] < 0.01
    classifier = model.get_layer("classifier")
    assert tuple(classifier.kernel.shape) == (FEATURE_DIMS[name], 100)
    assert model.output.dtype == "float32"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_layer_names_and_order_are_stable(name):
    lines = "\n".join(f"{layer.name} {type(layer).__name__}" for layer in _built(name).layers)
    assert hashlib.sha256(lines.encode()).hexdigest()[:16] == LAYER_FINGERPRINTS[name]


@pytest.mark.parametrize("name", FAMILY_REPRESENTATIVES)
def test_with_features_matches_plain_model(name):
    x = _images(seed=1)
    dims = FEATURE_DIMS[name]
    with_feats = get_model(name, num_classes=10, with_features=True)
    out = _forward(with_feats, x)
    assert set(out) == {"logits", "features"}
    assert out["logits"].shape == (2, 10)
    assert out["features"].shape == (2, dims)

    plain = get_model(name, num_classes=10)
    plain.set_weights(with_feats.get_weights())
    np.testing.assert_allclose(_forward(plain, x), out["logits"], rtol=1e-5, atol=1e-5)

    logits, features = _forward(feature_model(plain), x)
    np.testing.assert_allclose(logits, out["logits"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(features, out["features"], rtol=1e-5, atol=1e-5)


def test_feature_model_shares_weights_and_accepts_feature_models():
    model = get_model("resnet8", num_classes=10, with_features=True)
    wrapped = feature_model(model)
    assert {id(w) for w in wrapped.weights} == {id(w) for w in model.weights}
    logits, features = _forward(wrapped, _images())
    assert logits.shape == (2, 10) and features.shape == (2, 64)
    with pytest.raises(ValueError, match="classifier"):
        feature_model(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="resnet21") as err:
        get_model("resnet21")
    for name in MODEL_NAMES:
        assert name in str(err.value)


def test_aliases_and_case():
    assert get_model("mobile_half", num_classes=5).name == "mobilenetv2"
    assert get_model("ResNet8", num_classes=5).name == "resnet8"


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, True, "10"])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        get_model("resnet8", num_classes=num_classes)


def test_count_flops_matches_published_macs():
    # Hand count of resnet20: 16-wide stem + 3 stages of 3 blocks + 2 projections + fc.
    assert count_flops(_built("resnet20")) == 40_818_944
    assert abs(count_flops(_built("resnet20")) - 41e6) / 41e6 < 0.03
    assert abs(count_flops(_built("resnet32x4")) - 1.08e9) / 1.08e9 < 0.03
    # Depthwise and grouped convolutions are counted per group.
    assert count_flops(_built("mobilenetv2")) == 6_523_648
    assert count_flops(_built("shufflenetv1")) == 38_691_456


def test_kernel_regularizer_reaches_every_kernel():
    reg = keras.regularizers.L2(2.5e-4)
    kernel_layers = (keras.layers.Conv2D, keras.layers.Dense)
    for name in ("mobilenetv2", "shufflenetv1"):
        model = get_model(name, num_classes=10, kernel_regularizer=reg)
        convs = [layer for layer in model.layers if isinstance(layer, kernel_layers)]
        depthwise = [
            layer for layer in model.layers if isinstance(layer, keras.layers.DepthwiseConv2D)
        ]
        assert convs and depthwise
        assert all(layer.kernel_regularizer is reg for layer in convs)
        assert all(layer.depthwise_regularizer is reg for layer in depthwise)
    # One L2 term per kernel: stem + 3 blocks x 2 convs + 2 projections + classifier.
    model = get_model("resnet8", num_classes=10, kernel_regularizer="l2")
    assert len(model.losses) == 10
    assert not get_model("resnet8", num_classes=10).losses


def test_bfloat16_policy_keeps_float32_logits():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = get_model("resnet8", num_classes=10, with_features=True)
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.get_layer("stem_conv").compute_dtype == "bfloat16"
    assert model.get_layer("classifier").compute_dtype == "float32"
    assert model.output["logits"].dtype == "float32"
    assert model.output["features"].dtype == "bfloat16"


def test_channel_shuffle_matches_pytorch_view_permute():
    groups, channels = 3, 12
    x = np.arange(2 * 2 * 2 * channels, dtype=np.float32).reshape(2, 2, 2, channels)
    # PyTorch (NCHW): view(N, g, C/g, H, W).permute(0, 2, 1, 3, 4); here on the last axis.
    expected = x.reshape(2, 2, 2, groups, channels // groups).swapaxes(-1, -2).reshape(x.shape)
    out = keras.ops.convert_to_numpy(ChannelShuffle(groups)(x))
    np.testing.assert_array_equal(out, expected)


def test_saved_zoo_model_loads_in_a_fresh_process_after_import_keras_kdcap(tmp_path):
    # The zoo's kernels use a registered custom initializer: a saved model must
    # load in a new process that imports only keras_kdcap (not keras_kdcap.models).
    import os
    import subprocess
    import sys

    path = tmp_path / "resnet8.keras"
    model = get_model("resnet8", num_classes=10)
    model.save(path)
    expected = keras.ops.convert_to_numpy(model(np.ones((1, 32, 32, 3), np.float32)))
    code = (
        "import sys, numpy as np, keras, keras_kdcap\n"
        f"m = keras.saving.load_model({str(path)!r})\n"
        "out = keras.ops.convert_to_numpy(m(np.ones((1, 32, 32, 3), np.float32)))\n"
        "np.save(sys.argv[1], out)\n"
    )
    out = tmp_path / "out.npy"
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend()}
    result = subprocess.run(
        [sys.executable, "-c", code, str(out)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-6)
