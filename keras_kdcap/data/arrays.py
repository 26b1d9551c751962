"""A TensorFlow-free CIFAR pipeline: NumPy augmentation in a `keras.utils.PyDataset`.

For JAX or PyTorch installs without TensorFlow (e.g. a GPU machine with only
those frameworks). Same recipe as the tf.data pipeline: zero-pad 4, random
32x32 crop, horizontal flip, per-channel normalisation; shuffled and
augmented anew each epoch from `(seed, epoch)`, so runs are reproducible. The
random draws differ from the tf.data pipeline's (NumPy's generator, not
TensorFlow's stateless ops).
"""

from __future__ import annotations

import os

import keras
import numpy as np

from keras_kdcap.data.cifar import CIFAR100_MEAN, CIFAR100_STD, load_cifar100_arrays
from keras_kdcap.data.pipeline import stratified_indices


def pad_crop_flip_numpy(images: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """Random crop of the zero-padded images and a random horizontal flip, per image.

    Args:
        images: `[B, H, W, C]` array.
        rng: the generator the offsets and flips are drawn from.
        pad: zero padding on each side before cropping.

    Returns:
        Array of the input's shape and dtype.
    """
    batch, height, width, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy = rng.integers(0, 2 * pad + 1, size=batch)
    dx = rng.integers(0, 2 * pad + 1, size=batch)
    flip = rng.random(batch) < 0.5
    rows = dy[:, None] + np.arange(height)[None, :]
    cols = dx[:, None] + np.arange(width)[None, :]
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
    return padded[np.arange(batch)[:, None, None], rows[:, :, None], cols[:, None, :]]


class ArrayImageDataset(keras.utils.PyDataset):
    """Batches of normalised (optionally augmented) uint8 images and int32 labels.

    Args:
        images: uint8 `[N, H, W, C]`.
        labels: int `[N]`.
        batch_size: samples per batch.
        augment: pad-crop-flip each epoch.
        shuffle: reshuffle each epoch.
        seed: seed of shuffling and augmentation (combined with the epoch).
        drop_remainder: leave out the last incomplete batch.
        epoch: the epoch of the first pass (later passes count up from it).
        mean: per-channel mean of the [0, 1] images.
        std: per-channel standard deviation.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int = 64,
        augment: bool = False,
        shuffle: bool = False,
        seed: int = 0,
        drop_remainder: bool = False,
        epoch: int = 0,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if len(images) == 0:
            raise ValueError("`images` is empty: there is nothing to iterate over.")
        if len(images) != len(labels):
            raise ValueError(f"`images` has {len(images)} rows but `labels` has {len(labels)}.")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1; got {batch_size}.")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int32).reshape(-1)
        self.batch_size = int(batch_size)
        self.augment = augment
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_remainder = bool(drop_remainder)
        if self.drop_remainder and len(images) < batch_size:
            raise ValueError(
                f"`batch_size`={batch_size} exceeds the {len(images)} images with "
                "`drop_remainder=True`: no batch would be left."
            )
        self.epoch = int(epoch)
        self._mean = np.asarray(mean, np.float32)
        self._std = np.asarray(std, np.float32)
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.labels))
        return np.random.default_rng([self.seed, self.epoch, 0]).permutation(len(self.labels))

    def __len__(self) -> int:
        if self.drop_remainder:
            return len(self.labels) // self.batch_size
        return -(-len(self.labels) // self.batch_size)

    def __getitem__(self, index: int):
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        images = self.images[rows]
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, 1, index])
            images = pad_crop_flip_numpy(images, rng)
        images = (images.astype(np.float32) / 255.0 - self._mean) / self._std
        return images, self.labels[rows]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._permutation()


def take(
    arrays: tuple[np.ndarray, np.ndarray], indices: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """`(images, labels)` at `indices` (all of them for None)."""
    return arrays if indices is None else (arrays[0][indices], arrays[1][indices])


def cifar100_array_datasets(
    data_dir: str | os.PathLike,
    batch_size: int = 64,
    seed: int = 0,
    augment: bool = True,
    per_class: int | None = None,
    test_per_class: int | None = None,
    eval_batch_size: int | None = None,
) -> tuple[ArrayImageDataset, ArrayImageDataset]:
    """CIFAR-100 train and test `PyDataset`s from the offline npz, without TensorFlow.

    Args:
        data_dir: folder with `train.npz` and `test.npz`.
        batch_size: training batch size.
        seed: seed of shuffling and augmentation.
        augment: pad-crop-flip the training images.
        per_class: keep the first N training images of each class.
        test_per_class: keep the first N test images of each class.
        eval_batch_size: test batch size (default: `batch_size`).

    Returns:
        `(train, test)`: the training set shuffled and augmented per epoch,
        the test set in order and unaugmented.
    """
    train, test = load_cifar100_arrays(data_dir)
    if per_class:
        train = take(train, stratified_indices(train[1], per_class))
    if test_per_class:
        test = take(test, stratified_indices(test[1], test_per_class))
    return (
        ArrayImageDataset(*train, batch_size, augment=augment, shuffle=True, seed=seed),
        ArrayImageDataset(*test, eval_batch_size or batch_size),
    )
