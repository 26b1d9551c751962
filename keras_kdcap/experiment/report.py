"""The run's report: per-epoch history from the CSV log, `metrics.json`, the summary table."""

from __future__ import annotations

import csv
import math
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from typing import Any


def read_csv_log(path: str | os.PathLike) -> dict[str, list[float]]:
    """Reads a `keras.callbacks.CSVLogger` file into columns, one value per epoch.

    A resumed run may have logged an epoch twice (interrupted between the log and
    the backup): the last row of each epoch wins, and rows are sorted by epoch.

    Args:
        path: the CSV file.

    Returns:
        `{column: [value per epoch]}` with an int `epoch` column (0-based); empty
        when the file is missing.
    """
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return {}
    by_epoch: dict[int, dict[str, str]] = {}
    for row in rows:
        try:
            by_epoch[int(row["epoch"])] = row
        except (KeyError, TypeError, ValueError):
            continue
    columns: dict[str, list[float]] = {}
    for epoch in sorted(by_epoch):
        for key, value in by_epoch[epoch].items():
            if key is None:
                continue
            if key == "epoch":
                columns.setdefault(key, []).append(epoch)
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            columns.setdefault(key, []).append(number)
    return columns


def epoch_row(history: Mapping[str, Sequence[float]], index: int) -> dict[str, float]:
    """One epoch of a history as `{metric: value}` (with a 1-based `epoch`).

    Args:
        history: `read_csv_log` columns.
        index: position of the epoch in the columns.

    Returns:
        The row.
    """
    row = {key: values[index] for key, values in history.items() if index < len(values)}
    row["epoch"] = int(history["epoch"][index]) + 1
    return row


def last_and_best(history: Mapping[str, Sequence[float]]) -> tuple[dict | None, dict | None]:
    """The last epoch and the epoch of best test (validation) accuracy.

    Args:
        history: `read_csv_log` columns.

    Returns:
        `(last, best)` rows, or `(None, None)` for an empty history.
    """
    if not history.get("epoch"):
        return None, None
    key = "val_accuracy" if "val_accuracy" in history else "accuracy"
    values = [(-math.inf if math.isnan(v) else v) for v in history.get(key, [])]
    best = max(range(len(values)), key=values.__getitem__) if values else len(history["epoch"]) - 1
    return epoch_row(history, len(history["epoch"]) - 1), epoch_row(history, best)


def versions() -> dict[str, str]:
    """Package, backend and Python versions of this process.

    Returns:
        Name -> version, including `backend` (the Keras backend's name).
    """
    import keras
    import numpy as np

    import keras_kdcap

    found = {
        "keras_kdcap": keras_kdcap.__version__,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for module in ("tensorflow", "jax", "jaxlib", "torch", "tensorflow_datasets", "matplotlib"):
        if module in sys.modules:
            found[module] = str(getattr(sys.modules[module], "__version__", "unknown"))
    return found


def format_seconds(seconds: float | None) -> str:
    """`75.2` -> `"1 min 15 s"`; None -> `"-"`."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table with padded columns.

    Args:
        header: column titles.
        rows: the cells (converted with `str`).

    Returns:
        The table, one line per row.
    """
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def format_summary(metrics: Mapping[str, Any]) -> str:
    """The table printed at the end of a run: teacher and student accuracy, policy, time.

    Args:
        metrics: the `metrics.json` content.

    Returns:
        Printable text.
    """
    teacher, student = metrics["teacher"], metrics["student"]
    rows = [
        [
            "teacher",
            teacher.get("model", "-"),
            "-",
            teacher.get("epochs", "-"),
            teacher.get("source", "-"),
            _percent(metrics["teacher_test_accuracy"]),
            format_seconds(teacher.get("time_s")),
        ],
        [
            "student",
            student.get("model", "-"),
            student.get("policy", "-"),
            student.get("epochs", "-"),
            student.get("source", "-"),
            _percent(metrics["student_test_accuracy"]),
            format_seconds(student.get("time_s")),
        ],
    ]
    baseline = metrics.get("baseline")
    if baseline:
        rows.append(
            [
                "student, no teacher",
                baseline.get("model", "-"),
                baseline.get("policy", "CE only"),
                baseline.get("epochs", "-"),
                baseline.get("source", "-"),
                _percent(baseline.get("test_accuracy")),
                format_seconds(baseline.get("time_s")),
            ]
        )
    table = format_table(["role", "model", "policy", "epochs", "run", "test acc", "time"], rows)
    best = student.get("best_epoch") or {}
    data = metrics["data"]
    classes = data.get("num_classes", 100)
    subset = f"{classes} of 100 CIFAR-100 classes, " if classes < 100 else ""
    if data.get("num_teacher_train"):
        subset += f"teacher on {data['num_teacher_train']} train images, students on "
    lines = [
        "",
        f"summary ({metrics['versions']['backend']} backend, {subset}{data['num_train']} train"
        f" / {data['num_test']} test images)",
        table,
    ]
    if baseline and baseline.get("test_accuracy") is not None:
        gain = 100 * (metrics["student_test_accuracy"] - baseline["test_accuracy"])
        lines.append(
            f"distillation: {_percent(metrics['student_test_accuracy'])} with the teacher vs "
            f"{_percent(baseline['test_accuracy'])} CE only ({gain:+.2f} points)"
        )
    if best.get("val_accuracy") is not None:
        lines.append(
            f"best student epoch: {best['epoch']} (test acc {_percent(best['val_accuracy'])})"
        )
    stats = [
        f"{name} {student['last_epoch'][name]:.3g}"
        for name in ("target_first", *student.get("metric_names", ()))
        if student.get("last_epoch") and name in student["last_epoch"]
    ]
    if stats:
        lines.append("last epoch policy statistics: " + ", ".join(stats))
    total = format_seconds(metrics["time_s"])
    lines.append(f"total time: {total}; outputs in {metrics['output_dir']}")
    return "\n".join(lines)
