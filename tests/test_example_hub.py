"""examples/distill_keras_hub.py: its smoke path, miniature (seconds), on the offline CIFAR-100."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras_hub")
pytest.importorskip("tensorflow")

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "distill_keras_hub.py"


@pytest.mark.slow
def test_keras_hub_example_smoke_path(cifar100_path, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("distill_keras_hub", SCRIPT)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    argv = [
        "distill_keras_hub.py",
        "--preset=smoke",
        f"--data_dir={cifar100_path}",
        f"--output_dir={tmp_path}",
        "--num_classes=3",
        "--per_class=8",
        "--test_per_class=4",
        "--teacher_epochs=1",
        "--epochs=1",
        "--batch_size=8",
        "--verbose=0",
    ]
    assert example.main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["teacher"] == "ResNetImageClassifier" and results["hub_preset"] is None
    assert results["num_train"] == 24 and results["num_test"] == 12
    for key in ("teacher_test_accuracy", "student_test_accuracy", "fallback_rate"):
        assert 0.0 <= results[key] <= 1.0
    assert results["student_params"] < results["teacher_params"]
    assert (tmp_path / "student.keras").is_file() and (tmp_path / "teacher.keras").is_file()
    assert "ISATS fallback rate" in capsys.readouterr().out

    import keras

    student = keras.saving.load_model(tmp_path / "student.keras")
    logits = keras.ops.convert_to_numpy(student.predict(np.zeros((2, 32, 32, 3)), verbose=0))
    assert logits.shape == (2, 3) and np.all(np.isfinite(logits))
