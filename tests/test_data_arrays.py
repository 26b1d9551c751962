"""The TensorFlow-free CIFAR pipeline against a NumPy reference of pad-crop-flip."""

from __future__ import annotations

import numpy as np
import pytest

from keras_kdcap.data import ArrayImageDataset, cifar100_array_datasets, pad_crop_flip_numpy
from keras_kdcap.data.cifar import CIFAR100_MEAN, CIFAR100_STD


def reference_crop_flip(image, dy, dx, flip, pad=4):
    padded = np.zeros((image.shape[0] + 2 * pad, image.shape[1] + 2 * pad, image.shape[2]))
    padded[pad:-pad, pad:-pad] = image
    crop = padded[dy : dy + image.shape[0], dx : dx + image.shape[1]]
    return crop[:, ::-1] if flip else crop


def test_pad_crop_flip_matches_per_image_reference(rng):
    images = rng.integers(0, 256, size=(16, 32, 32, 3)).astype(np.uint8)
    out = pad_crop_flip_numpy(images, np.random.default_rng(7))
    draws = np.random.default_rng(7)
    dy = draws.integers(0, 9, size=16)
    dx = draws.integers(0, 9, size=16)
    flip = draws.random(16) < 0.5
    for i in range(16):
        np.testing.assert_array_equal(out[i], reference_crop_flip(images[i], dy[i], dx[i], flip[i]))
    assert flip.any() and (~flip).any()


def test_batches_are_normalised_reproducible_and_change_per_epoch(rng):
    images = rng.integers(0, 256, size=(50, 32, 32, 3)).astype(np.uint8)
    labels = np.arange(50) % 7
    a = ArrayImageDataset(images, labels, 16, augment=True, shuffle=True, seed=3)
    b = ArrayImageDataset(images, labels, 16, augment=True, shuffle=True, seed=3)
    assert len(a) == 4
    assert len(ArrayImageDataset(images, labels, 16, drop_remainder=True)) == 3
    xa, ya = a[0]
    xb, yb = b[0]
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
    a.on_epoch_end()
    assert not np.array_equal(a[0][0], xa)
    plain = ArrayImageDataset(images, labels, 50)
    x, y = plain[0]
    expected = (images / 255.0 - np.array(CIFAR100_MEAN)) / np.array(CIFAR100_STD)
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y, labels)
    assert x.dtype == np.float32 and y.dtype == np.int32


def test_bad_arrays_are_refused():
    with pytest.raises(ValueError, match="`images` is empty"):
        ArrayImageDataset(np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0))
    with pytest.raises(ValueError, match="`labels` has 3"):
        ArrayImageDataset(np.zeros((4, 32, 32, 3), np.uint8), np.zeros(3))


def test_cifar100_array_datasets_on_the_offline_copy(cifar100_path):
    train, test = cifar100_array_datasets(cifar100_path, 32, per_class=2, test_per_class=1)
    assert len(train.labels) == 200 and len(test.labels) == 100
    assert sorted(np.bincount(train.labels)) == [2] * 100
    x, y = train[0]
    assert x.shape == (32, 32, 32, 3) and y.min() >= 0 and y.max() < 100
