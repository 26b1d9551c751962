"""Every temperature policy on one teacher and one student, over the same seeds.

    python examples/compare_policies.py --preset smoke --data_dir /path/to/cifar100
    python examples/compare_policies.py --teacher resnet56 --student resnet20 --seeds 0,1,2

Trains (or reuses) the teacher once in `--output_dir`, then distils one student
per (policy, seed) into `<output_dir>/runs/<policy>_seed<seed>` (each an ordinary
examples/cifar100_isats.py run folder, resumable). Prints a markdown table (policy,
student accuracy mean and std over the seeds) and writes it to compare.md and
compare.json. Takes the flags of cifar100_isats.py, with --policies and --seeds
instead of --policy and --seed; a policy flag applies to the policies that take it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _startup import quiet_native_startup  # noqa: E402

with quiet_native_startup():
    from keras_kdcap.experiment import cli, compare


def run(argv: Sequence[str]) -> dict:
    """Parses and checks the flags, then trains the teacher and every student.

    Args:
        argv: the command line, program name first.

    Returns:
        The content of compare.json.
    """
    fv, explicit = cli.parse(argv, compare=True)
    policies = cli.parse_list("policies", fv.policies)
    seeds = cli.parse_list("seeds", fv.seeds, int)
    base = cli.build_config(fv, explicit, policy=policies[0], seed=seeds[0])
    if not fv.output_dir:
        base = base.replace(
            output_dir=compare.default_compare_dir(fv.preset, base.teacher, base.student)
        )
    comparison = compare.check_comparison(base, policies, seeds, explicit)
    return compare.run_comparison(comparison)


def main(argv: Sequence[str] | None = None) -> int:
    """The script's entry point: returns the exit status (2 on bad input)."""
    return cli.guarded(run, sys.argv if argv is None else argv, usage=__doc__)


if __name__ == "__main__":
    sys.exit(main())
