"""Tiny-ImageNet (200 classes, 64x64) from a local folder in its standard layout.

Layout: ``wnids.txt``; ``train/<wnid>/images/*.JPEG``; ``val/images/*.JPEG`` with
``val/val_annotations.txt`` (``file<TAB>wnid<TAB>...``). The labelled ``val`` split
serves as the test set (``test/`` has no labels). Label ``i`` is the ``i``-th wnid in
sorted order, as torchvision's ``ImageFolder`` numbers the class folders.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from keras_kdcap.data._deps import import_tensorflow
from keras_kdcap.data.augment import IMAGENET_MEAN, IMAGENET_STD, normalize, resize_crop_flip
from keras_kdcap.data.augment import resize_square as _resize_square
from keras_kdcap.data.pipeline import labelled_datasets

_LAYOUT = "wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt"


def tiny_imagenet_file_lists(root: str | os.PathLike) -> dict[str, Any]:
    """List the images and labels of a Tiny-ImageNet folder.

    Args:
        root: the folder (``tiny-imagenet-200``).

    Returns:
        A dict with ``wnids`` (sorted class ids), ``train_paths``/``train_labels`` and
        ``val_paths``/``val_labels`` (paths as str arrays, labels as int32 arrays).

    Raises:
        FileNotFoundError: the layout is not found; the message names ``root``.
    """
    root = Path(root)
    wnids_file, annotations = root / "wnids.txt", root / "val" / "val_annotations.txt"
    if not wnids_file.is_file() or not annotations.is_file():
        raise FileNotFoundError(
            f"Tiny-ImageNet not found in root={str(root)!r}: expected {_LAYOUT}"
        )
    wnids = sorted({line.strip() for line in wnids_file.read_text().splitlines() if line.strip()})
    index = {wnid: i for i, wnid in enumerate(wnids)}
    train_paths, train_labels = [], []
    for wnid in wnids:
        files = sorted((root / "train" / wnid / "images").glob("*.JPEG"))
        train_paths += [str(f) for f in files]
        train_labels += [index[wnid]] * len(files)
    val_paths, val_labels = [], []
    for line in annotations.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2:
            val_paths.append(str(root / "val" / "images" / fields[0]))
            val_labels.append(index[fields[1]])
    if not train_paths:
        raise FileNotFoundError(f"no training images under root={str(root)!r}: expected {_LAYOUT}")
    return {
        "wnids": wnids,
        "train_paths": np.array(train_paths),
        "train_labels": np.array(train_labels, np.int32),
        "val_paths": np.array(val_paths),
        "val_labels": np.array(val_labels, np.int32),
    }


def _file_loader(paths: np.ndarray, labels: np.ndarray) -> Any:
    tf = import_tensorflow()
    paths_t, labels_t = tf.constant(paths), tf.constant(labels)

    def load(index: Any) -> tuple[Any, Any]:
        data = tf.io.read_file(tf.gather(paths_t, index))
        image = tf.io.decode_jpeg(data, channels=3)  # a few Tiny-ImageNet JPEGs are grey
        return image, tf.gather(labels_t, index)

    return load


def tiny_imagenet_datasets(
    root: str | os.PathLike,
    image_size: int = 64,
    batch_size: int = 64,
    seed: int = 0,
    augment: bool = True,
    deterministic: bool = True,
    per_class: int | None = None,
    *,
    test_per_class: int | None = None,
    pad: int | None = None,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    shuffle: bool = True,
    drop_remainder: bool = False,
    initial_epoch: int = 0,
    epoch: int | None = None,
    eval_batch_size: int | None = None,
) -> tuple[Any, Any]:
    """Tiny-ImageNet train and val pipelines from a local folder.

    Training: resize to ``image_size`` (when it is not 64), zero-pad random crop and
    horizontal flip as for CIFAR, seeded from ``(seed, epoch, index)``.

    Args:
        root: the folder in the standard layout.
        image_size: side of the square images.
        batch_size: training batch size.
        seed: seed of the shuffle and augmentation.
        augment: apply the crop and flip.
        deterministic: set ``tf.data.Options.deterministic``.
        per_class: keep only the first N training images of each class.
        test_per_class: keep only the first N val images of each class.
        pad: crop padding (default ``image_size // 8``: 8 pixels at 64).
        mean: per-channel mean of [0, 1] images.
        std: per-channel standard deviation of [0, 1] images.
        shuffle: shuffle the training set every epoch.
        drop_remainder: drop the last incomplete training batch.
        initial_epoch: epoch of the training set's first pass.
        epoch: if given, the training set replays this one epoch on every pass.
        eval_batch_size: val batch size (default: ``batch_size``).

    Returns:
        ``(train_ds, val_ds)`` of ``(float32 image [B, S, S, 3], int32 label)``.
    """
    lists = tiny_imagenet_file_lists(root)
    pad = image_size // 8 if pad is None else pad

    def train_map(image: Any, seed_pair: Any) -> Any:
        if augment:
            image = resize_crop_flip(image, seed_pair, image_size, pad)
        else:
            image = _resize_square(image, image_size)
        return normalize(image, mean, std)

    return labelled_datasets(
        (lists["train_paths"], lists["train_labels"]),
        (lists["val_paths"], lists["val_labels"]),
        _file_loader,
        train_map,
        lambda image: normalize(_resize_square(image, image_size), mean, std),
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
