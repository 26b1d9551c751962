"""MixUp and CutMix in the tf.data and NumPy pipelines: soft labels equal the mixing weights."""

from __future__ import annotations

import numpy as np
import pytest

from keras_kdcap.data import ArrayImageDataset, MixedBatches, mix_batches
from keras_kdcap.data.mix import mix_batch_numpy

NUM_CLASSES = 12
SIZE = 16


def constant_images(n: int) -> np.ndarray:
    """Image i is filled with the value 10 * i: a pixel tells which image it came from."""
    return np.stack([np.full((SIZE, SIZE, 3), 10.0 * i, np.float32) for i in range(n)])


def check_mixed(images: np.ndarray, labels: np.ndarray, sources: np.ndarray, mode: str) -> None:
    """Each row of `labels` weighs the source images exactly as the pixels of its image do.

    `sources[k]` is the one-hot label of source image k (its value is 10 * k).
    """
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, rtol=1e-6)
    assert labels.min() >= 0.0
    values = images[..., 0].reshape(len(images), -1)
    for row, label in zip(values, labels, strict=True):
        if mode == "cutmix":
            # every pixel is one source image's value: the label is each source's pixel share
            index = np.rint(row / 10.0).astype(int)
            np.testing.assert_allclose(row, 10.0 * index, atol=1e-4)
            share = np.bincount(index, minlength=len(sources)) / row.size
            expected = share @ sources
            np.testing.assert_allclose(label, expected, atol=1e-6)
        else:
            # MixUp: every pixel is the label-weighted mean of the sources' values
            source_values = 10.0 * np.arange(len(sources), dtype=np.float64)
            class_value = sources.T.astype(np.float64) @ source_values  # value of each class
            np.testing.assert_allclose(row, label.astype(np.float64) @ class_value, atol=1e-3)


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_numpy_mix_labels_are_the_mixing_weights(mode):
    n = NUM_CLASSES
    images, labels = constant_images(n), np.arange(n)
    rng = np.random.default_rng(0)
    mixed, soft = mix_batch_numpy(images, labels, rng, mode, NUM_CLASSES, 1.0)
    assert mixed.shape == images.shape and soft.shape == (n, NUM_CLASSES)
    assert soft.max(axis=1).min() < 1.0  # something was mixed
    check_mixed(mixed, soft, np.eye(NUM_CLASSES)[labels], mode)


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_tfdata_mix_labels_are_the_mixing_weights_and_follow_the_epoch(mode):
    tf = pytest.importorskip("tensorflow")
    n = NUM_CLASSES
    images, labels = constant_images(n), np.arange(n)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(6)
    mixed = mix_batches(ds, mode, NUM_CLASSES, alpha=1.0, seed=3)
    assert int(mixed.cardinality()) == 2
    passes = []
    for _ in range(3):
        batches = [(x.numpy(), y.numpy()) for x, y in mixed]
        for (x, y), start in zip(batches, (0, 6), strict=True):
            # a batch mixes its own images only: sources are the batch's rows
            values = x[..., 0].reshape(len(x), -1) / 10.0 - start
            assert values.min() > -1e-3 and values.max() < 6 - 1 + 1e-3
            local = np.eye(NUM_CLASSES)[labels[start : start + 6]]
            check_mixed(x - 10.0 * start, y, local, mode)
        passes.append(np.concatenate([y for _, y in batches]))
    assert passes[0].max(axis=1).min() < 1.0
    # each pass over the dataset is a new epoch, mixed anew
    assert not np.allclose(passes[0], passes[1])
    # the same seed and epoch mix the same way
    again = mix_batches(ds, mode, NUM_CLASSES, alpha=1.0, seed=3)
    np.testing.assert_array_equal(np.concatenate([y.numpy() for _, y in again]), passes[0])


def test_tfdata_mix_keeps_the_epoch_counter():
    pytest.importorskip("tensorflow")
    from keras_kdcap.data import cifar100_datasets_from_arrays, get_epoch_counter, set_epoch

    images = np.zeros((8, 32, 32, 3), np.uint8) + np.arange(8, dtype=np.uint8)[:, None, None, None]
    labels = np.arange(8) % 4
    train, _ = cifar100_datasets_from_arrays((images, labels), (images, labels), batch_size=4)
    mixed = mix_batches(train, "cutmix", 4, seed=0)
    assert get_epoch_counter(mixed) is get_epoch_counter(train)
    set_epoch(mixed, 5)
    first = np.concatenate([y.numpy() for _, y in mixed])
    set_epoch(mixed, 5)
    np.testing.assert_array_equal(np.concatenate([y.numpy() for _, y in mixed]), first)


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mixed_array_batches_follow_the_wrapped_epoch(mode):
    images = (np.arange(16) * 10 % 250).astype(np.uint8)[:, None, None, None]
    images = np.broadcast_to(images, (16, SIZE, SIZE, 3)).copy()
    base = ArrayImageDataset(images, np.arange(16) % 4, batch_size=8, shuffle=True, seed=1)
    mixed = MixedBatches(base, mode, 4, seed=2)
    assert len(mixed) == 2
    x0, y0 = mixed[0]
    assert x0.shape == (8, SIZE, SIZE, 3) and y0.shape == (8, 4)
    np.testing.assert_allclose(y0.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(mixed[0][1], y0)  # same epoch, same mix
    mixed.on_epoch_end()
    assert base.epoch == 1 and mixed.epoch == 1
    assert not np.allclose(mixed[0][1], y0)
    mixed.epoch = -1  # as ArrayEpochSync lands on epoch 0
    mixed.on_epoch_end()
    np.testing.assert_array_equal(mixed[0][1], y0)


def test_bad_mix_arguments_are_named():
    with pytest.raises(ValueError, match="`mode`"):
        MixedBatches(ArrayImageDataset(np.zeros((2, 4, 4, 3), np.uint8), [0, 1]), "mosaic", 2)
    with pytest.raises(ValueError, match="`alpha`"):
        MixedBatches(ArrayImageDataset(np.zeros((2, 4, 4, 3), np.uint8), [0, 1]), "mixup", 2, 0.0)
    with pytest.raises(ValueError, match="`num_classes`"):
        MixedBatches(ArrayImageDataset(np.zeros((2, 4, 4, 3), np.uint8), [0, 1]), "mixup", 1)
