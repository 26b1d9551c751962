"""KerasHub task models in a Distiller: their preprocessor runs in the input pipeline.

A KerasHub task (`ImageClassifier`, `TextClassifier`, ...) carries a `preprocessor`
that `task.predict(x)` applies and `task(x)` does not. The Distiller calls
`teacher(x)` and `student(x)`, so a model with a preprocessor would silently get
raw inputs (images not resized or rescaled, strings not tokenized). `fit` and
`evaluate` therefore refuse such a model unless the data went through
:func:`preprocessed`, or the user detached the preprocessor (`model.preprocessor =
None`, KerasHub's own way of saying the inputs are already preprocessed).

Example:
    >>> train = keras_kdcap.hub.preprocessed(train, teacher)  # doctest: +SKIP
    >>> Distiller(teacher, student).fit(train)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

#: attribute of a dataset from `preprocessed`: the preprocessors it went through.
PREPROCESSED_ATTR = "kdcap_preprocessed_for"


def preprocessor_of(model: Any) -> Any | None:
    """The KerasHub preprocessor a model carries, or None.

    Args:
        model: any Keras model.

    Returns:
        `model.preprocessor` when it exists and is not None, else None.
    """
    return getattr(model, "preprocessor", None)


def _declared(data: Any) -> tuple:
    return tuple(getattr(data, PREPROCESSED_ATTR, ()))


def preprocessed(
    data: Any,
    model: Any,
    *,
    also_for: Iterable[Any] = (),
    batch_size: int | None = None,
) -> Any:
    """Applies `model.preprocessor` to every batch, in a tf.data pipeline.

    The returned dataset declares itself preprocessed for `model` (and for the models
    in `also_for`), which is what the Distiller's check looks for: apply it last
    (a further `.map`/`.prefetch` returns a new dataset without the declaration).

    Args:
        data: a `tf.data.Dataset` of batches `x`, `(x, y)` or `(x, y, sample_weight)`;
            or in-memory `(x, y)` / `x` (arrays, lists of strings, dicts of arrays),
            batched here with `batch_size`.
        model: a KerasHub task model with a `preprocessor`.
        also_for: other models that take the same preprocessed inputs (e.g. a student
            with the same tokenizer); their own preprocessors are not applied.
        batch_size: batch size for in-memory data (default 32).

    Returns:
        A `tf.data.Dataset` of preprocessed batches (an epoch counter of `data` is kept).

    Raises:
        ValueError: `model` has no preprocessor.
    """
    from keras_kdcap.data._deps import import_tensorflow
    from keras_kdcap.data.pipeline import EPOCH_COUNTER_ATTR, get_epoch_counter

    tf = import_tensorflow()
    preprocessor = preprocessor_of(model)
    if preprocessor is None:
        raise ValueError(
            f"`model` ({type(model).__name__} {getattr(model, 'name', '')!r}) has no "
            "`preprocessor`: there is nothing to apply; feed the data as it is."
        )
    if not isinstance(data, tf.data.Dataset):
        if isinstance(data, list) and data and isinstance(data[0], str):
            data = np.asarray(data)
        if isinstance(data, tuple | list):
            data = tuple(np.asarray(d) if isinstance(d, list) else d for d in data)
        data = tf.data.Dataset.from_tensor_slices(data).batch(batch_size or 32)
    elif batch_size is not None:
        raise ValueError("`batch_size` is for in-memory data; a dataset keeps its own batches.")

    # KerasHub's own `fit`/`predict` step (it passes labels through a Preprocessor)
    step = getattr(model, "preprocess_samples", None) or preprocessor

    def apply(*batch: Any) -> Any:
        return step(*batch)

    out = data.map(apply, num_parallel_calls=tf.data.AUTOTUNE)
    counter = get_epoch_counter(data)
    if counter is not None:
        setattr(out, EPOCH_COUNTER_ATTR, counter)
    covered = (*_declared(data), preprocessor, *(preprocessor_of(m) for m in also_for))
    setattr(out, PREPROCESSED_ATTR, tuple(p for p in covered if p is not None))
    return out


def check_preprocessors(teacher: Any, student: Any, data: Any, argument: str = "x") -> None:
    """Refuses a model whose preprocessor would be skipped on `data`.

    Args:
        teacher: the Distiller's teacher.
        student: the Distiller's student.
        data: what `fit`/`evaluate` got as `argument`.
        argument: the argument's name, for the message.

    Raises:
        ValueError: a model carries a preprocessor and `data` is not declared
            preprocessed for it; the message shows the one-line fix.
    """
    if data is None:
        return
    declared = _declared(data)
    for role, model in (("teacher", teacher), ("student", student)):
        preprocessor = preprocessor_of(model)
        if preprocessor is None or any(p is preprocessor for p in declared):
            continue
        other = "student" if role == "teacher" else "teacher"
        if declared:
            raise ValueError(
                f"`{argument}` went through another model's preprocessor "
                f"(keras_kdcap.hub.preprocessed), not the {role}'s "
                f"({type(model).__name__} {model.name!r}, {type(preprocessor).__name__}). "
                f"If the {role} takes the same preprocessed inputs (e.g. the same "
                f"tokenizer), say so where the pipeline is built:\n"
                f"    {argument} = keras_kdcap.hub.preprocessed(..., {other}, "
                f"also_for=[{role}])\n"
                f"Otherwise the two models need different inputs: give one of them the other's "
                f"preprocessing inside the model (see docs/own_models.md)."
            )
        raise ValueError(
            f"The {role} ({type(model).__name__} {model.name!r}) carries a KerasHub "
            f"preprocessor ({type(preprocessor).__name__}) that the Distiller does not "
            f"apply: it calls `{role}(x)`, not `{role}.predict(x)`, so the batches of "
            f"`{argument}` would reach it unconverted (images not resized or rescaled, text "
            f"not tokenized). Apply it in the input pipeline, as the last step:\n"
            f"    {argument} = keras_kdcap.hub.preprocessed({argument}, {role})\n"
            f"(add `also_for=[{other}]` when the {other} takes the same preprocessed "
            f"inputs, e.g. the same tokenizer). If `{argument}` is already preprocessed, "
            f"set `{role}.preprocessor = None` instead."
        )
