"""End-to-end experiments behind the example scripts: flags, phases, report, plots.

`examples/cifar100_isats.py` and `examples/compare_policies.py` are thin
wrappers around this package:

- `config`: `ExperimentConfig`, the presets (`paper`, `smoke`), the policy
  flags and `check_config` (a `UsageError` with one line per bad input).
- `cli`: the absl flags and the one-line error handling of the scripts.
- `state`: reuse a finished teacher/student, resume an interrupted one.
- `data`: CIFAR-100 pipelines of a run.
- `phases`: teacher, teacher statistics, student.
- `runner`: `run_experiment`, all phases and `metrics.json`.
- `report`, `plots`: the summary table, the CSV history, the PNG figures.
- `compare`: every policy over the same teacher, student and seeds.
"""

from keras_kdcap.experiment.config import (
    PRESETS,
    ExperimentConfig,
    UsageError,
    check_config,
    make_policy,
)
from keras_kdcap.experiment.report import format_summary, read_csv_log
from keras_kdcap.experiment.runner import run_experiment

__all__ = [
    "PRESETS",
    "ExperimentConfig",
    "UsageError",
    "check_config",
    "format_summary",
    "make_policy",
    "read_csv_log",
    "run_experiment",
]
