"""The data `fit` accepts, read one batch at a time outside `fit`.

`Distiller.fit` looks at the first batch before Keras's own set-up (are there
labels? are the models' outputs logits?), and preparations such as
`FGCR.adapt` run the teacher over labelled data. Both accept what
`keras.Model.fit` accepts: in-memory arrays `(x, y[, sample_weight])` (NumPy
or backend tensors, dicts and lists of them as `x`), a `tf.data.Dataset`, a
`keras.utils.PyDataset`, a Python generator, or any other iterable of batches
(a torch `DataLoader`, a list of `(x, y)` pairs).
"""

from __future__ import annotations

import inspect
import itertools
import sys
from collections.abc import Iterator

import keras
import numpy as np

#: Keras's default batch size for in-memory arrays.
DEFAULT_BATCH_SIZE = 32


def is_tf_dataset(data) -> bool:
    """Whether `data` is a `tf.data.Dataset` (without importing TensorFlow)."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(data, tf.data.Dataset)


def is_array(data) -> bool:
    """Whether `data` is an in-memory array or a dict/list/tuple of them."""
    leaves = keras.tree.flatten(data)
    return bool(leaves) and all(
        isinstance(leaf, np.ndarray) or (hasattr(leaf, "shape") and hasattr(leaf, "__array__"))
        for leaf in leaves
    )


def _host(batch):
    """TensorFlow tensors as NumPy for the other backends; anything else unchanged."""
    tf = sys.modules.get("tensorflow")
    if tf is None or keras.backend.backend() == "tensorflow":
        return batch
    return keras.tree.map_structure(lambda t: t.numpy() if tf.is_tensor(t) else t, batch)


def unpack(batch) -> tuple:
    """`(x, y, sample_weight)` of one batch, as `fit` reads it (`y` None when absent)."""
    return keras.utils.unpack_x_y_sample_weight(_host(batch))


def _slice(data, start: int, stop: int):
    return keras.tree.map_structure(lambda a: a[start:stop], data)


def _length(x) -> int:
    return int(keras.tree.flatten(x)[0].shape[0])


def _array_batches(x, y, sample_weight, batch_size: int) -> Iterator[tuple]:
    for start in range(0, _length(x), batch_size):
        stop = start + batch_size
        yield (
            _slice(x, start, stop),
            None if y is None else _slice(y, start, stop),
            None if sample_weight is None else _slice(sample_weight, start, stop),
        )


def iterate_batches(
    data, y=None, sample_weight=None, batch_size: int | None = None, steps: int | None = None
) -> Iterator[tuple]:
    """Yields `(x, y, sample_weight)` batches of what `fit` accepts.

    Args:
        data: `x` arrays (with `y` given separately), a tuple `(x, y)` or
            `(x, y, sample_weight)` of arrays, a `tf.data.Dataset`, a
            `keras.utils.PyDataset`, or an iterable of batches.
        y: labels for in-memory `x` (None for the other kinds).
        sample_weight: sample weights for in-memory `x`.
        batch_size: batch size for in-memory arrays (32 when None).
        steps: stop after this many batches; all when None.

    Returns:
        An iterator of `(x, y, sample_weight)` tuples; `y` is None for
        batches without labels.

    Example:
        >>> batches = iterate_batches((np.zeros((5, 2)), np.arange(5)), batch_size=2)
        >>> [len(b[1]) for b in batches]
        [2, 2, 1]
    """
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
    if isinstance(data, tuple) and y is None and is_array(data):
        data, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    if y is not None or (not isinstance(data, list) and is_array(data)):
        source = _array_batches(data, y, sample_weight, batch_size)
    elif isinstance(data, keras.utils.PyDataset):
        count = data.num_batches
        if count is None and steps is None:
            raise ValueError("An infinite PyDataset needs `steps`: the number of batches to read.")
        source = (unpack(data[i]) for i in (itertools.count() if count is None else range(count)))
    elif is_tf_dataset(data) or hasattr(data, "__iter__"):
        if is_tf_dataset(data) and steps is None and _is_infinite(data):
            raise ValueError(
                "The tf.data.Dataset repeats forever: pass `steps`, the number of batches to read."
            )
        source = (unpack(batch) for batch in data)
    else:
        raise TypeError(
            f"Expected arrays `(x, y)`, a tf.data.Dataset, a keras.utils.PyDataset or an "
            f"iterable of batches; got {type(data).__name__}."
        )
    for step, batch in enumerate(source):
        if steps is not None and step >= steps:
            break
        yield batch


def _is_infinite(dataset) -> bool:
    import tensorflow as tf

    return int(dataset.cardinality()) == int(tf.data.INFINITE_CARDINALITY)


def peek(x, y=None, sample_weight=None, batch_size: int | None = None):
    """The first batch `fit(x, y)` would see, and `x` to pass on to `fit`.

    A Python generator cannot be read twice: its first batch is taken and a
    generator yielding that batch and then the rest is returned in its place.

    Args:
        x: what is passed to `fit` as `x`.
        y: what is passed as `y`.
        sample_weight: what is passed as `sample_weight`.
        batch_size: `fit`'s batch size (32 when None).

    Returns:
        `(first, x)`: the first batch as `(x, y, sample_weight)` (None when
        the data is empty or of a kind not read here), and the `x` for `fit`.
    """
    if is_array(x):
        if _length(x) == 0:
            return None, x
        batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
        return next(_array_batches(x, y, sample_weight, batch_size)), x
    if isinstance(x, keras.utils.PyDataset):
        if x.num_batches == 0:
            return None, x
        return unpack(x[0]), x
    if is_tf_dataset(x):
        for batch in x.take(1):
            return unpack(batch), x
        return None, x
    if inspect.isgenerator(x):
        try:
            batch = next(x)
        except StopIteration:
            return None, x
        return unpack(batch), _chain(batch, x)
    if hasattr(x, "__iter__") and not isinstance(x, (str, bytes, dict, list, tuple)):
        for batch in x:  # a torch DataLoader or another re-iterable source
            return unpack(batch), x
    return None, x


def _chain(first, rest):
    yield first
    yield from rest


def has_labels(x, y=None) -> bool | None:
    """Whether `fit(x, y)` brings labels, from the data's structure where it can.

    Args:
        x: what is passed to `fit` as `x`.
        y: what is passed as `y`.

    Returns:
        True or False; None when only reading a batch could tell.
    """
    if y is not None:
        return True
    if is_array(x):
        return False
    if is_tf_dataset(x):
        _, labels, _ = keras.utils.unpack_x_y_sample_weight(x.element_spec)
        return labels is not None
    return None
