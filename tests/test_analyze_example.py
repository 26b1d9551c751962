"""End to end: examples/analyze_teachers.py on real CIFAR-100, tiny scale, in-process."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    env = os.environ.get("KDCAP_CIFAR100_DIR")
    return (
        Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar100"
    )


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location(
        "analyze_teachers_example", REPO / "examples" / "analyze_teachers.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_analyze_teachers_tiny_run(example, tmp_path):
    data_dir = _data_dir()
    if not (data_dir / "train.npz").is_file():
        pytest.skip(f"offline CIFAR-100 not found at {data_dir} (set KDCAP_CIFAR100_DIR)")
    argv = [
        "analyze_teachers",
        f"--data_dir={data_dir}",
        "--models=resnet8,resnet14",
        "--per_class=10",
        "--eval_per_class=5",
        "--epochs=1",
        "--batch_size=100",
        "--temperatures=1,4",
        f"--output_dir={tmp_path}",
        "--verbose=0",
    ]
    returned = example.main(argv)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results == returned
    assert results["config"]["num_train"] == 1000 and results["config"]["num_test"] == 500
    assert list(results["teachers"]) == ["resnet8", "resnet14"]
    for teacher in results["teachers"].values():
        assert teacher["params"] > 0 and 0.0 <= teacher["accuracy"] <= 1.0
        assert set(teacher["non_target"]) == {"1.0", "4.0"}
        for stats in teacher["non_target"].values():
            assert stats["variance"] > 0 and stats["std"] > 0 and stats["derived_average"] > 0
        assert 0.5 <= teacher["tau_star"]["median"] <= 20.0
        assert sum(teacher["tau_star"]["histogram"]["counts"]) == 500
        assert {"intra_class_angle", "inter_class_angle", "inter_class_weight_angle"} <= set(
            teacher["geometry"]
        )
        path = teacher["training"]["path"]  # relative, to the cached teacher.keras
        assert not os.path.isabs(path) and (REPO / path).is_file()
    assert len(results["rows"]) == 4
    agreement = results["agreement"]
    assert agreement["names"] == ["resnet8", "resnet14"]
    for metric in ("spearman", "kendall", "overlap@5", "overlap@10"):
        matrix = agreement[metric]
        assert matrix[0][0] == 1.0 and matrix[0][1] == matrix[1][0]
        assert -1.0 <= matrix[0][1] <= 1.0
    assert len(list((tmp_path / "teachers").glob("*/teacher.keras"))) == 2
    if results["figures"]:
        assert all((tmp_path / f).is_file() for f in results["figures"])

    # A rerun with the same training flags loads the cached teacher instead of training.
    again = example.main(argv[:2] + ["--models=resnet8"] + argv[3:])
    assert again["teachers"]["resnet8"]["training"]["cached"] is True
    assert again["teachers"]["resnet8"]["accuracy"] == results["teachers"]["resnet8"]["accuracy"]


def test_smoke_flag_sets_tiny_config(example):
    example.FLAGS.unparse_flags()
    example.FLAGS(["analyze_teachers", "--smoke"])
    cfg = example.config_from_flags()
    assert cfg["models"] == ["resnet8", "resnet14"]
    assert (cfg["per_class"], cfg["epochs"]) == (20, 1)
    assert cfg["output_dir"].endswith(os.path.join("analysis", "smoke"))
    example.FLAGS.unparse_flags()
