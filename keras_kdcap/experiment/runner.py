"""One experiment end to end: data, teacher, teacher statistics, student, report."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from keras_kdcap import files
from keras_kdcap.experiment import state
from keras_kdcap.experiment.config import ExperimentConfig
from keras_kdcap.experiment.data import ExperimentData, load_data
from keras_kdcap.experiment.phases import (
    Log,
    accuracy,
    baseline_phase,
    student_phase,
    teacher_phase,
    teacher_statistics,
)
from keras_kdcap.experiment.report import last_and_best, versions


def _print(line: str) -> None:
    print(line, flush=True)


def run_experiment(
    config: ExperimentConfig,
    plan: state.RunPlan | None = None,
    data: ExperimentData | None = None,
    log: Log = _print,
) -> dict[str, Any]:
    """Runs (or resumes) teacher -> student on CIFAR-100 and writes every output.

    Writes to `config.output_dir`: `teacher.keras`, `student.keras`, `metrics.json`,
    `student_log.csv` (and `teacher/history.csv`), `tensorboard/`, `plots/*.png`.

    Args:
        config: a configuration that passed `check_config`.
        plan: the phases' plan (default: `state.plan_run(config)`).
        data: the pipelines (default: `load_data(config)`).
        log: prints one progress line per phase.

    Returns:
        The `metrics.json` content.

    Example:
        >>> config = ExperimentConfig(teacher="resnet14", student="resnet8")  # doctest: +SKIP
        >>> metrics = run_experiment(config)  # doctest: +SKIP
    """
    start = time.perf_counter()
    out = Path(config.output_dir)
    plan = state.plan_run(config) if plan is None else plan
    out.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = load_data(config)
    subset = f"{config.per_class} per class" if config.per_class else "all"
    if data.num_teacher_train is not None:
        subset += f"; the teacher's: {data.num_teacher_train}"
    log(
        f"[1/5] data: {data.num_train} train ({subset}) / {data.num_test} test images "
        f"from {data.source}"
    )

    teacher, teacher_record = teacher_phase(config, plan.teacher, data, log)
    teacher_accuracy, _ = accuracy(teacher, data.test)

    statistics = None
    if config.analysis:
        statistics = teacher_statistics(config, teacher, data, log)
    else:
        log("[3/5] analysis: skipped (--noanalysis)")

    student, student_record = student_phase(config, plan.student, teacher, data, log)
    student_accuracy, _ = accuracy(student, data.test)
    last, best = last_and_best(student_record.get("history", {}))
    baseline_section = None
    if config.baseline:
        baseline, baseline_section = baseline_phase(config, data, log)
        baseline_section["test_accuracy"], _ = accuracy(baseline, data.test)

    log(f"[5/5] report: {out / state.METRICS_FILE}")
    figures: dict[str, str] = {}
    if config.analysis:
        try:
            from keras_kdcap.experiment.plots import write_plots

            figures = write_plots(out, teacher_record, student_record, statistics)
        except ImportError as err:
            print(f"warning: plots skipped ({err})", file=sys.stderr, flush=True)

    teacher_section = {k: v for k, v in teacher_record.items() if k not in ("fingerprint",)}
    teacher_section["test_accuracy"] = teacher_accuracy
    teacher_section["params"] = int(teacher.count_params())
    if statistics is not None:
        teacher_section["train_accuracy"] = statistics["train_accuracy"]
        teacher_section["non_target"] = statistics["non_target"]
        teacher_section["tau_star"] = statistics["tau_star"]
    student_section = {k: v for k, v in student_record.items() if k not in ("fingerprint",)}
    student_section.update(
        test_accuracy=student_accuracy,
        params=int(student.count_params()),
        last_epoch=last,
        best_epoch=best,
    )
    boards = {
        "teacher": teacher_record.get("tensorboard", "not trained in this run"),
        "student": student_record.get("tensorboard", "not trained in this run"),
    }
    metrics = {
        "teacher_test_accuracy": teacher_accuracy,
        "student_test_accuracy": student_accuracy,
        "policy": student_record.get("policy", config.policy),
        "baseline_test_accuracy": (baseline_section or {}).get("test_accuracy"),
        "baseline": baseline_section,
        "teacher": teacher_section,
        "student": student_section,
        "data": {
            "source": data.source,
            "pipeline": data.pipeline,
            "num_train": data.num_train,
            "num_test": data.num_test,
            "per_class": config.per_class,
            "test_per_class": config.test_per_class,
            "num_classes": config.num_classes,
            "num_teacher_train": data.num_teacher_train,
            "mix": config.mix,
        },
        "config": config.to_dict(),
        "versions": versions(),
        "outputs": {
            "teacher": state.TEACHER_FILE,
            "student": state.STUDENT_FILE,
            "csv_log": state.STUDENT_LOG,
            "teacher_csv_log": (
                f"{state.TEACHER_WORK_DIR}/history.csv"
                if (out / state.TEACHER_WORK_DIR / "history.csv").is_file()
                else None
            ),
            "tensorboard": "tensorboard" if "written" in boards.values() else None,
            "tensorboard_status": boards,
            "plots": figures,
        },
        "output_dir": str(out),
        "time_s": time.perf_counter() - start,
        "complete": True,
    }
    metrics = files.jsonable(metrics)
    state.write_json(out / state.METRICS_FILE, metrics)
    return metrics
