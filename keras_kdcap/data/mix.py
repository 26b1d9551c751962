"""MixUp and CutMix on batches: mixed images and soft `[B, C]` labels, teacher and student alike.

A mixed batch feeds the Distiller as one `(images, soft labels)` pair, so the
teacher and the student see the same mixed images. The labels are the exact
mixing weights: MixUp's `lam` per image, CutMix's share of pixels that stayed
(the pasted box is clipped to the image and its real area is used).

Every draw is stateless, from `(seed, epoch, batch index)`: a pass over the same
epoch mixes the same way, the next epoch mixes anew. Keras's own layers
(`keras.layers.MixUp`, `keras.layers.CutMix`) or keras-cv's can be used instead
with `layer=`; measured with Keras 3.15, `keras.layers.CutMix`'s labels differ
from its pasted areas by up to 6 points (keras-cv 0.9's by up to 55), which is
why the default is the exact version here.

Example:
    >>> train = mix_batches(train, "cutmix", num_classes=100, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from keras_kdcap.data._deps import import_tensorflow
from keras_kdcap.data.pipeline import EPOCH_COUNTER_ATTR, get_epoch_counter

MIX_MODES = ("mixup", "cutmix")
#: Beta(alpha, alpha) parameter of each mode's weight (the papers' CIFAR choices).
DEFAULT_ALPHA = {"mixup": 0.2, "cutmix": 1.0}
_MIX_SALT = 0x6D69_7875

Tensor = Any


def check_mix(mode: str, alpha: float | None) -> float:
    """Checks a mix mode and returns its Beta parameter.

    Args:
        mode: "mixup" or "cutmix".
        alpha: the Beta(alpha, alpha) parameter, or None for the mode's default.

    Returns:
        The parameter, > 0.

    Raises:
        ValueError: an unknown mode or a non-positive alpha.
    """
    if mode not in MIX_MODES:
        raise ValueError(f"`mode` must be one of {MIX_MODES}; got {mode!r}.")
    alpha = DEFAULT_ALPHA[mode] if alpha is None else float(alpha)
    if not alpha > 0:
        raise ValueError(f"`alpha` must be > 0 (the Beta(alpha, alpha) parameter); got {alpha}.")
    return alpha


def _soft_labels(tf: Any, labels: Tensor, num_classes: int) -> Tensor:
    if labels.shape.rank == 2 and labels.shape[-1] == num_classes:
        return tf.cast(labels, tf.float32)
    return tf.one_hot(tf.cast(tf.reshape(labels, [-1]), tf.int32), num_classes, dtype=tf.float32)


def _beta(tf: Any, shape: Any, seed: Tensor, alpha: float) -> Tensor:
    a = tf.random.stateless_gamma(shape, seed=seed, alpha=alpha)
    b = tf.random.stateless_gamma(
        shape, seed=tf.random.experimental.stateless_fold_in(seed, 1), alpha=alpha
    )
    return a / (a + b)


def mix_batch(
    images: Tensor, labels: Tensor, seed: Tensor, mode: str, num_classes: int, alpha: float
) -> tuple[Tensor, Tensor]:
    """Mixes one batch with a shuffled copy of itself (TensorFlow ops, for tf.data).

    Args:
        images: float `[B, H, W, C]`.
        labels: int `[B]` or soft `[B, num_classes]`.
        seed: int64 `[2]` stateless seed of this batch.
        mode: "mixup" or "cutmix".
        num_classes: number of classes.
        alpha: the Beta(alpha, alpha) parameter.

    Returns:
        `(images, labels)`: the mixed float32 images and float32 `[B, num_classes]` labels.
    """
    tf = import_tensorflow()
    fold = tf.random.experimental.stateless_fold_in
    images = tf.cast(images, tf.float32)
    labels = _soft_labels(tf, labels, num_classes)
    batch = tf.shape(images)[0]
    perm = tf.random.experimental.stateless_shuffle(tf.range(batch), seed=fold(seed, 2))
    other_images, other_labels = tf.gather(images, perm), tf.gather(labels, perm)
    lam = _beta(tf, [batch], fold(seed, 3), alpha)
    if mode == "cutmix":
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        side = tf.sqrt(1.0 - lam)
        box_h = tf.cast(tf.round(side * tf.cast(height, tf.float32)), tf.int32)
        box_w = tf.cast(tf.round(side * tf.cast(width, tf.float32)), tf.int32)
        center = tf.random.stateless_uniform([batch, 2], seed=fold(seed, 4))
        cy = tf.cast(center[:, 0] * tf.cast(height, tf.float32), tf.int32)
        cx = tf.cast(center[:, 1] * tf.cast(width, tf.float32), tf.int32)
        top, bottom = tf.maximum(cy - box_h // 2, 0), tf.minimum(cy - box_h // 2 + box_h, height)
        left, right = tf.maximum(cx - box_w // 2, 0), tf.minimum(cx - box_w // 2 + box_w, width)
        rows = tf.range(height)[None, :, None]
        cols = tf.range(width)[None, None, :]
        inside = (
            (rows >= top[:, None, None])
            & (rows < bottom[:, None, None])
            & (cols >= left[:, None, None])
            & (cols < right[:, None, None])
        )
        pasted = tf.cast(inside, tf.float32)
        # the label weight is the share of pixels that kept their own image
        lam = 1.0 - tf.reduce_mean(pasted, axis=[1, 2])
        mask = pasted[..., None]
        mixed = images * (1.0 - mask) + other_images * mask
    else:
        mixed = lam[:, None, None, None] * images + (1.0 - lam[:, None, None, None]) * other_images
    soft = lam[:, None] * labels + (1.0 - lam[:, None]) * other_labels
    return mixed, soft


def _layer_batch(layer: Any, images: Tensor, labels: Tensor, num_classes: int) -> Any:
    tf = import_tensorflow()
    out = layer(
        {"images": tf.cast(images, tf.float32), "labels": _soft_labels(tf, labels, num_classes)}
    )
    return out["images"], tf.cast(out["labels"], tf.float32)


def mix_batches(
    dataset: Any,
    mode: str,
    num_classes: int,
    *,
    alpha: float | None = None,
    seed: int = 0,
    layer: Any = None,
) -> Any:
    """MixUp or CutMix over a tf.data dataset of `(images, labels)` batches.

    Args:
        dataset: batched `(images [B, H, W, C], labels [B] or [B, C])`, e.g. the training
            set of `keras_kdcap.data.cifar100_datasets`; its epoch counter is kept.
        mode: "mixup" or "cutmix".
        num_classes: number of classes of the soft labels.
        alpha: Beta(alpha, alpha) parameter (default 0.2 for MixUp, 1.0 for CutMix).
        seed: seed of the draws, combined with the epoch and the batch index.
        layer: instead, a Keras or keras-cv layer taking `{"images", "labels"}` (such as
            `keras.layers.MixUp()`); `mode` and `alpha` are then only checked.

    Returns:
        A `tf.data.Dataset` of `(float32 images, float32 [B, num_classes] labels)`.
    """
    tf = import_tensorflow()
    alpha = check_mix(mode, alpha)
    if num_classes < 2:
        raise ValueError(f"`num_classes` must be >= 2; got {num_classes}.")
    counter = get_epoch_counter(dataset)
    passes = tf.Variable(0, dtype=tf.int64, trainable=False, name="kdcap_mix_pass")
    base = tf.stack([tf.constant(seed, tf.int64), tf.constant(_MIX_SALT, tf.int64)])

    def this_pass(_: Tensor) -> Tensor:
        # an epoch-aware dataset bumps its counter when its pass starts, after this read
        return counter.read_value() if counter is not None else passes.assign_add(1) - 1

    def one_pass(epoch: Tensor) -> Any:
        epoch_seed = tf.random.experimental.stateless_fold_in(base, epoch)

        def mix(index: Tensor, batch: Any) -> Any:
            images, labels = batch[0], batch[1]
            if layer is not None:
                return _layer_batch(layer, images, labels, num_classes)
            batch_seed = tf.random.experimental.stateless_fold_in(epoch_seed, index)
            return mix_batch(images, labels, batch_seed, mode, num_classes, alpha)

        return dataset.enumerate().map(mix, num_parallel_calls=tf.data.AUTOTUNE)

    mixed = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64)).map(this_pass)
    mixed = mixed.flat_map(one_pass)
    steps = int(dataset.cardinality())
    if steps >= 0:
        mixed = mixed.apply(tf.data.experimental.assert_cardinality(steps))
    mixed = mixed.prefetch(tf.data.AUTOTUNE)
    if counter is not None:
        setattr(mixed, EPOCH_COUNTER_ATTR, counter)
    return mixed


def mix_batch_numpy(
    images: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    mode: str,
    num_classes: int,
    alpha: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The NumPy twin of :func:`mix_batch` (its own draws, the same rules).

    Args:
        images: `[B, H, W, C]`.
        labels: int `[B]` or soft `[B, num_classes]`.
        rng: the generator of the draws.
        mode: "mixup" or "cutmix".
        num_classes: number of classes.
        alpha: the Beta(alpha, alpha) parameter.

    Returns:
        Float32 mixed images and `[B, num_classes]` labels.
    """
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels)
    if labels.ndim == 1:
        labels = np.eye(num_classes, dtype=np.float32)[labels.astype(np.int64)]
    labels = labels.astype(np.float32)
    batch, height, width = images.shape[:3]
    perm = rng.permutation(batch)
    lam = rng.beta(alpha, alpha, size=batch).astype(np.float32)
    if mode == "cutmix":
        side = np.sqrt(1.0 - lam)
        box_h, box_w = np.round(side * height).astype(int), np.round(side * width).astype(int)
        cy = (rng.random(batch) * height).astype(int)
        cx = (rng.random(batch) * width).astype(int)
        top, left = np.maximum(cy - box_h // 2, 0), np.maximum(cx - box_w // 2, 0)
        bottom = np.minimum(cy - box_h // 2 + box_h, height)
        right = np.minimum(cx - box_w // 2 + box_w, width)
        rows, cols = np.arange(height)[None, :, None], np.arange(width)[None, None, :]
        pasted = (
            (rows >= top[:, None, None])
            & (rows < bottom[:, None, None])
            & (cols >= left[:, None, None])
            & (cols < right[:, None, None])
        ).astype(np.float32)
        lam = 1.0 - pasted.mean(axis=(1, 2))
        mixed = np.where(pasted[..., None] > 0, images[perm], images)
    else:
        weight = lam[:, None, None, None]
        mixed = weight * images + (1.0 - weight) * images[perm]
    soft = lam[:, None] * labels + (1.0 - lam[:, None]) * labels[perm]
    return mixed.astype(np.float32), soft.astype(np.float32)


class MixedBatches(keras.utils.PyDataset):
    """MixUp or CutMix over a `keras.utils.PyDataset` (e.g. `ArrayImageDataset`), in NumPy.

    Draws come from `(seed, epoch, batch index)`; the epoch is the wrapped dataset's.

    Args:
        dataset: a PyDataset of `(images, labels)` batches with an `epoch` attribute
            (or none: then epoch 0 and counted by `on_epoch_end`).
        mode: "mixup" or "cutmix".
        num_classes: number of classes.
        alpha: Beta(alpha, alpha) parameter (default per mode).
        seed: seed of the draws.
    """

    def __init__(
        self,
        dataset: Any,
        mode: str,
        num_classes: int,
        alpha: float | None = None,
        seed: int = 0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.alpha = check_mix(mode, alpha)
        if num_classes < 2:
            raise ValueError(f"`num_classes` must be >= 2; got {num_classes}.")
        self.dataset = dataset
        self.mode = mode
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        self._own_epoch = 0

    @property
    def epoch(self) -> int:
        """The epoch of the wrapped dataset."""
        return int(getattr(self.dataset, "epoch", self._own_epoch))

    @epoch.setter
    def epoch(self, value: int) -> None:
        if hasattr(self.dataset, "epoch"):
            self.dataset.epoch = value
        self._own_epoch = int(value)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        images, labels = self.dataset[index][:2]
        rng = np.random.default_rng([self.seed, _MIX_SALT, self.epoch, index])
        return mix_batch_numpy(images, labels, rng, self.mode, self.num_classes, self.alpha)

    def on_epoch_end(self) -> None:
        if hasattr(self.dataset, "on_epoch_end"):
            self.dataset.on_epoch_end()
        if not hasattr(self.dataset, "epoch"):
            self._own_epoch += 1
