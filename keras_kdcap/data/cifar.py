"""CIFAR-100: constants, the offline npz reader and the standard training pipeline."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from keras_kdcap.data.augment import cifar_augment, normalize
from keras_kdcap.data.pipeline import array_loader, labelled_datasets

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
CIFAR100_NUM_CLASSES = 100
CIFAR100_SHAPE = (32, 32, 3)
CIFAR100_FILES = ("train.npz", "test.npz")
CIFAR100_ENV_VAR = "KDCAP_CIFAR100_DIR"

Arrays = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def has_cifar100_npz(data_dir: str | os.PathLike | None) -> bool:
    """Whether a folder holds the offline CIFAR-100 copy (``train.npz`` and ``test.npz``).

    Args:
        data_dir: the folder, or None.

    Returns:
        True when both files exist.
    """
    return data_dir is not None and all((Path(data_dir) / f).is_file() for f in CIFAR100_FILES)


def load_cifar100_arrays(data_dir: str | os.PathLike) -> Arrays:
    """Read the offline CIFAR-100 copy.

    Args:
        data_dir: folder with ``train.npz`` and ``test.npz``, each holding ``images``
            uint8 (N, 32, 32, 3) and ``labels`` (N,).

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: uint8 images NHWC, int32 labels.

    Raises:
        FileNotFoundError: a file is missing; the message names ``data_dir``.
        ValueError: an array has the wrong shape or a label is out of range.
    """
    folder = Path(data_dir)
    missing = [f for f in CIFAR100_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-100 npz files {missing} not found in data_dir={str(folder)!r}. Expected "
            "train.npz and test.npz, each with arrays 'images' uint8 (N, 32, 32, 3) and "
            "'labels' (N,). Pass another data_dir, set "
            f"{CIFAR100_ENV_VAR}, or pass data_dir=None to use tensorflow-datasets."
        )
    splits = []
    for name in CIFAR100_FILES:
        with np.load(folder / name) as npz:
            images, labels = npz["images"], npz["labels"].reshape(-1).astype(np.int32)
        if images.ndim != 4 or images.shape[1:] != CIFAR100_SHAPE or len(images) != len(labels):
            raise ValueError(
                f"{folder / name}: expected images (N, 32, 32, 3) and labels (N,), got "
                f"{images.shape} and {labels.shape}"
            )
        if labels.min() < 0 or labels.max() >= CIFAR100_NUM_CLASSES:
            raise ValueError(f"{folder / name}: labels outside [0, 100)")
        splits.append((images.astype(np.uint8, copy=False), labels))
    return splits[0], splits[1]


def resolve_cifar100_source(data_dir: str | os.PathLike | None) -> tuple[str, str | None]:
    """Decide where CIFAR-100 comes from.

    Args:
        data_dir: a folder with the npz files, a tfds data dir, or None (then the
            ``KDCAP_CIFAR100_DIR`` variable is tried, then tfds's default data dir).

    Returns:
        ``("npz", folder)`` or ``("tfds", data_dir)``.
    """
    if data_dir is None and has_cifar100_npz(os.environ.get(CIFAR100_ENV_VAR)):
        return "npz", os.environ[CIFAR100_ENV_VAR]
    if has_cifar100_npz(data_dir):
        return "npz", os.fspath(data_dir)
    return "tfds", None if data_dir is None else os.fspath(data_dir)


def cifar100_datasets(
    data_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    seed: int = 0,
    augment: bool = True,
    deterministic: bool = True,
    per_class: int | None = None,
    *,
    train_slice: int | None = None,
    test_per_class: int | None = None,
    shuffle: bool = True,
    drop_remainder: bool = False,
    initial_epoch: int = 0,
    epoch: int | None = None,
    eval_batch_size: int | None = None,
    download: bool = True,
) -> tuple[Any, Any]:
    """CIFAR-100 train and test pipelines: ``(float32 normalised NHWC image, int32 label)``.

    Reads the npz copy when ``data_dir`` holds it, otherwise tensorflow-datasets'
    ``cifar100`` with ``data_dir`` as tfds data dir. Training applies the CIFAR recipe
    (4-pixel zero-pad random crop, horizontal flip; see :mod:`keras_kdcap.data.augment`)
    with a stateless shuffle and augmentation drawn from ``(seed, epoch, index)``.

    Args:
        data_dir: npz folder, tfds data dir, or None (see :func:`resolve_cifar100_source`).
        batch_size: training batch size.
        seed: seed of the shuffle and augmentation.
        augment: apply the crop and flip (normalisation is always applied).
        deterministic: set ``tf.data.Options.deterministic``.
        per_class: keep only the first N training images of each class (stratified).
        train_slice: same as ``per_class`` (an alias; give one of the two).
        test_per_class: keep only the first N test images of each class.
        shuffle: shuffle the training set every epoch.
        drop_remainder: drop the last incomplete training batch.
        initial_epoch: epoch of the training set's first pass.
        epoch: if given, the training set replays this one epoch on every pass.
        eval_batch_size: test batch size (default: ``batch_size``).
        download: let tfds download when the data is not prepared and the host is reachable.

    Returns:
        ``(train_ds, test_ds)`` tf.data datasets. ``train_ds`` is epoch-aware: pass
        ``keras_kdcap.data.EpochSync(train_ds)`` to ``fit`` to tie it to Keras's epochs.
    """
    if train_slice is not None:
        if per_class is not None and per_class != train_slice:
            raise ValueError("give per_class or train_slice, not both")
        per_class = train_slice
    source, folder = resolve_cifar100_source(data_dir)
    if source == "npz":
        train, test = load_cifar100_arrays(folder)
    else:
        from keras_kdcap.data.tfds_sources import tfds_cifar100_arrays

        train, test = tfds_cifar100_arrays(folder, download=download)
    return cifar100_datasets_from_arrays(
        train,
        test,
        batch_size=batch_size,
        seed=seed,
        augment=augment,
        deterministic=deterministic,
        per_class=per_class,
        test_per_class=test_per_class,
        shuffle=shuffle,
        drop_remainder=drop_remainder,
        initial_epoch=initial_epoch,
        epoch=epoch,
        eval_batch_size=eval_batch_size,
    )


def cifar100_datasets_from_arrays(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    batch_size: int = 64,
    seed: int = 0,
    augment: bool = True,
    deterministic: bool = True,
    per_class: int | None = None,
    test_per_class: int | None = None,
    shuffle: bool = True,
    drop_remainder: bool = False,
    initial_epoch: int = 0,
    epoch: int | None = None,
    eval_batch_size: int | None = None,
) -> tuple[Any, Any]:
    """The pipelines of :func:`cifar100_datasets` over arrays already in memory.

    Args:
        train: ``(images uint8 [N, 32, 32, 3], labels [N])``.
        test: the same for the test split.
        batch_size: training batch size.
        seed: seed of the shuffle and augmentation.
        augment: apply the crop and flip.
        deterministic: set ``tf.data.Options.deterministic``.
        per_class: keep only the first N training images of each class.
        test_per_class: keep only the first N test images of each class.
        shuffle: shuffle the training set every epoch.
        drop_remainder: drop the last incomplete training batch.
        initial_epoch: epoch of the training set's first pass.
        epoch: if given, the training set replays this one epoch on every pass.
        eval_batch_size: test batch size (default: ``batch_size``).

    Returns:
        ``(train_ds, test_ds)`` as :func:`cifar100_datasets`.
    """

    def train_map(image: Any, seed_pair: Any) -> Any:
        if augment:
            image = cifar_augment(image, seed_pair)
        return normalize(image, CIFAR100_MEAN, CIFAR100_STD)

    return labelled_datasets(
        train,
        test,
        array_loader,
        train_map,
        lambda image: normalize(image, CIFAR100_MEAN, CIFAR100_STD),
        per_class=per_class,
        test_per_class=test_per_class,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        seed=seed,
        shuffle=shuffle,
        drop_remainder=drop_remainder,
        initial_epoch=initial_epoch,
        epoch=epoch,
        deterministic=deterministic,
    )
