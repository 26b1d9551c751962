"""CIFAR-100 subsets for experiments: train / validation / test per class, and their batches.

One class serves every script that trains on a slice of CIFAR-100: the first
`per_class` training images of each class, the next `val_per_class` ones as a
validation split (never the test split), the first `test_per_class` test
images, all from the first `classes` classes. Batches come from tf.data or,
without TensorFlow, from NumPy (`ArrayImageDataset`); a training epoch is
replayable from `(seed, epoch)`.

Example:
    >>> splits = CifarSplits.from_npz("cifar100", per_class=20, val_per_class=5)  # doctest: +SKIP
    >>> splits.sizes()  # doctest: +SKIP
    {'train': 2000, 'val': 500, 'test': 10000}
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import keras
import numpy as np

from keras_kdcap.data.arrays import ArrayImageDataset, take
from keras_kdcap.data.cifar import (
    CIFAR100_NUM_CLASSES,
    cifar100_datasets_from_arrays,
    load_cifar100_arrays,
)
from keras_kdcap.data.pipeline import stratified_indices

Arrays = tuple[np.ndarray, np.ndarray]
#: pipeline names: tf.data (TensorFlow) or NumPy in a `keras.utils.PyDataset`.
PIPELINES = ("auto", "tfdata", "numpy")
#: batch size of the in-order evaluation passes.
EVAL_BATCH_SIZE = 256
SPLITS = ("train", "val", "test")


def resolve_pipeline(pipeline: str) -> str:
    """`"auto"` -> `"tfdata"` when TensorFlow is installed, else `"numpy"`.

    Args:
        pipeline: one of `PIPELINES`.

    Returns:
        `"tfdata"` or `"numpy"`.

    Raises:
        ValueError: an unknown name, or `"tfdata"` without TensorFlow.
    """
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline={pipeline}: choose one of {', '.join(PIPELINES)}")
    has_tf = importlib.util.find_spec("tensorflow") is not None
    if pipeline == "auto":
        return "tfdata" if has_tf else "numpy"
    if pipeline == "tfdata" and not has_tf:
        raise ValueError("pipeline=tfdata needs TensorFlow: pip install tensorflow")
    return pipeline


def first_classes(arrays: Arrays, num_classes: int) -> Arrays:
    """The examples of classes `0 .. num_classes - 1`, in their order (labels unchanged).

    Args:
        arrays: `(images [N, ...], int labels [N])`.
        num_classes: how many classes to keep.

    Returns:
        `(images, labels)` of those classes.
    """
    images, labels = arrays
    keep = np.flatnonzero(np.asarray(labels).reshape(-1) < num_classes)
    return images[keep], labels[keep]


def per_class_indices(labels: np.ndarray, per_class: int) -> np.ndarray | None:
    """`stratified_indices` (the first `per_class` of each class), or None for 0: all."""
    return None if per_class <= 0 else stratified_indices(labels, per_class)


class CifarSplits:
    """Train / validation / test subsets of CIFAR-100 and the batches built on them.

    Args:
        train: `(uint8 images [N, 32, 32, 3], int labels [N])` of the training split.
        test: the same for the test split.
        per_class: training images per class (the first ones of each class; 0: all).
        val_per_class: validation images per class: the next ones of each class of
            the training split, disjoint from the training subset (0: none).
        test_per_class: test images per class (0: all).
        batch_size: training batch size (whole batches only).
        pipeline: `"tfdata"`, `"numpy"` or `"auto"` (see `resolve_pipeline`).
        classes: keep the first `classes` classes (labels stay `0 .. classes - 1`).

    Raises:
        ValueError: `batch_size` exceeds the training images.
    """

    def __init__(
        self,
        train: Arrays,
        test: Arrays,
        per_class: int,
        val_per_class: int = 0,
        test_per_class: int = 0,
        batch_size: int = 64,
        pipeline: str = "tfdata",
        classes: int = CIFAR100_NUM_CLASSES,
    ):
        self.pipeline = resolve_pipeline(pipeline)
        self.num_classes = classes
        if classes < CIFAR100_NUM_CLASSES:
            train, test = first_classes(train, classes), first_classes(test, classes)
        per_class = per_class if per_class > 0 else len(train[1])  # 0: all
        train_idx = stratified_indices(train[1], per_class)
        val_idx = np.array([], dtype=np.int64)
        if val_per_class > 0:
            val_idx = np.setdiff1d(
                stratified_indices(train[1], per_class + val_per_class), train_idx
            )
        self.train, self.val = take(train, train_idx), take(train, val_idx)
        self.test = take(test, per_class_indices(test[1], test_per_class))
        self.batch_size = batch_size
        if len(self.train[1]) < batch_size:
            raise ValueError(
                f"batch_size={batch_size} exceeds the {len(self.train[1])} training images."
            )
        self.steps_per_epoch = len(self.train[1]) // batch_size

    @classmethod
    def from_npz(cls, data_dir: str | os.PathLike, per_class: int, **kwargs: Any) -> CifarSplits:
        """The splits of the offline copy in `data_dir` (`train.npz`, `test.npz`).

        Args:
            data_dir: the npz folder.
            per_class: training images per class.
            **kwargs: the other arguments of `CifarSplits`.

        Returns:
            The splits.
        """
        train, test = load_cifar100_arrays(data_dir)
        return cls(train, test, per_class, **kwargs)

    def sizes(self) -> dict[str, int]:
        """Numbers of images per split."""
        return {k: len(getattr(self, k)[1]) for k in SPLITS}

    def _training(self, seed: int, augment: bool, epoch: int | None) -> Any:
        if self.pipeline == "numpy":
            return ArrayImageDataset(
                *self.train, self.batch_size, augment, True, seed, True, epoch=epoch or 0
            )
        train_ds, _ = cifar100_datasets_from_arrays(
            self.train,
            self.test,
            batch_size=self.batch_size,
            seed=seed,
            augment=augment,
            drop_remainder=True,
            epoch=epoch,
        )
        return train_ds

    def train_epoch(self, seed: int, epoch: int, augment: bool = True) -> Any:
        """One epoch of shuffled, augmented training batches, replayable from `(seed, epoch)`.

        Args:
            seed: shuffle and augmentation seed.
            epoch: the epoch.
            augment: crop and flip.

        Returns:
            Batches of `(image, label)`, whole batches only.
        """
        return self._training(seed, augment, epoch)

    def train_epochs(self, seed: int, augment: bool = True) -> Any:
        """The epoch-aware training batches (for `fit` over many epochs, see `EpochSync`).

        Args:
            seed: shuffle and augmentation seed.
            augment: crop and flip.

        Returns:
            Batches of `(image, label)` whose shuffle and augmentation follow the epoch.
        """
        return self._training(seed, augment, None)

    def eval(self, split: str) -> Any:
        """Batches of a split in order, normalised, not augmented.

        Args:
            split: `train`, `val` or `test`.

        Returns:
            Batches of `(image, label)`.
        """
        arrays = getattr(self, split)
        if self.pipeline == "numpy":
            return ArrayImageDataset(*arrays, EVAL_BATCH_SIZE)
        _, ds = cifar100_datasets_from_arrays(
            self.train, arrays, batch_size=self.batch_size, eval_batch_size=EVAL_BATCH_SIZE
        )
        return ds

    def accuracy(self, model: keras.Model, split: str) -> tuple[float, np.ndarray]:
        """Top-1 accuracy of a logits model on a split, and its logits.

        Args:
            model: gives `[B, C]` logits.
            split: `train`, `val` or `test`.

        Returns:
            `(accuracy, float32 logits [N, C])`; the accuracy is NaN on an empty split.
        """
        labels = getattr(self, split)[1]
        if len(labels) == 0:
            return float("nan"), np.zeros((0, self.num_classes), np.float32)
        logits = np.asarray(model.predict(self.eval(split), verbose=0), np.float32)
        return float(np.mean(np.argmax(logits, -1) == labels)), logits
