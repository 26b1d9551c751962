"""Running a model over a dataset to collect logits, penultimate features and labels."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import keras
import numpy as np

from keras_kdcap.analysis._arrays import labels_to_numpy, to_numpy


class Outputs(NamedTuple):
    """What `collect_outputs` returns (a tuple: `logits, features, labels = ...`)."""

    logits: np.ndarray
    """float32 `[N, C]` logits."""
    features: np.ndarray | None
    """float32 `[N, D]` penultimate features, None if the model has no "classifier"."""
    labels: np.ndarray
    """int64 `[N]` labels."""


def _fallback_feature_model(model: keras.Model) -> keras.Model | None:
    """`(logits, input of "classifier")` without the zoo; None if there is no classifier."""
    try:
        classifier = model.get_layer("classifier")
    except ValueError:
        return None
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, (classifier.output, classifier.input))


def features_and_logits_model(model: keras.Model) -> keras.Model | None:
    """A model returning `(logits, features)` from one forward pass, sharing weights.

    Uses the zoo's `keras_kdcap.models.feature_model` when the zoo is
    installed, else the same construction here: the features are the input of
    the layer named `"classifier"`.

    Args:
        model: a functional Keras model.

    Returns:
        The two-output model, or None if `model` has no layer `"classifier"`.
    """
    try:
        from keras_kdcap.models import feature_model
    except ImportError:
        return _fallback_feature_model(model)
    try:
        return feature_model(model)
    except ValueError:
        return None


def iterate_batches(dataset: Any, batch_size: int = 256) -> Iterator[tuple[Any, Any]]:
    """Yields `(x, y)` batches from arrays, a `tf.data.Dataset`, a `PyDataset` or any iterable.

    Args:
        dataset: a tuple `(x, y)` of arrays (batched here by `batch_size`), a
            `keras.utils.PyDataset`, or an iterable of `(x, y)` or
            `(x, y, sample_weight)` batches (`tf.data.Dataset`, torch
            `DataLoader`, a list, a generator).
        batch_size: batch size for array input.

    Yields:
        `(x, y)` pairs of arrays or tensors.
    """
    if isinstance(dataset, tuple) and len(dataset) in (2, 3) and not isinstance(dataset[0], tuple):
        x, y = dataset[0], dataset[1]
        if len(x) != len(y):
            raise ValueError(f"`x` and `y` differ in length: {len(x)} and {len(y)}.")
        for start in range(0, len(x), batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]
        return
    if isinstance(dataset, keras.utils.PyDataset):
        batches: Iterable[Any] = (dataset[i] for i in range(len(dataset)))
    else:
        batches = dataset
    for batch in batches:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError(
                "each batch must be `(x, y)` or `(x, y, sample_weight)`; got "
                f"{type(batch).__name__}."
            )
        yield batch[0], batch[1]


def _pad_batch(x: Any, full_size: int | None) -> tuple[Any, int]:
    """Pads a short last batch to `full_size` rows (repeating its last row).

    One batch shape for the whole pass: no retracing (TensorFlow) or
    recompilation (JAX) for the remainder. Non-array inputs (dicts) are left
    as they are.

    Returns:
        `(x, number of real rows)`.
    """
    if isinstance(x, dict):
        return x, len(next(iter(x.values())))
    x = to_numpy(x)
    size = len(x)
    if full_size is None or size >= full_size:
        return x, size
    filler = np.repeat(x[-1:], full_size - size, axis=0)
    return np.concatenate([x, filler]), size


def collect_outputs(model: keras.Model, dataset: Any, batch_size: int = 256) -> Outputs:
    """Logits, penultimate features and labels of a model over a whole dataset.

    Runs in inference mode (`predict_on_batch`, BatchNorm statistics frozen),
    one forward pass per batch for both logits and features.

    Args:
        model: a Keras model with float logits; features are the input of its
            `"classifier"` layer (every zoo model has one).
        dataset: `(x, y)` arrays or an iterable of `(x, y[, w])` batches, see
            `iterate_batches`. Labels may be sparse or one-hot.
        batch_size: batch size for array input.

    Returns:
        `Outputs(logits, features, labels)`; `features` is None when the model
        has no `"classifier"` layer.

    Example:
        >>> import keras, numpy as np
        >>> inputs = keras.Input((4,))
        >>> hidden = keras.layers.Dense(3, name="hidden")(inputs)
        >>> model = keras.Model(inputs, keras.layers.Dense(5, name="classifier")(hidden))
        >>> out = collect_outputs(model, (np.zeros((6, 4)), np.arange(6) % 5))
        >>> out.logits.shape, out.features.shape
        ((6, 5), (6, 3))
    """
    two_outputs = features_and_logits_model(model)
    logits, features, labels = [], [], []
    full_size = None
    for x, y in iterate_batches(dataset, batch_size):
        x, size = _pad_batch(x, full_size)
        full_size = full_size or size
        if two_outputs is not None:
            batch_logits, batch_features = two_outputs.predict_on_batch(x)
            features.append(to_numpy(batch_features, np.float32)[:size])
        else:
            batch_logits = model.predict_on_batch(x)
            if isinstance(batch_logits, dict):
                batch_logits = batch_logits["logits"]
        logits.append(to_numpy(batch_logits, np.float32)[:size])
        labels.append(to_numpy(y))
    if not logits:
        raise ValueError("`dataset` yielded no batches.")
    logits_array = np.concatenate(logits)
    num_classes = logits_array.shape[-1]
    label_array = np.concatenate([labels_to_numpy(y, num_classes) for y in labels])
    return Outputs(
        logits=logits_array,
        features=np.concatenate(features) if features else None,
        labels=label_array,
    )
