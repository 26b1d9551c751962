"""Per-image augmentation ops for tf.data, driven by explicit stateless seeds.

Every random choice is drawn from a seed derived from ``(seed, epoch, index)``:
the same image gets the same crop in the same epoch of every run with that seed,
and a different one in the next epoch. Offsets are drawn explicitly (not inside
``tf.image.stateless_random_crop``) so that tests and teacher-logit caches can
recompute them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from keras_kdcap.data._deps import import_tensorflow

# Salts separate the augmentation and shuffling streams drawn from one user seed.
_AUGMENT_SALT = 0x6B64_6361
_SHUFFLE_SALT = 0x7368_7566

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Tensor = Any  # a tf.Tensor; TensorFlow is imported lazily.


def _fold(seed_pair: Tensor, value: Any) -> Tensor:
    tf = import_tensorflow()
    return tf.random.experimental.stateless_fold_in(seed_pair, tf.cast(value, tf.int64))


def element_seed(seed: int | Tensor, epoch: int | Tensor, index: int | Tensor) -> Tensor:
    """Stateless seed of one image in one epoch.

    Args:
        seed: the run's seed.
        epoch: the epoch (0-based).
        index: the image's index in its split (not its position in the shuffled order).

    Returns:
        An int64 tensor of shape [2] for the ``tf.random.stateless_*`` ops.
    """
    tf = import_tensorflow()
    base = tf.stack([tf.cast(seed, tf.int64), tf.constant(_AUGMENT_SALT, tf.int64)])
    return _fold(_fold(base, epoch), index)


def shuffle_seed(seed: int | Tensor, epoch: int | Tensor) -> Tensor:
    """Stateless seed of one epoch's shuffle.

    Args:
        seed: the run's seed.
        epoch: the epoch (0-based).

    Returns:
        An int64 tensor of shape [2].
    """
    tf = import_tensorflow()
    base = tf.stack([tf.cast(seed, tf.int64), tf.constant(_SHUFFLE_SALT, tf.int64)])
    return _fold(base, epoch)


def crop_flip_params(seed_pair: Tensor, pad: int = 4) -> tuple[Tensor, Tensor, Tensor]:
    """Offsets of a padded random crop and the flip decision for one image.

    Args:
        seed_pair: the image's seed, from :func:`element_seed`.
        pad: padding on each side; offsets lie in ``[0, 2 * pad]``.

    Returns:
        ``(offset_y, offset_x, flip)``: two int32 scalars and a bool scalar.
    """
    tf = import_tensorflow()
    offsets = tf.random.stateless_uniform(
        [2], seed=seed_pair, minval=0, maxval=2 * pad + 1, dtype=tf.int32
    )
    flip = tf.random.stateless_uniform([], seed=_fold(seed_pair, 1)) < 0.5
    return offsets[0], offsets[1], flip


def pad_crop_flip(
    image: Tensor, offset_y: Tensor, offset_x: Tensor, flip: Tensor, pad: int = 4
) -> Tensor:
    """Zero-pad an HWC image, crop it back to its size at the offsets, flip it if asked.

    Args:
        image: an image [H, W, C] of any dtype.
        offset_y: top of the crop in the padded image.
        offset_x: left of the crop in the padded image.
        flip: whether to mirror the crop left-right.
        pad: zero padding on each side.

    Returns:
        The augmented image, same shape and dtype as ``image``.
    """
    tf = import_tensorflow()
    height, width = image.shape[0], image.shape[1]
    if height is None or width is None:
        height, width = tf.shape(image)[0], tf.shape(image)[1]
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    crop = tf.image.crop_to_bounding_box(padded, offset_y, offset_x, height, width)
    return tf.cond(flip, lambda: tf.reverse(crop, axis=[1]), lambda: crop)


def cifar_augment(image: Tensor, seed_pair: Tensor, pad: int = 4) -> Tensor:
    """The CIFAR recipe: random crop with zero padding, then random horizontal flip.

    Args:
        image: an image [H, W, C].
        seed_pair: the image's seed, from :func:`element_seed`.
        pad: zero padding on each side (4 for 32x32 images).

    Returns:
        The augmented image, same shape and dtype.
    """
    offset_y, offset_x, flip = crop_flip_params(seed_pair, pad)
    return pad_crop_flip(image, offset_y, offset_x, flip, pad)


def normalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Scale pixel values in [0, 255] to [0, 1], then standardise each channel.

    Args:
        image: an image [..., C] with values in [0, 255] (uint8 or float).
        mean: per-channel mean of the [0, 1] images.
        std: per-channel standard deviation of the [0, 1] images.

    Returns:
        A float32 image, ``(image / 255 - mean) / std``.
    """
    tf = import_tensorflow()
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def random_resized_crop(
    image: Tensor,
    seed_pair: Tensor,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> Tensor:
    """Inception-style crop: a random area and aspect ratio, resized to ``size``, maybe flipped.

    Args:
        image: an image [H, W, C] with values in [0, 255].
        seed_pair: the image's seed, from :func:`element_seed`.
        size: side of the square output.
        scale: range of the crop's area as a fraction of the image's.
        ratio: range of the crop's aspect ratio (width / height).
        flip: whether to also flip left-right with probability 1/2.

    Returns:
        A float32 image [size, size, C] with values in [0, 255].
    """
    tf = import_tensorflow()
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed_pair,
        min_object_covered=scale[0],
        aspect_ratio_range=ratio,
        area_range=scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, crop_size)
    out = tf.image.resize(crop, [size, size], method="bilinear", antialias=True)
    if flip:
        do_flip = tf.random.stateless_uniform([], seed=_fold(seed_pair, 1)) < 0.5
        out = tf.cond(do_flip, lambda: tf.reverse(out, axis=[1]), lambda: out)
    return out


def center_crop_resize(image: Tensor, size: int, crop_fraction: float = 0.875) -> Tensor:
    """Resize the shorter side to ``size / crop_fraction``, then take the central square.

    Args:
        image: an image [H, W, C] with values in [0, 255].
        size: side of the square output.
        crop_fraction: fraction of the resized shorter side kept (0.875: 256 -> 224).

    Returns:
        A float32 image [size, size, C] with values in [0, 255].
    """
    tf = import_tensorflow()
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    short_side = tf.reduce_min(shape)
    target = tf.math.ceil(size / crop_fraction)
    new_shape = tf.maximum(tf.cast(tf.round(shape * target / short_side), tf.int32), size)
    resized = tf.image.resize(image, new_shape, method="bilinear", antialias=True)
    offset = (new_shape - size) // 2
    return tf.image.crop_to_bounding_box(resized, offset[0], offset[1], size, size)


def resize_crop_flip(image: Tensor, seed_pair: Tensor, size: int, pad: int) -> Tensor:
    """Resize to ``size`` x ``size`` when needed, then apply :func:`cifar_augment`.

    Args:
        image: an image [H, W, C] with values in [0, 255].
        seed_pair: the image's seed, from :func:`element_seed`.
        size: side of the square output.
        pad: zero padding of the random crop.

    Returns:
        A float32 image [size, size, C] with values in [0, 255].
    """
    return cifar_augment(resize_square(image, size), seed_pair, pad)


def resize_square(image: Tensor, size: int) -> Tensor:
    """Resize an image to ``size`` x ``size`` (no-op cast when it already has that size).

    Args:
        image: an image [H, W, C] with values in [0, 255].
        size: side of the square output.

    Returns:
        A float32 image [size, size, C].
    """
    tf = import_tensorflow()
    if image.shape[0] == size and image.shape[1] == size:
        return tf.cast(image, tf.float32)
    return tf.image.resize(image, [size, size], method="bilinear", antialias=True)
