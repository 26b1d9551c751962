"""Every policy on one teacher and one student, over the same seeds: a comparison table."""

from __future__ import annotations

import dataclasses
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keras_kdcap import files
from keras_kdcap.experiment import state
from keras_kdcap.experiment.config import (
    ExperimentConfig,
    UsageError,
    applicable_policy_args,
    check_config,
    typed_policy_args,
)
from keras_kdcap.experiment.phases import Log
from keras_kdcap.experiment.report import format_seconds, format_table, versions
from keras_kdcap.policies.registry import POLICIES

COMPARE_JSON = "compare.json"
COMPARE_MD = "compare.md"
RUNS_DIR = "runs"


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A checked comparison: the teacher's configuration and one per (policy, seed) run.

    Args:
        base: configuration of the teacher (its `output_dir` is the comparison's folder).
        policies: policy names, in table order.
        seeds: student seeds.
        runs: `(policy, seed, config)` of every student run.
    """

    base: ExperimentConfig
    policies: tuple[str, ...]
    seeds: tuple[int, ...]
    runs: tuple[tuple[str, int, ExperimentConfig], ...]


def default_compare_dir(preset: str, teacher: str, student: str) -> str:
    """`runs/compare_<preset>_<teacher>_<student>` (a teacher file gives its stem)."""
    name = Path(teacher).stem if teacher.endswith(".keras") else teacher
    return os.path.join("runs", f"compare_{preset}_{name}_{student}")


def run_config(base: ExperimentConfig, policy: str, seed: int) -> ExperimentConfig:
    """The configuration of one student run of a comparison.

    Args:
        base: the comparison's configuration.
        policy: the policy of this run.
        seed: its seed.

    Returns:
        A configuration distilling from `<comparison>/teacher.keras` into
        `<comparison>/runs/<policy>_seed<seed>`, with the policy args that apply to it.
    """
    applicable = set(applicable_policy_args(policy))
    own = {k: v for k, v in base.policy_args.items() if k in applicable}
    out = Path(base.output_dir)
    return base.replace(
        teacher=str(out / state.TEACHER_FILE) if not base.teacher_is_file else base.teacher,
        policy=policy,
        seed=seed,
        policy_args=typed_policy_args([policy], own),
        output_dir=str(out / RUNS_DIR / f"{policy}_seed{seed}"),
        analysis=False,
    )


def check_comparison(
    base: ExperimentConfig,
    policies: Sequence[str],
    seeds: Sequence[int],
    explicit: set[str],
) -> Comparison:
    """Checks a comparison before anything runs.

    Args:
        base: configuration from the flags (policy and seed are the first ones).
        policies: policy names.
        seeds: seeds, each >= 0.
        explicit: names of the flags set on the command line.

    Returns:
        The `Comparison`.

    Raises:
        UsageError: an unknown policy, a bad seed, a policy argument no listed
            policy takes, or a policy rejecting its arguments.
    """
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise UsageError(
            f"--policies: unknown policy {unknown[0]!r}; choose from {', '.join(sorted(POLICIES))}"
        )
    if any(seed < 0 for seed in seeds):
        raise UsageError("--seeds must be >= 0")
    for name in base.policy_args:
        if not any(name in applicable_policy_args(p) for p in policies):
            raise UsageError(
                f"--policy_args: {name!r} applies to none of --policies={','.join(policies)}"
            )
    check_config(base.replace(policy_args={}), explicit)
    runs = []
    for policy in policies:
        for seed in seeds:
            config = run_config(base, policy, seed)
            if base.teacher_is_file:
                check_config(config, explicit)
            else:  # the teacher file does not exist yet: check the rest
                check_config(config.replace(teacher=base.teacher), explicit)
            runs.append((policy, seed, config))
    return Comparison(base, tuple(policies), tuple(seeds), tuple(runs))


def summarise(accuracies: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value).

    Args:
        accuracies: the values.

    Returns:
        `(mean, std)`.
    """
    mean = statistics.fmean(accuracies)
    std = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    return mean, std


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The comparison as a markdown table (accuracies in %).

    Args:
        rows: `run_comparison` rows.

    Returns:
        The table.
    """
    return format_table(
        ["policy", "student acc mean (%)", "std", "seeds", "per seed (%)", "target first"],
        [
            [
                row["policy"],
                f"{100 * row['mean']:.2f}",
                f"{100 * row['std']:.2f}",
                len(row["accuracies"]),
                " ".join(f"{100 * a:.2f}" for a in row["accuracies"]),
                "-" if row["target_first"] is None else f"{row['target_first']:.3f}",
            ]
            for row in rows
        ],
    )


def run_comparison(comparison: Comparison, log: Log = print) -> dict[str, Any]:
    """Trains (or reuses) the teacher once, then every (policy, seed) student.

    Each run is an ordinary experiment folder under `<output_dir>/runs`, so an
    interrupted comparison resumes where it stopped.

    Args:
        comparison: from `check_comparison`.
        log: prints progress lines.

    Returns:
        The `compare.json` content (also written, with `compare.md`).
    """
    import time

    from keras_kdcap.experiment.data import load_data
    from keras_kdcap.experiment.phases import accuracy, teacher_phase, teacher_statistics
    from keras_kdcap.experiment.runner import run_experiment

    start = time.perf_counter()
    base = comparison.base
    out = Path(base.output_dir)
    teacher_config = base.replace(seed=comparison.seeds[0])
    if teacher_config.restart:
        state.clear_outputs(out)
        teacher_config = teacher_config.replace(restart=False)
    teacher_plan = state.plan_teacher(teacher_config)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(teacher_config)
    log(f"compare: {len(comparison.runs)} student runs on {data.num_train} train images")
    teacher, record = teacher_phase(teacher_config, teacher_plan, data, log)
    teacher_accuracy, _ = accuracy(teacher, data.test)
    if base.analysis:
        statistics_ = teacher_statistics(teacher_config, teacher, data, log)
        try:
            from keras_kdcap.experiment.plots import write_plots

            write_plots(out, record, {}, statistics_)
        except ImportError:
            pass
    results: dict[str, list[dict[str, Any]]] = {p: [] for p in comparison.policies}
    for index, (policy, seed, config) in enumerate(comparison.runs, start=1):
        log(f"compare: run {index}/{len(comparison.runs)}: {policy}, seed {seed}")
        metrics = run_experiment(config, data=load_data(config), log=log)
        results[policy].append(metrics)
        log(
            f"compare: {policy} seed {seed}: student test acc "
            f"{100 * metrics['student_test_accuracy']:.2f}%"
        )
    rows = []
    for policy in comparison.policies:
        accuracies = [m["student_test_accuracy"] for m in results[policy]]
        mean, std = summarise(accuracies)
        firsts = [
            (m["student"].get("last_epoch") or {}).get("target_first") for m in results[policy]
        ]
        firsts = [f for f in firsts if f is not None]
        rows.append(
            {
                "policy": policy,
                "mean": mean,
                "std": std,
                "accuracies": accuracies,
                "seeds": list(comparison.seeds),
                "target_first": statistics.fmean(firsts) if firsts else None,
                "output_dirs": [m["output_dir"] for m in results[policy]],
            }
        )
    table = markdown_table(rows)
    report = files.jsonable(
        {
            "teacher": base.teacher,
            "student": base.student,
            "teacher_test_accuracy": teacher_accuracy,
            "rows": rows,
            "markdown": table,
            "config": base.to_dict(),
            "versions": versions(),
            "time_s": time.perf_counter() - start,
        }
    )
    state.write_json(out / COMPARE_JSON, report)
    title = (
        f"{base.teacher} (test acc {100 * teacher_accuracy:.2f}%) -> {base.student}, "
        f"{data.num_train} train images, seeds {','.join(map(str, comparison.seeds))}, "
        f"{format_seconds(report['time_s'])}"
    )
    (out / COMPARE_MD).write_text(f"{title}\n\n{table}\n")
    log(f"\n{title}\n{table}")
    return report
