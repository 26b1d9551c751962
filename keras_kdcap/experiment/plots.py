"""PNG figures of a run (matplotlib's object API, no pyplot: safe headless)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def plot_accuracy_curves(
    histories: Mapping[str, Mapping[str, Sequence[float]]], path: str | os.PathLike
) -> str:
    """Train and test accuracy per epoch, one panel per model.

    Args:
        histories: panel title (e.g. "teacher resnet56") -> `read_csv_log` columns
            with `epoch`, `accuracy` and optionally `val_accuracy`.
        path: PNG file to write.

    Returns:
        The path written.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = [(title, h) for title, h in histories.items() if h.get("epoch")]
    figure = Figure(figsize=(5.0 * max(len(panels), 1), 3.6), layout="constrained")
    for index, (title, history) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), index)
        epochs = [e + 1 for e in history["epoch"]]
        for key, label in (("accuracy", "train"), ("val_accuracy", "test")):
            if key in history:
                axes.plot(epochs, [100 * v for v in history[key]], "o-", label=label, ms=3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("epoch")
        axes.set_ylabel("accuracy (%)")
        axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return os.fspath(path)


def write_plots(
    output_dir: str | os.PathLike,
    teacher: Mapping[str, Any],
    student: Mapping[str, Any],
    statistics: Mapping[str, Any] | None,
) -> dict[str, str]:
    """Writes the run's figures under `output_dir/plots`.

    Args:
        output_dir: the run's folder.
        teacher: the teacher record (`model`, optional `history`).
        student: the student record (`model`, `history`).
        statistics: `phases.teacher_statistics` result, or None to skip its figures.

    Returns:
        Figure name -> path relative to `output_dir`.
    """
    from keras_kdcap.analysis.plots import plot_tau_histogram, plot_variance_vs_temperature

    out = Path(output_dir)
    folder = out / "plots"
    written = {}
    curves = {}
    if teacher.get("history"):
        curves[f"teacher {teacher.get('model', '')}"] = teacher["history"]
    if student.get("history"):
        curves[f"student {student.get('model', '')} ({student.get('policy', '')})"] = student[
            "history"
        ]
    if curves:
        written["accuracy_curves"] = plot_accuracy_curves(curves, folder / "accuracy_curves.png")
    if statistics is not None:
        name = f"teacher {teacher.get('model', '')}"
        search = statistics["tau_star"]
        tau, correct = statistics["tau_star_values"], statistics["teacher_correct"]
        groups = {
            f"classified right ({int(correct.sum())})": tau[correct],
            f"misclassified: fallback ({int((~correct).sum())})": tau[~correct],
        }
        written["tau_star_histogram"] = plot_tau_histogram(
            {label: values for label, values in groups.items() if len(values)},
            folder / "tau_star_histogram.png",
            min_temperature=search["min_temperature"],
            max_temperature=search["max_temperature"],
            title=f"ISATS temperature tau* of {name} over the training set",
        )
        rows = [{"teacher": name, **row} for row in statistics["non_target"]]
        written["non_target_variance"] = plot_variance_vs_temperature(
            rows, folder / "non_target_variance.png"
        )
    return {key: os.path.relpath(path, out) for key, path in written.items()}
