"""examples/cifar100_isats.py and compare_policies.py: a miniature run on real CIFAR-100.

The miniature run (3 images per class, resnet8 -> resnet8, one epoch) goes through
every phase on the backend under test; the same output folder is then reused. Bad
command lines must fail in a fraction of a second with one `error: ...` line.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_kdcap.experiment import cli, compare
from keras_kdcap.experiment.config import PRESETS, UsageError, applicable_policy_args
from keras_kdcap.experiment.report import last_and_best, read_csv_log

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "cifar100_isats.py"
COMPARE_SCRIPT = REPO / "examples" / "compare_policies.py"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(module, argv: list[str]) -> tuple[int, str, str]:
    """Calls a script's `main` in-process; returns (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = module.main([module.__name__, *argv])
    return status, out.getvalue(), err.getvalue()


def _miniature_flags(data_dir: Path, output_dir: Path) -> list[str]:
    return [
        f"--data_dir={data_dir}",
        f"--output_dir={output_dir}",
        "--teacher=resnet8",
        "--student=resnet8",
        "--per_class=3",
        "--test_per_class=3",
        "--epochs=1",
        "--teacher_epochs=1",
        "--batch_size=32",
        "--verbose=2",
    ]


@pytest.fixture(scope="module")
def example():
    return _load(SCRIPT, "cifar100_isats")


@pytest.fixture(scope="module")
def data_dir() -> Path:
    from conftest import cifar100_dir

    path = cifar100_dir()
    if not (path / "train.npz").exists():
        pytest.skip(f"offline CIFAR-100 not found at {path} (set KDCAP_CIFAR100_DIR)")
    return path


@pytest.fixture(scope="module")
def miniature(example, data_dir, tmp_path_factory):
    """One miniature run, shared by the tests that read its outputs."""
    output_dir = tmp_path_factory.mktemp("miniature")
    status, stdout, stderr = _run(example, _miniature_flags(data_dir, output_dir))
    assert status == 0, stderr[-3000:]
    return output_dir, stdout


@pytest.mark.slow
def test_miniature_run_writes_every_output(miniature):
    output_dir, stdout = miniature
    for phase in ("[1/5] data", "[2/5] teacher: training", "[3/5]", "[4/5] student", "[5/5]"):
        assert phase in stdout
    assert "| teacher |" in stdout and "| student |" in stdout  # the summary table

    metrics = json.loads((output_dir / "metrics.json").read_text())
    for key in ("teacher_test_accuracy", "student_test_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["complete"] is True
    assert metrics["policy"] == "isats"
    assert metrics["data"]["num_train"] == 300 and metrics["data"]["num_test"] == 300
    assert metrics["versions"]["backend"] == keras.backend.backend()
    assert metrics["versions"]["keras"] == keras.__version__
    assert metrics["config"]["per_class"] == 3 and metrics["config"]["policy"] == "isats"
    student = metrics["student"]
    assert student["last_epoch"]["epoch"] == 1 and student["best_epoch"]["epoch"] == 1
    history = student["history"]
    assert history["epoch"] == [0]
    for name in ("temperature", "fallback_rate", "target_cap_rate", "target_first", "kd_loss"):
        assert len(history[name]) == 1 and np.isfinite(history[name][0])
    assert 0.5 <= history["temperature"][0] <= 20.0
    assert history["val_accuracy"][0] == pytest.approx(metrics["student_test_accuracy"])
    teacher = metrics["teacher"]
    assert teacher["source"] == "trained" and teacher["epochs"] == 1
    assert [row["temperature"] for row in teacher["non_target"]] == [1.0, 2.0, 4.0, 8.0]
    assert all(row["variance"] >= 0.0 for row in teacher["non_target"])
    assert 0.5 <= teacher["tau_star"]["median"] <= 20.0

    with open(output_dir / "student_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["0"]
    assert {"accuracy", "loss", "temperature", "val_accuracy"} <= set(rows[0])

    model = keras.saving.load_model(output_dir / "student.keras")
    logits = keras.ops.convert_to_numpy(model.predict(np.zeros((2, 32, 32, 3)), verbose=0))
    assert logits.shape == (2, 100) and np.all(np.isfinite(logits))
    assert (output_dir / "teacher.keras").is_file()
    for name in ("accuracy_curves", "tau_star_histogram", "non_target_variance"):
        path = output_dir / metrics["outputs"]["plots"][name]
        assert path.suffix == ".png" and path.stat().st_size > 1000
    if metrics["outputs"]["tensorboard"] is None:  # e.g. the tensorboard package missing
        assert metrics["outputs"]["tensorboard_status"]["student"].startswith("skipped")


@pytest.mark.slow
def test_rerun_reuses_the_teacher(example, miniature, data_dir):
    output_dir, _ = miniature
    teacher = output_dir / "teacher.keras"
    before = teacher.stat().st_mtime_ns
    first = json.loads((output_dir / "metrics.json").read_text())
    status, stdout, stderr = _run(example, _miniature_flags(data_dir, output_dir))
    assert status == 0, stderr[-3000:]
    assert "teacher: reused" in stdout and "teacher: training" not in stdout
    assert teacher.stat().st_mtime_ns == before
    again = json.loads((output_dir / "metrics.json").read_text())
    assert again["teacher"]["source"] == "reused"
    assert again["teacher_test_accuracy"] == first["teacher_test_accuracy"]
    assert again["student_test_accuracy"] == first["student_test_accuracy"]

    # Other student settings in the same folder: refused, nothing overwritten.
    status, _, stderr = _run(example, _miniature_flags(data_dir, output_dir) + ["--policy=kd"])
    assert status == 2 and stderr.startswith("error: ") and "--restart" in stderr
    assert teacher.stat().st_mtime_ns == before


@pytest.mark.slow
# the script's plumbing, once per suite: the example's training runs on every backend in
# test_miniature_run_writes_every_output, the comparison's checks and table in
# test_compare_checks_and_table
@pytest.mark.one_backend
def test_compare_policies_on_a_saved_teacher(miniature, data_dir, tmp_path):
    output_dir, _ = miniature
    module = _load(COMPARE_SCRIPT, "compare_policies")
    argv = _miniature_flags(data_dir, tmp_path)
    argv = [a for a in argv if not a.startswith(("--teacher", "--output_dir", "--per_class"))]
    argv += [
        "--per_class=2",
        f"--teacher={output_dir / 'teacher.keras'}",
        f"--output_dir={tmp_path}",
        "--policies=kd,isats",
        "--seeds=0",
        "--noanalysis",
    ]
    status, stdout, stderr = _run(module, argv)
    assert status == 0, stderr[-3000:]
    report = json.loads((tmp_path / "compare.json").read_text())
    assert [row["policy"] for row in report["rows"]] == ["kd", "isats"]
    for row in report["rows"]:
        assert len(row["accuracies"]) == 1 and row["std"] == 0.0
        assert 0.0 <= row["mean"] <= 1.0
    assert "| policy" in stdout and "| isats" in stdout
    assert (tmp_path / "compare.md").read_text().count("\n|") >= 3


BAD_INPUTS = {
    "unknown model": ["--student=resnet9000"],
    "unknown teacher": ["--teacher=nosuchnet"],
    "unknown policy": ["--policy=nosuch"],
    "unknown preset": ["--preset=huge"],
    "missing data dir": ["--data_dir=/no/such/folder"],
    "numpy pipeline without the npz copy": ["--pipeline=numpy", "--data_dir={tmp}"],
    "fgcr weight out of range": ["--policy=fgcr", "--policy_args=weight=2"],
    "argument of another policy": ["--policy=isats", "--policy_args=weight=0.5"],
    "empty temperature range": ["--policy_args=min_temperature=5,max_temperature=2"],
    "policy argument without a value": ["--policy_args=temperature"],
    "policy argument of the wrong type": ["--policy=kd", "--policy_args=temperature=hot"],
    "base of a policy without one": ["--policy=kd", "--base_policy=isats"],
    "missing policy module": ["--policy_module=no_such_policy_module"],
    "missing teacher file": ["--teacher=/no/such/teacher.keras"],
    "regt flag without regt": ["--regt_gamma=0.5"],
    "epochs with a teacher file": ["--teacher={tmp}/teacher.keras", "--teacher_epochs=3"],
    "unknown flag": ["--epochz=3"],
    "bad number": ["--epochs=many"],
    "stray argument": ["isats"],
}


@pytest.mark.parametrize("argv", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_input_gives_one_error_line(example, tmp_path, argv):
    (tmp_path / "teacher.keras").write_bytes(b"")  # exists, for the combination checks
    output_dir = tmp_path / "never_created"
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    status, stdout, stderr = _run(example, [f"--output_dir={output_dir}", *argv])
    assert status == cli.EXIT_USAGE
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr and stdout == ""
    assert not output_dir.exists()  # failed before any work


@pytest.mark.one_backend  # the exit status and the one line come before any backend work
def test_bad_input_exit_status_in_a_subprocess(tmp_path):
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend()}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--policy=fgcr", "--policy_args=weight=2"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == cli.EXIT_USAGE
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: --policy fgcr: `weight` must lie in [0, 1]; got 2.0."
    ]


@pytest.fixture
def npz_dir(tmp_path) -> str:
    """A folder that passes for the offline copy (the checks only look for the files)."""
    for name in ("train.npz", "test.npz"):
        (tmp_path / name).write_bytes(b"")
    return f"--data_dir={tmp_path}"


def test_explicit_flags_override_the_preset(npz_dir):
    config = cli.parse_experiment(["x", npz_dir, "--preset=smoke", "--epochs=7", "--policy=kd"])
    assert config.epochs == 7 and config.policy == "kd"
    assert config.teacher == PRESETS["smoke"]["teacher"]
    assert config.per_class == PRESETS["smoke"]["per_class"]
    paper = cli.parse_experiment(["x", npz_dir])
    assert (paper.epochs, paper.batch_size, paper.alpha, paper.beta) == (240, 64, 0.1, 0.9)
    assert paper.output_dir.startswith("runs")


def test_policy_args_reach_the_policy(npz_dir):
    from keras_kdcap.experiment import make_policy

    argv = ["x", npz_dir, "--policy_args=target_ratio=1.5,num_candidates=8,refine=true"]
    policy = make_policy(cli.parse_experiment(argv))
    assert (policy.target_ratio, policy.num_candidates, policy.refine) == (1.5, 8, True)
    argv = ["x", npz_dir, "--policy=dkd", "--policy_args=tckd_weight=2,nckd_weight=6"]
    config = cli.parse_experiment(argv)
    assert config.policy_args == {"tckd_weight": 2.0, "nckd_weight": 6.0}
    assert (make_policy(config).tckd_weight, make_policy(config).nckd_weight) == (2.0, 6.0)
    argv = ["x", npz_dir, "--policy=sckd", "--base_policy=fgcr", "--policy_args=weight=0.25"]
    assert make_policy(cli.parse_experiment(argv)).base_policy.weight == 0.25
    assert "weight" in applicable_policy_args("fgcr")
    assert "weight" not in applicable_policy_args("kd")


def test_deprecated_policy_flags_still_work_with_a_warning(npz_dir):
    from keras_kdcap.experiment import make_policy

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        config = cli.parse_experiment(
            ["x", npz_dir, "--policy=fgcr", "--fgcr_weight=0.25", "--fgcr_relations=classifier"]
        )
        dkd = cli.parse_experiment(["x", npz_dir, "--policy=dkd", "--dkd_alpha=2", "--dkd_beta=6"])
    policy = make_policy(config)
    assert (policy.weight, policy.relation_source) == (0.25, "classifier")
    assert (make_policy(dkd).tckd_weight, make_policy(dkd).nckd_weight) == (2.0, 6.0)
    lines = err.getvalue().splitlines()
    assert "warning: --fgcr_weight is deprecated, use --policy_args=weight=<value>" in lines[0]
    assert len(lines) == 4 and all(line.startswith("warning: --") for line in lines)
    with pytest.raises(UsageError, match="both set 'weight'"):
        cli.parse_experiment(
            ["x", npz_dir, "--policy=fgcr", "--fgcr_weight=0.2", "--policy_args=weight=0.3"]
        )


def test_compare_checks_and_table(npz_dir):
    argv = ["x", npz_dir, "--policy_args=temperature=3", "--teacher=resnet8"]
    fv, explicit = cli.parse(argv, compare=True)
    base = cli.build_config(fv, explicit, policy="kd", seed=0)
    comparison = compare.check_comparison(base, ["kd", "isats"], [0, 1], explicit)
    assert len(comparison.runs) == 4
    kd_config = comparison.runs[0][2]
    assert kd_config.policy_args == {"temperature": 3.0}
    assert comparison.runs[2][2].policy_args == {}  # isats takes no --temperature
    with pytest.raises(UsageError, match="applies to none"):
        compare.check_comparison(
            base.replace(policy_args={"weight": 0.5}), ["kd"], [0], {"policy_args"}
        )
    mean, std = compare.summarise([0.5, 0.7])
    assert mean == pytest.approx(0.6) and std == pytest.approx(0.1414, abs=1e-4)
    table = compare.markdown_table(
        [
            {
                "policy": "kd",
                "mean": 0.6,
                "std": std,
                "accuracies": [0.5, 0.7],
                "target_first": 0.9,
            }
        ]
    )
    assert table.splitlines()[2].startswith("| kd ") and "60.00" in table


def test_help_lists_the_flags(example):
    status, stdout, stderr = _run(example, ["--help"])
    assert status == 0 and stderr == ""
    for flag in ("--teacher", "--policy", "--preset", "--policy_args", "--policy_module"):
        assert flag in stdout


def test_csv_log_of_a_resumed_run_keeps_the_last_row_of_each_epoch(tmp_path):
    # An epoch logged, then the run killed before its backup: it is run and logged again.
    path = tmp_path / "log.csv"
    path.write_text("epoch,accuracy,val_accuracy\n0,0.1,0.2\n1,0.2,0.3\n1,0.25,0.35\n2,0.3,0.25\n")
    history = read_csv_log(path)
    assert history == {
        "epoch": [0, 1, 2],
        "accuracy": [0.1, 0.25, 0.3],
        "val_accuracy": [0.2, 0.35, 0.25],
    }
    last, best = last_and_best(history)
    assert last["epoch"] == 3 and best["epoch"] == 2 and best["val_accuracy"] == 0.35
    assert read_csv_log(tmp_path / "missing.csv") == {}


def test_numpy_pipeline_without_npz_is_refused_before_and_at_loading(tmp_path):
    # One check serves the up-front validation and load_data itself.
    from keras_kdcap.experiment.config import ExperimentConfig, check_data_source
    from keras_kdcap.experiment.data import load_data

    config = ExperimentConfig(
        teacher="resnet8", student="resnet8", data_dir=str(tmp_path), pipeline="numpy"
    )
    for call in (check_data_source, load_data):
        with pytest.raises(UsageError, match="--data_dir=<folder with train.npz and test.npz>"):
            call(config)
