"""Assembly of seeded, epoch-aware tf.data training and evaluation pipelines.

A training dataset built here knows its epoch: each new pass over it (Keras
starts one per epoch, on every backend) yields the next epoch, whose shuffle
order and augmentations are drawn from ``(seed, epoch, index)``. The epoch lives
in a ``tf.Variable`` attached to the dataset; :class:`EpochSync` sets it from
Keras's epoch number, so runs resumed with ``BackupAndRestore`` see the same
data as uninterrupted ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from keras_kdcap.data._deps import import_tensorflow
from keras_kdcap.data.augment import element_seed, shuffle_seed

Tensor = Any
LoadFn = Callable[[Tensor], tuple[Tensor, Tensor]]
MapFn = Callable[[Tensor, Tensor], Tensor]

EPOCH_COUNTER_ATTR = "kdcap_epoch_counter"


def stratified_indices(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` examples of every class, in their original order.

    Args:
        labels: integer labels, shape [N].
        per_class: how many examples to keep per class (all of a class that has fewer).

    Returns:
        Sorted int64 indices into ``labels``.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    labels = np.asarray(labels).reshape(-1)
    picked = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def _options(deterministic: bool) -> Any:
    tf = import_tensorflow()
    options = tf.data.Options()
    options.deterministic = deterministic
    return options


def epoch_dataset(make_epoch: Callable[[Tensor], Any], initial_epoch: int = 0) -> tuple[Any, Any]:
    """A dataset whose n-th pass yields ``make_epoch(initial_epoch + n)``.

    Args:
        make_epoch: maps an int64 scalar epoch to that epoch's ``tf.data.Dataset``.
        initial_epoch: epoch of the first pass.

    Returns:
        ``(dataset, counter)``: the dataset and the int64 ``tf.Variable`` holding the
        epoch of the next pass.
    """
    tf = import_tensorflow()
    counter = tf.Variable(initial_epoch, dtype=tf.int64, trainable=False, name="kdcap_epoch")
    start = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64))
    ds = start.map(lambda _: counter.assign_add(1) - 1).flat_map(make_epoch)
    return ds, counter


def get_epoch_counter(dataset: Any) -> Any | None:
    """The epoch variable of a dataset built by this module, or None.

    Args:
        dataset: a ``tf.data.Dataset``.

    Returns:
        The ``tf.Variable`` or None (the attribute is lost by further transformations).
    """
    return getattr(dataset, EPOCH_COUNTER_ATTR, None)


def set_epoch(dataset: Any, epoch: int) -> None:
    """Make the next pass over an epoch-aware dataset yield ``epoch``.

    Args:
        dataset: a training dataset from this module.
        epoch: the epoch (0-based).

    Raises:
        ValueError: the dataset carries no epoch counter.
    """
    counter = get_epoch_counter(dataset)
    if counter is None:
        raise ValueError("this dataset carries no epoch counter (not built by keras_kdcap.data)")
    counter.assign(epoch)


class EpochSync(keras.callbacks.Callback):
    """Set an epoch-aware dataset's epoch from Keras's at the start of every epoch.

    Args:
        dataset: a training dataset from this module.
    """

    def __init__(self, dataset: Any) -> None:
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        set_epoch(self.dataset, epoch)


def _finish(ds: Any, batch_size: int, drop_remainder: bool, num: int, deterministic: bool) -> Any:
    tf = import_tensorflow()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    steps = num // batch_size if drop_remainder else math.ceil(num / batch_size)
    ds = ds.apply(tf.data.experimental.assert_cardinality(steps))
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(deterministic))


def _training_epochs(
    make_epoch: Callable[[Tensor], Any],
    initial_epoch: int,
    epoch: int | None,
    batch_size: int,
    drop_remainder: bool,
    num_examples: int,
    deterministic: bool,
) -> Any:
    """Batch a training pipeline: one fixed ``epoch``, or epoch-aware from ``initial_epoch``.

    Args:
        make_epoch: maps an int64 scalar epoch to that epoch's unbatched dataset.
        initial_epoch, epoch, batch_size, drop_remainder, num_examples, deterministic: the
            options of :func:`indexed_train_dataset`.

    Returns:
        The batched dataset; unless ``epoch`` is given it carries its epoch counter.
    """
    tf = import_tensorflow()
    if epoch is not None:
        ds = make_epoch(tf.constant(epoch, tf.int64))
        return _finish(ds, batch_size, drop_remainder, num_examples, deterministic)
    ds, counter = epoch_dataset(make_epoch, initial_epoch)
    ds = _finish(ds, batch_size, drop_remainder, num_examples, deterministic)
    setattr(ds, EPOCH_COUNTER_ATTR, counter)
    return ds


def indexed_train_dataset(
    num_examples: int,
    load_fn: LoadFn,
    map_fn: MapFn,
    *,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    drop_remainder: bool = False,
    initial_epoch: int = 0,
    epoch: int | None = None,
    deterministic: bool = True,
) -> Any:
    """Training pipeline over examples that can be loaded by index (arrays, file lists).

    Args:
        num_examples: number of examples; indices run over ``range(num_examples)``.
        load_fn: maps an int64 index to ``(image, label)`` tensors.
        map_fn: maps ``(image, element_seed)`` to the final float32 image.
        batch_size: examples per batch.
        seed: seed of the shuffle and of the augmentations.
        shuffle: shuffle each epoch (a stateless permutation drawn from ``(seed, epoch)``).
        drop_remainder: drop the last incomplete batch.
        initial_epoch: epoch of the first pass (when ``epoch`` is None).
        epoch: if given, every pass yields this one epoch (to replay it exactly).
        deterministic: set ``tf.data.Options.deterministic``.

    Returns:
        A ``tf.data.Dataset`` of ``(image, int32 label)`` batches; unless ``epoch`` is
        given it carries an epoch counter (see :class:`EpochSync`).
    """
    tf = import_tensorflow()

    def make_epoch(ep: Tensor) -> Any:
        order = tf.range(num_examples, dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(order, seed=shuffle_seed(seed, ep))

        def load(index: Tensor) -> tuple[Tensor, Tensor]:
            image, label = load_fn(index)
            image = map_fn(image, element_seed(seed, ep, index))
            return image, tf.cast(label, tf.int32)

        return tf.data.Dataset.from_tensor_slices(order).map(
            load, num_parallel_calls=tf.data.AUTOTUNE
        )

    return _training_epochs(
        make_epoch, initial_epoch, epoch, batch_size, drop_remainder, num_examples, deterministic
    )


def streaming_train_dataset(
    source: Any,
    map_fn: MapFn,
    *,
    num_examples: int,
    batch_size: int,
    decode_fn: Callable[[Tensor], Tensor] | None = None,
    seed: int = 0,
    shuffle_buffer: int = 4096,
    drop_remainder: bool = False,
    initial_epoch: int = 0,
    epoch: int | None = None,
    deterministic: bool = True,
) -> Any:
    """Training pipeline over a dataset of ``(image, label)`` that can only be streamed.

    The index of an example is its position in ``source``. The shuffle is stateless:
    consecutive windows of ``shuffle_buffer`` examples are each permuted by a seed
    drawn from ``(seed, epoch, window)`` (``Dataset.shuffle`` would mix in TensorFlow's
    global seed). Windows are batched, so ``source``'s elements must have fixed
    shapes: stream encoded images (e.g. tfds's ``SkipDecoding``) and pass ``decode_fn``.

    Args:
        source: a ``tf.data.Dataset`` of ``(image, label)`` in a fixed order.
        map_fn: maps ``(image, element_seed)`` to the final float32 image.
        num_examples: size of ``source`` (for the dataset's cardinality).
        batch_size: examples per batch.
        decode_fn: maps a source image (e.g. JPEG bytes) to an image, after shuffling.
        seed: seed of the shuffle and of the augmentations.
        shuffle_buffer: window size of the shuffle; 0 or 1 disables shuffling.
        drop_remainder: drop the last incomplete batch.
        initial_epoch: epoch of the first pass (when ``epoch`` is None).
        epoch: if given, every pass yields this one epoch.
        deterministic: set ``tf.data.Options.deterministic``.

    Returns:
        A ``tf.data.Dataset`` of ``(image, int32 label)`` batches, epoch-aware as in
        :func:`indexed_train_dataset`.
    """
    tf = import_tensorflow()

    def make_epoch(ep: Tensor) -> Any:
        ds = source.enumerate()
        if shuffle_buffer > 1:
            epoch_seed = shuffle_seed(seed, ep)

            def permute(window: Tensor, block: Any) -> Any:
                window_seed = tf.random.experimental.stateless_fold_in(epoch_seed, window)
                size = tf.shape(tf.nest.flatten(block)[0])[0]
                perm = tf.random.experimental.stateless_shuffle(tf.range(size), seed=window_seed)
                return tf.nest.map_structure(lambda t: tf.gather(t, perm), block)

            ds = ds.batch(shuffle_buffer).enumerate().map(permute).unbatch()

        def prep(index: Tensor, example: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
            image, label = example
            if decode_fn is not None:
                image = decode_fn(image)
            return map_fn(image, element_seed(seed, ep, index)), tf.cast(label, tf.int32)

        return ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE)

    return _training_epochs(
        make_epoch, initial_epoch, epoch, batch_size, drop_remainder, num_examples, deterministic
    )


def eval_dataset(
    num_examples: int,
    load_fn: LoadFn,
    preprocess_fn: Callable[[Tensor], Tensor],
    *,
    batch_size: int,
    deterministic: bool = True,
) -> Any:
    """Evaluation pipeline: examples in index order, preprocessed, batched.

    Args:
        num_examples: number of examples.
        load_fn: maps an int64 index to ``(image, label)``.
        preprocess_fn: maps an image to the final float32 image.
        batch_size: examples per batch.
        deterministic: set ``tf.data.Options.deterministic``.

    Returns:
        A ``tf.data.Dataset`` of ``(image, int32 label)`` batches.
    """
    tf = import_tensorflow()

    def load(index: Tensor) -> tuple[Tensor, Tensor]:
        image, label = load_fn(index)
        return preprocess_fn(image), tf.cast(label, tf.int32)

    ds = tf.data.Dataset.range(num_examples).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return _finish(ds, batch_size, False, num_examples, deterministic)


def indexed_datasets(
    train: tuple[int, LoadFn, MapFn],
    evaluation: tuple[int, LoadFn, Callable[[Tensor], Tensor]],
    *,
    batch_size: int,
    eval_batch_size: int | None = None,
    **train_options: Any,
) -> tuple[Any, Any]:
    """A training pipeline and an evaluation pipeline over index-loadable examples.

    Args:
        train: ``(num_examples, load_fn, map_fn)`` of :func:`indexed_train_dataset`.
        evaluation: ``(num_examples, load_fn, preprocess_fn)`` of :func:`eval_dataset`.
        batch_size: training batch size.
        eval_batch_size: evaluation batch size (default: ``batch_size``).
        **train_options: the keyword options of :func:`indexed_train_dataset`
            (``seed``, ``shuffle``, ``drop_remainder``, ``initial_epoch``,
            ``epoch``, ``deterministic``; ``deterministic`` applies to both).

    Returns:
        ``(train_ds, eval_ds)``.
    """
    train_ds = indexed_train_dataset(*train, batch_size=batch_size, **train_options)
    eval_ds = eval_dataset(
        *evaluation,
        batch_size=eval_batch_size or batch_size,
        deterministic=train_options.get("deterministic", True),
    )
    return train_ds, eval_ds


def labelled_datasets(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    loader: Callable[[np.ndarray, np.ndarray], LoadFn],
    train_map: MapFn,
    test_map: Callable[[Tensor], Tensor],
    *,
    per_class: int | None = None,
    test_per_class: int | None = None,
    batch_size: int,
    eval_batch_size: int | None = None,
    **train_options: Any,
) -> tuple[Any, Any]:
    """:func:`indexed_datasets` over ``(items, labels)`` arrays, optionally subset per class.

    Args:
        train: ``(items, labels)`` of the training split; items are images, file paths, ...
        test: the same for the test (evaluation) split.
        loader: maps ``(items, labels)`` to a ``load_fn`` (e.g. :func:`array_loader`).
        train_map: maps ``(image, element_seed)`` to the final training image.
        test_map: maps an image to the final test image.
        per_class: keep only the first N training examples of each class.
        test_per_class: keep only the first N test examples of each class.
        batch_size: training batch size.
        eval_batch_size: test batch size (default: ``batch_size``).
        **train_options: the keyword options of :func:`indexed_train_dataset`.

    Returns:
        ``(train_ds, test_ds)``.
    """
    splits = []
    for (items, labels), keep_per_class in ((train, per_class), (test, test_per_class)):
        if keep_per_class is not None:
            keep = stratified_indices(labels, keep_per_class)
            items, labels = items[keep], labels[keep]
        splits.append((len(items), loader(items, labels)))
    return indexed_datasets(
        (*splits[0], train_map),
        (*splits[1], test_map),
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        **train_options,
    )


def streaming_eval_dataset(
    source: Any,
    preprocess_fn: Callable[[Tensor], Tensor],
    *,
    num_examples: int,
    batch_size: int,
    deterministic: bool = True,
) -> Any:
    """Evaluation pipeline over a streamed dataset of ``(image, label)``.

    Args:
        source: a ``tf.data.Dataset`` of ``(image, label)``.
        preprocess_fn: maps an image to the final float32 image.
        num_examples: size of ``source`` (for the dataset's cardinality).
        batch_size: examples per batch.
        deterministic: set ``tf.data.Options.deterministic``.

    Returns:
        A ``tf.data.Dataset`` of ``(image, int32 label)`` batches.
    """
    tf = import_tensorflow()
    ds = source.map(
        lambda image, label: (preprocess_fn(image), tf.cast(label, tf.int32)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return _finish(ds, batch_size, False, num_examples, deterministic)


def array_loader(images: np.ndarray, labels: np.ndarray) -> LoadFn:
    """A ``load_fn`` that gathers from in-memory arrays.

    Args:
        images: array [N, H, W, C].
        labels: array [N].

    Returns:
        A function mapping an int64 index to ``(image, label)`` tensors.
    """
    tf = import_tensorflow()
    images_t = tf.constant(images)
    labels_t = tf.constant(np.asarray(labels).reshape(-1).astype(np.int32))

    def load(index: Tensor) -> tuple[Tensor, Tensor]:
        return tf.gather(images_t, index), tf.gather(labels_t, index)

    return load
