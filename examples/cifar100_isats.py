"""Teacher -> student -> report on CIFAR-100 with a temperature policy (ISATS by default).

    python examples/cifar100_isats.py --preset smoke --data_dir /path/to/cifar100
    python examples/cifar100_isats.py --teacher resnet110 --student resnet20 --policy isats
    python examples/cifar100_isats.py --teacher runs/x/teacher.keras --policy kd --temperature 4

Phases: data, teacher (trained with the CRD recipe, or loaded from a .keras file),
teacher statistics (non-target variance, ISATS temperatures tau*), student
(distilled with `keras_kdcap.Distiller`), report. Everything lands in
`--output_dir`: teacher.keras, student.keras, metrics.json, student_log.csv,
tensorboard/, plots/. Running the same command again reuses the finished teacher
and resumes an interrupted student from its last finished epoch.
Presets: `paper` (CRD protocol, 240 epochs; the default) and `smoke` (minutes on a
CPU). Runs unchanged on KERAS_BACKEND=tensorflow|jax|torch. docs/example.md has
every flag.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _startup import quiet_native_startup  # noqa: E402

with quiet_native_startup():
    from keras_kdcap.experiment import cli, format_summary, run_experiment


def run(argv: Sequence[str]) -> dict:
    """Parses and checks the flags, runs every phase, prints the summary table.

    Args:
        argv: the command line, program name first.

    Returns:
        The content of `metrics.json`.
    """
    config = cli.parse_experiment(argv)  # UsageError on bad input, before any work
    metrics = run_experiment(config)
    print(format_summary(metrics), flush=True)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """The script's entry point: returns the exit status (2 on bad input)."""
    return cli.guarded(run, sys.argv if argv is None else argv, usage=__doc__)


if __name__ == "__main__":
    sys.exit(main())
