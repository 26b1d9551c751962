"""TAKD: teacher -> assistant(s) -> student chains of plain KD (Mirzadeh et al., AAAI 2020)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras

from keras_kdcap.distiller import Distiller
from keras_kdcap.policies.base import TemperaturePolicy
from keras_kdcap.policies.fixed import FixedTemperature
from keras_kdcap.validation import check_int_at_least


def distill_chain(
    models: Sequence[keras.Model],
    train_data,
    epochs: int | Sequence[int],
    optimizer_fn: Callable[[], keras.optimizers.Optimizer],
    policy_fn: Callable[[], TemperaturePolicy] = FixedTemperature,
    alpha: float = 0.1,
    beta: float = 0.9,
    temperature_scaling: bool = True,
    metrics=None,
    return_histories: bool = False,
    **fit_kwargs,
):
    """Distils each model of a chain from the one before it, in order.

    `models[0]` is the trained teacher (frozen, never modified); each later
    model is trained by a fresh `Distiller(models[i - 1], models[i])` with a
    fresh optimizer and policy, then serves as the next one's teacher. The
    assistants come back with their `trainable` flag as it was before the
    chain; the teacher stays frozen. Each stage's `fit` advances
    epoch-driven policies (DKD, CTKD) itself.

    Args:
        models: `[teacher, assistant_1, ..., student]`, at least two models.
        train_data: a dataset of `(x, y)` batches, or an `(x, y)` pair of arrays.
        epochs: epochs of each stage: one int for all, or one per stage.
        optimizer_fn: called once per stage for a new optimizer (an optimizer
            object cannot be shared between models).
        policy_fn: called once per stage for a new policy; default
            `FixedTemperature()` (T = 4), plain KD as in the TAKD paper.
        alpha: weight of the student's cross-entropy.
        beta: weight of the KD term.
        temperature_scaling: multiply the KD term by `s^2`.
        metrics: metrics for each `Distiller.compile`, e.g. `["accuracy"]`.
        return_histories: also return each stage's `History`.
        **fit_kwargs: passed to every `Distiller.fit` (`batch_size`,
            `validation_data`, `callbacks`, `verbose`, ...).

    Returns:
        The list of models (the same objects, trained in place), or
        `(models, histories)` with `return_histories=True`.

    Example:
        >>> models = distill_chain(  # doctest: +SKIP
        ...     [resnet110, resnet56, resnet20], train_ds, epochs=240,
        ...     optimizer_fn=lambda: keras.optimizers.SGD(0.05, momentum=0.9))
    """
    models = list(models)
    if len(models) < 2:
        raise ValueError(
            f"`models` must hold a teacher and at least one student; got {len(models)} model(s)."
        )
    if len({id(model) for model in models}) != len(models):
        raise ValueError("`models` must be distinct objects: a model cannot teach itself.")
    stages = len(models) - 1
    if isinstance(epochs, int):
        epochs = [epochs] * stages
    epochs = list(epochs)
    if len(epochs) != stages:
        raise ValueError(
            f"`epochs` must be one int or one per stage ({stages}); got {len(epochs)} values."
        )
    epochs = [check_int_at_least("epochs", value, 1) for value in epochs]
    for name, fn in (("optimizer_fn", optimizer_fn), ("policy_fn", policy_fn)):
        if not callable(fn):
            raise TypeError(f"`{name}` must be a callable returning a new object per stage.")

    trainable = [model.trainable for model in models]
    user_callbacks = list(fit_kwargs.pop("callbacks", None) or [])
    histories = []
    try:
        for stage in range(stages):
            distiller = Distiller(models[stage], models[stage + 1], name=f"takd_stage{stage + 1}")
            distiller.compile(
                optimizer_fn(),
                policy=policy_fn(),
                alpha=alpha,
                beta=beta,
                temperature_scaling=temperature_scaling,
                metrics=metrics,
            )
            callbacks = list(user_callbacks)
            if isinstance(train_data, tuple) and len(train_data) == 2:
                x, y = train_data
                history = distiller.fit(
                    x, y, epochs=epochs[stage], callbacks=callbacks, **fit_kwargs
                )
            else:
                history = distiller.fit(
                    train_data, epochs=epochs[stage], callbacks=callbacks, **fit_kwargs
                )
            histories.append(history)
    finally:
        for model, flag in zip(models[1:], trainable[1:], strict=True):
            model.trainable = flag
    return (models, histories) if return_histories else models
