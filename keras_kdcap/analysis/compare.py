"""Tidy per-teacher tables: distinctness, tau*, accuracy and feature geometry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from keras_kdcap.analysis._arrays import to_numpy
from keras_kdcap.analysis.collect import Outputs, collect_outputs
from keras_kdcap.analysis.distinctness import non_target_stats, tau_star_stats
from keras_kdcap.analysis.geometry import feature_geometry

_TAU_KEYS = ("mean", "median", "q10", "q90", "at_min", "at_max", "median_correct")


def classifier_kernel(model: keras.Model) -> np.ndarray | None:
    """The `[D, C]` kernel of the model's `"classifier"` Dense layer, or None.

    Args:
        model: a Keras model.

    Returns:
        float64 numpy kernel, or None if there is no such layer.
    """
    try:
        layer = model.get_layer("classifier")
    except ValueError:
        return None
    kernel = getattr(layer, "kernel", None)
    return None if kernel is None else to_numpy(kernel, np.float64)


def teacher_rows(
    name: str,
    outputs: Outputs,
    temperatures: Sequence[float] = (1.0, 4.0),
    kernel: Any = None,
    params: int | None = None,
    tau_star: Mapping[str, Any] | None = None,
    isats_options: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Rows of the tidy table for one teacher: one per temperature.

    Each row holds the `non_target_stats` at its temperature plus the
    teacher-level columns (repeated on every row): `teacher`, `params`,
    `tau_star_*` summaries of the ISATS temperature and the feature angles.

    Args:
        name: teacher name.
        outputs: `collect_outputs` result of the teacher.
        temperatures: temperatures of the rows.
        kernel: optional `[D, C]` classifier kernel (for the weight angle).
        params: optional parameter count.
        tau_star: a precomputed `tau_star_stats` result (computed if None).
        isats_options: keyword arguments of `tau_star_stats` when computing it.

    Returns:
        List of row dicts (JSON-serialisable floats and ints).
    """
    if tau_star is None:
        tau_star = tau_star_stats(outputs.logits, outputs.labels, **dict(isats_options or {}))
    shared: dict[str, Any] = {"teacher": name, "params": params}
    shared.update({f"tau_star_{key}": tau_star[key] for key in _TAU_KEYS})
    if outputs.features is not None:
        shared.update(
            feature_geometry(
                outputs.features,
                outputs.labels,
                classifier_kernel=kernel,
                num_classes=outputs.logits.shape[-1],
            )
        )
    rows = []
    for temperature in temperatures:
        row = dict(shared)
        row.update(non_target_stats(outputs.logits, outputs.labels, temperature))
        rows.append(row)
    return rows


def compare_teachers(
    teachers: Mapping[str, keras.Model],
    dataset: Any,
    temperatures: Sequence[float] = (1, 4),
    batch_size: int = 256,
    isats_options: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Tidy table of the dark-knowledge statistics of several teachers.

    Runs every teacher over `dataset` once (`collect_outputs`) and returns one
    row per teacher x temperature with `non_target_stats` (variance, std,
    derived_average, target_probability, accuracy), the ISATS `tau_star_*`
    summaries, the feature angles (`feature_geometry`) and `params`. For the
    teacher-by-teacher affinity matrices, pass the logits to
    `pairwise_agreement`.

    Args:
        teachers: name -> Keras model (logits output).
        dataset: `(x, y)` arrays or an iterable of batches (see
            `collect_outputs`); must yield the same samples in the same order
            on every pass.
        temperatures: temperatures of the rows.
        batch_size: batch size for array input.
        isats_options: keyword arguments of `tau_star_stats`.

    Returns:
        List of row dicts, teachers in the given order, temperatures inner.

    Example:
        >>> import keras, numpy as np
        >>> inputs = keras.Input((4,))
        >>> hidden = keras.layers.Dense(3, name="hidden")(inputs)
        >>> model = keras.Model(inputs, keras.layers.Dense(5, name="classifier")(hidden))
        >>> rows = compare_teachers({"tiny": model}, (np.ones((8, 4)), np.arange(8) % 5))
        >>> [(r["teacher"], r["temperature"]) for r in rows]
        [('tiny', 1.0), ('tiny', 4.0)]
    """
    rows = []
    for name, model in teachers.items():
        outputs = collect_outputs(model, dataset, batch_size)
        rows.extend(
            teacher_rows(
                name,
                outputs,
                temperatures,
                kernel=classifier_kernel(model),
                params=int(model.count_params()),
                isats_options=isats_options,
            )
        )
    return rows
