"""The KD term, RegT and the smoothed cross-entropy against the float64 NumPy reference."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import reference as ref
from helpers import assert_close, to_numpy

from keras_kdcap import RegTLoss, SmoothedCrossEntropy, distillation_loss

CASES = [(scale, classes) for scale in (1.0, 3.0, 10.0) for classes in (10, 100, 1000)]


@pytest.mark.parametrize("scale,classes", CASES)
@pytest.mark.parametrize("scaling", [True, False])
def test_distillation_loss(rng, scale, classes, scaling):
    f = rng.normal(size=(16, classes)) * scale
    g = (rng.normal(size=(16, classes)) * scale).astype(np.float32)
    t = ref.tempered_softmax(f, 4.0).astype(np.float32)
    s = rng.uniform(0.5, 6.0, size=16).astype(np.float32)
    assert_close(
        "distillation_loss", distillation_loss(t, g, s, scaling), ref.kl_kd(t, g, s, scaling)
    )
    assert_close("distillation_loss[T]", distillation_loss(t, g, 4.0), ref.kl_kd(t, g, 4.0))


def test_distillation_loss_zero_probabilities_and_equal_distributions():
    t = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], np.float32)
    g = np.array([[2.0, -1.0, 0.0], [0.0, 0.0, -1e4]], np.float32)
    loss = to_numpy(distillation_loss(t, g, 1.0))
    assert np.all(np.isfinite(loss))
    np.testing.assert_allclose(loss, ref.kl_kd(t, g, 1.0), rtol=1e-5)
    g_same = np.log(np.array([[0.2, 0.3, 0.5]], np.float32)) * 2.0
    same = to_numpy(distillation_loss(ref.softmax(g_same / 2.0).astype(np.float32), g_same, 2.0))
    assert abs(same[0]) < 1e-6


@pytest.mark.parametrize("scale,classes", CASES)
def test_regt_loss(rng, scale, classes):
    f = (rng.normal(size=(16, classes)) * scale).astype(np.float32)
    y = rng.integers(0, classes, 16)
    loss = RegTLoss(gamma=0.3, temperature=2.0)
    per_sample = loss.call(y, f)
    assert_close("RegTLoss", per_sample, ref.regt(f, y, 0.3, 2.0))
    assert_close("RegTLoss.mean", loss(y, f), ref.regt(f, y, 0.3, 2.0).mean())
    one_hot = keras.ops.one_hot(y, classes)
    assert_close("RegTLoss.onehot", loss.call(one_hot, f), ref.regt(f, y, 0.3, 2.0))


def test_regt_with_zero_gamma_is_cross_entropy(rng):
    f = rng.normal(size=(8, 10)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    np.testing.assert_allclose(
        to_numpy(RegTLoss(gamma=0.0).call(y, f)), ref.cross_entropy(f, y), rtol=1e-5
    )


def test_regt_trains_a_teacher_and_round_trips(rng, tmp_path):
    x = rng.normal(size=(128, 6)).astype(np.float32)
    y = rng.integers(0, 5, 128)
    teacher = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5)])
    teacher.compile("adam", loss=RegTLoss(gamma=0.1, temperature=4.0))
    history = teacher.fit(x, y, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    teacher.save(tmp_path / "t.keras")
    restored = keras.models.load_model(tmp_path / "t.keras")
    assert restored.loss.get_config() == teacher.loss.get_config()


@pytest.mark.parametrize(
    "kwargs,argument",
    [({"gamma": -1.0}, "gamma"), ({"temperature": 0.0}, "temperature")],
)
def test_regt_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        RegTLoss(**kwargs)


@pytest.mark.parametrize("scale,classes", CASES)
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5, 1.0])
def test_smoothed_cross_entropy(rng, scale, classes, eps):
    f = (rng.normal(size=(16, classes)) * scale).astype(np.float32)
    y = rng.integers(0, classes, 16)
    loss = SmoothedCrossEntropy(label_smoothing=eps)
    expected = ref.smoothed_cross_entropy(f, y, eps)
    assert_close("SmoothedCrossEntropy", loss.call(y, f), expected)
    assert_close("SmoothedCrossEntropy.mean", loss(y, f), expected.mean())
    one_hot = keras.ops.one_hot(y, classes)
    assert_close("SmoothedCrossEntropy.onehot", loss.call(one_hot, f), expected)


def test_smoothed_cross_entropy_matches_keras_one_hot(rng):
    f = rng.normal(size=(8, 10)).astype(np.float32) * 3
    y = rng.integers(0, 10, 8)
    keras_loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.2)
    np.testing.assert_allclose(
        to_numpy(SmoothedCrossEntropy(0.2)(y, f)),
        to_numpy(keras_loss(keras.ops.one_hot(y, 10), f)),
        rtol=1e-5,
    )


def test_smoothed_teacher_is_flatter(rng):
    """Smoothing lowers the fitted teacher's non-target variance (what it is for)."""
    x = rng.normal(size=(256, 8)).astype(np.float32)
    y = (x[:, :5].argmax(-1)).astype("int32")
    variances = {}
    for eps in (0.0, 0.5):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(5)])
        model.compile(keras.optimizers.Adam(0.05), loss=SmoothedCrossEntropy(eps))
        model.fit(x, y, epochs=20, verbose=0)
        logits = to_numpy(model(x)).astype(np.float64)
        non_target = logits[np.arange(5)[None, :] != y[:, None]].reshape(len(y), 4)
        renormalised = ref.softmax(non_target)  # the distribution over the other classes
        variances[eps] = renormalised.var(-1).mean()
    assert variances[0.5] < 0.5 * variances[0.0]


@pytest.mark.parametrize("eps", [-0.1, 1.5])
def test_smoothed_cross_entropy_bad_argument(eps):
    with pytest.raises(ValueError, match="`label_smoothing`"):
        SmoothedCrossEntropy(eps)
