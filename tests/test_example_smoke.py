"""The smoke preset's demo features in examples/cifar100_isats.py, miniature: a class subset,
a teacher on more images than the students, the CE-only baseline, MixUp/CutMix."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_kdcap.experiment import cli
from keras_kdcap.experiment.config import PRESETS, UsageError

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "cifar100_isats.py"


def _run(argv: list[str]) -> tuple[int, str, str]:
    spec = importlib.util.spec_from_file_location("cifar100_isats_smoke", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = module.main(["cifar100_isats.py", *argv])
    return status, out.getvalue(), err.getvalue()


def test_smoke_preset_is_a_demo_with_a_baseline(cifar100_path):
    smoke = PRESETS["smoke"]
    assert smoke["baseline"] is True
    assert smoke["num_classes"] < 100
    # the teacher sees at least the students' images
    assert smoke["teacher_per_class"] == 0 or smoke["teacher_per_class"] >= smoke["per_class"]
    argv = ["x", "--preset=smoke", f"--data_dir={cifar100_path}", "--output_dir=/tmp/unused"]
    config = cli.parse_experiment(argv)
    assert config.baseline and config.num_classes == smoke["num_classes"]


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--num_classes=1", "num_classes"),
        ("--mix=mosaic", "--mix"),
        ("--mix_layers=other", "--mix_layers"),
    ],
)
def test_bad_demo_flags_are_named(flag, message, cifar100_path):
    with pytest.raises(UsageError, match=message):
        cli.parse_experiment(["x", "--preset=smoke", f"--data_dir={cifar100_path}", flag])


@pytest.mark.slow
def test_miniature_smoke_run_reports_both_students(cifar100_path, tmp_path):
    status, stdout, stderr = _run(
        [
            "--preset=smoke",
            f"--data_dir={cifar100_path}",
            f"--output_dir={tmp_path}",
            "--teacher=resnet8",
            "--num_classes=3",
            "--teacher_per_class=6",
            "--per_class=3",
            "--test_per_class=3",
            "--epochs=1",
            "--teacher_epochs=1",
            "--batch_size=8",
            "--mix=cutmix",
            "--noanalysis",
            "--notensorboard",
            "--verbose=0",
        ]
    )
    assert status == 0, stderr[-3000:]
    assert "3 of 100 CIFAR-100 classes" in stdout
    assert "student, no teacher" in stdout and "CE only" in stdout
    assert "distillation:" in stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    data = metrics["data"]
    assert data["num_classes"] == 3 and data["mix"] == "cutmix"
    assert data["num_train"] == 9 and data["num_teacher_train"] == 18 and data["num_test"] == 9
    for key in ("teacher_test_accuracy", "student_test_accuracy", "baseline_test_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["baseline"]["policy"].startswith("CE only")
    student = keras.saving.load_model(tmp_path / "student.keras")
    logits = keras.ops.convert_to_numpy(student.predict(np.zeros((2, 32, 32, 3)), verbose=0))
    assert logits.shape == (2, 3) and np.all(np.isfinite(logits))
