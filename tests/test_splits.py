"""CifarSplits: per-class train / validation / test subsets and replayable batches."""

from __future__ import annotations

import importlib.util

import keras
import numpy as np
import pytest

from keras_kdcap.data import CifarSplits, first_classes, resolve_pipeline

HAS_TF = importlib.util.find_spec("tensorflow") is not None
PIPELINES = ["numpy"] + (["tfdata"] if HAS_TF else [])


def _arrays(rng, n, classes=10):
    labels = rng.permutation(np.arange(n) % classes).astype(np.int32)
    return rng.integers(0, 256, size=(n, 32, 32, 3)).astype(np.uint8), labels


def _first(labels, per_class, skip=0):
    """Reference: the indices of the first `skip + per_class` of each class but `skip`."""
    picked = [np.flatnonzero(labels == c)[skip : skip + per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picked))


def _as_numpy(batches, pipeline):
    if pipeline == "numpy":
        return [batches[i] for i in range(len(batches))]
    return [(x.numpy(), y.numpy()) for x, y in batches]


def test_subsets_are_the_first_images_of_each_class(rng):
    train, test = _arrays(rng, 400), _arrays(rng, 100)
    splits = CifarSplits(train, test, 6, val_per_class=3, test_per_class=2, batch_size=8, classes=8)
    assert splits.sizes() == {"train": 48, "val": 24, "test": 16}
    kept = np.flatnonzero(train[1] < 8)
    np.testing.assert_array_equal(splits.train[1], train[1][kept][_first(train[1][kept], 6)])
    np.testing.assert_array_equal(splits.train[0], train[0][kept][_first(train[1][kept], 6)])
    np.testing.assert_array_equal(splits.val[0], train[0][kept][_first(train[1][kept], 3, 6)])
    for split in ("train", "val", "test"):
        counts = np.bincount(getattr(splits, split)[1], minlength=10)
        assert list(counts) == [{"train": 6, "val": 3, "test": 2}[split]] * 8 + [0, 0]
    # train and validation images are disjoint rows of the training split
    rows = {bytes(x) for x in splits.train[0]}
    assert not rows & {bytes(x) for x in splits.val[0]}
    assert splits.steps_per_epoch == 6


def test_zero_means_all_and_no_validation(rng):
    train, test = _arrays(rng, 60), _arrays(rng, 30)
    splits = CifarSplits(train, test, 0, batch_size=20, pipeline="numpy")
    assert splits.sizes() == {"train": 60, "val": 0, "test": 30}
    accuracy, logits = splits.accuracy(None, "val")
    assert np.isnan(accuracy) and logits.shape == (0, 100)
    with pytest.raises(ValueError, match="batch_size=64 exceeds the 60"):
        CifarSplits(train, test, 0, batch_size=64)


def test_first_classes_keeps_order_and_labels(rng):
    images, labels = _arrays(rng, 50)
    x, y = first_classes((images, labels), 3)
    keep = labels < 3
    np.testing.assert_array_equal(x, images[keep])
    np.testing.assert_array_equal(y, labels[keep])


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_batches_replay_from_seed_and_epoch(rng, pipeline):
    train, test = _arrays(rng, 80), _arrays(rng, 20)
    splits = CifarSplits(train, test, 8, val_per_class=0, batch_size=16, pipeline=pipeline)
    epoch = _as_numpy(splits.train_epoch(3, 1), pipeline)
    assert len(epoch) == 5 and all(x.shape == (16, 32, 32, 3) for x, _ in epoch)
    again = _as_numpy(splits.train_epoch(3, 1), pipeline)
    for (xa, ya), (xb, yb) in zip(epoch, again, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    other = _as_numpy(splits.train_epoch(3, 2), pipeline)
    assert not np.array_equal(epoch[0][0], other[0][0])
    first = _as_numpy(splits.train_epochs(3), pipeline)  # the epoch-aware set starts at 0
    np.testing.assert_array_equal(first[0][0], _as_numpy(splits.train_epoch(3, 0), pipeline)[0][0])
    plain = np.concatenate([y for _, y in _as_numpy(splits.eval("train"), pipeline)])
    np.testing.assert_array_equal(plain, splits.train[1])  # in order, every image


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_accuracy_of_a_model(rng, pipeline):
    train, test = _arrays(rng, 40), _arrays(rng, 30)
    splits = CifarSplits(train, test, 4, batch_size=8, pipeline=pipeline)
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)))
    accuracy, logits = splits.accuracy(model, "test")
    assert logits.shape == (30, 10) and logits.dtype == np.float32
    assert accuracy == np.mean(np.argmax(logits, -1) == splits.test[1])


def test_resolve_pipeline():
    assert resolve_pipeline("auto") == ("tfdata" if HAS_TF else "numpy")
    assert resolve_pipeline("numpy") == "numpy"
    with pytest.raises(ValueError, match="pipeline=grain: choose one of auto, tfdata, numpy"):
        resolve_pipeline("grain")
