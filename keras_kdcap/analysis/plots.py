"""Figures of the dark-knowledge analysis, saved as PNG.

matplotlib is imported inside each function (`pip install keras-kdcap[plot]`),
and only its object-oriented `Figure` API is used: no pyplot, no global
backend switch, so the functions are safe in scripts, tests and notebooks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _figure(width: float = 6.0, height: float = 4.0):
    """A new matplotlib Figure and its axes, or a clear ImportError."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "keras_kdcap.analysis.plots needs matplotlib: pip install keras-kdcap[plot]"
        ) from err
    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.add_subplot()


def _save(figure, path: str | os.PathLike) -> str:
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def _finish(figure, axes, path: str | os.PathLike, xlabel: str, ylabel: str, title: str) -> str:
    """Label the axes, add the title and a legend, and save the figure to `path`."""
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(fontsize="small")
    return _save(figure, path)


def _teacher_order(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    names: list[str] = []
    for row in rows:
        if row["teacher"] not in names:
            names.append(row["teacher"])
    return names


def plot_variance_vs_temperature(
    rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, metric: str = "variance"
) -> str:
    """Non-target variance (or `std`) against temperature, one line per teacher.

    Args:
        rows: tidy rows with `teacher`, `temperature` and `metric` (e.g. from
            `compare_teachers`).
        path: PNG file to write.
        metric: row key on the y axis, `"variance"` or `"std"`.

    Returns:
        The path written.
    """
    figure, axes = _figure()
    for name in _teacher_order(rows):
        mine = sorted((r for r in rows if r["teacher"] == name), key=lambda r: r["temperature"])
        axes.plot([r["temperature"] for r in mine], [r[metric] for r in mine], "o-", label=name)
    temperatures = sorted({r["temperature"] for r in rows})
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xticks(temperatures, labels=[f"{t:g}" for t in temperatures])
    axes.minorticks_off()
    title = "Non-target distinctness vs temperature"
    return _finish(figure, axes, path, "temperature", f"mean non-target {metric}", title)


def plot_variance_vs_size(
    rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, metric: str = "variance"
) -> str:
    """Non-target variance (or `std`) against teacher parameters, one line per temperature.

    Args:
        rows: tidy rows with `teacher`, `params`, `temperature` and `metric`.
        path: PNG file to write.
        metric: row key on the y axis.

    Returns:
        The path written.
    """
    figure, axes = _figure()
    for temperature in sorted({r["temperature"] for r in rows}):
        mine = sorted(
            (r for r in rows if r["temperature"] == temperature), key=lambda r: r["params"]
        )
        axes.plot(
            [r["params"] for r in mine],
            [r[metric] for r in mine],
            "o-",
            label=f"T = {temperature:g}",
        )
    for row in rows:
        if row["temperature"] == min(r["temperature"] for r in rows):
            axes.annotate(row["teacher"], (row["params"], row[metric]), fontsize="x-small")
    axes.set_xscale("log")
    axes.set_yscale("log")
    title = "Non-target distinctness vs teacher size"
    return _finish(figure, axes, path, "teacher parameters", f"mean non-target {metric}", title)


def plot_agreement_heatmap(
    names: Sequence[str],
    matrix: Any,
    path: str | os.PathLike,
    title: str = "Spearman rho of non-target ranks",
) -> str:
    """Teacher-by-teacher heat map of an agreement matrix (e.g. Spearman).

    Args:
        names: teacher names, in matrix order.
        matrix: `[T, T]` values.
        path: PNG file to write.
        title: figure title.

    Returns:
        The path written.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    size = 1.5 + 0.6 * len(names)
    figure, axes = _figure(size + 1.0, size)
    image = axes.imshow(matrix, vmin=min(0.0, np.nanmin(matrix)), vmax=1.0, cmap="viridis")
    axes.set_xticks(range(len(names)), labels=names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), labels=names)
    for i in range(len(names)):
        for j in range(len(names)):
            axes.text(
                j,
                i,
                f"{matrix[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize="x-small",
                color="white" if matrix[i, j] < 0.6 else "black",
            )
    axes.set_title(title, fontsize="medium")
    figure.colorbar(image, ax=axes)
    return _save(figure, path)


def plot_tau_histogram(
    tau_star: Mapping[str, Any],
    path: str | os.PathLike,
    min_temperature: float = 0.5,
    max_temperature: float = 20.0,
    bins: int = 32,
    title: str = "ISATS temperature distribution",
) -> str:
    """Histograms of the ISATS temperature tau*(x), one per teacher, log-spaced bins.

    Args:
        tau_star: teacher name -> `[N]` tau* values.
        path: PNG file to write.
        min_temperature: lower end of the bins.
        max_temperature: upper end of the bins.
        bins: number of bins.
        title: figure title.

    Returns:
        The path written.
    """
    edges = np.geomspace(min_temperature, max_temperature, bins + 1)
    figure, axes = _figure()
    for name, values in tau_star.items():
        axes.hist(
            np.asarray(values, dtype=np.float64),
            bins=edges,
            histtype="step",
            label=name,
            density=False,
        )
    axes.set_xscale("log")
    return _finish(figure, axes, path, "tau* (argmax of non-target variance)", "samples", title)


def plot_angles_vs_size(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> str:
    """Intra- and inter-class feature angles against teacher parameters.

    Args:
        rows: tidy rows with `teacher`, `params`, `intra_class_angle`,
            `inter_class_angle` and optionally `inter_class_weight_angle`
            (one row per teacher is used).
        path: PNG file to write.

    Returns:
        The path written.
    """
    per_teacher = {}
    for row in rows:
        per_teacher.setdefault(row["teacher"], row)
    ordered = sorted(per_teacher.values(), key=lambda r: r["params"])
    figure, axes = _figure()
    labels = {
        "intra_class_angle": "intra-class (sample to class mean)",
        "inter_class_angle": "inter-class (class means)",
        "inter_class_weight_angle": "inter-class (classifier weights)",
    }
    for key, label in labels.items():
        if all(key in r for r in ordered):
            axes.plot([r["params"] for r in ordered], [r[key] for r in ordered], "o-", label=label)
    for row in ordered:
        axes.annotate(row["teacher"], (row["params"], row["intra_class_angle"]), fontsize="x-small")
    axes.set_xscale("log")
    title = "Feature geometry vs teacher size"
    return _finish(figure, axes, path, "teacher parameters", "mean angle (degrees)", title)
