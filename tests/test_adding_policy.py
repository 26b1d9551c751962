"""docs/policies/adding.md: a policy defined outside the package, run by name through the scripts.

The policy lives in a temporary module (as a user's would); the example
(`examples/cifar100_isats.py`) and `benchmarks/step_time.py` import it with
`--policy_module`, find it by its `registry_name` and build it from
`--policy_args`. Tiny settings: seconds per backend.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import reference as ref
from helpers import assert_close, to_numpy

from keras_kdcap.policies import registry

REPO = Path(__file__).resolve().parents[1]
NAME = "test_smoothed_kd"
MODULE = "user_smoothed_kd"

#: what a user writes: one file, one class with a `registry_name`.
POLICY_SOURCE = textwrap.dedent(
    '''
    """KD towards the teacher's tempered softmax mixed with the uniform distribution."""

    import keras
    from keras import ops

    from keras_kdcap import ops as kd_ops
    from keras_kdcap.policies import TemperaturePolicy
    from keras_kdcap.validation import check_fraction, check_positive


    @keras.saving.register_keras_serializable(package="user")
    class SmoothedKD(TemperaturePolicy):
        """`t = (1 - eps) softmax(f / T) + eps / C`, student at `T`."""

        registry_name = "test_smoothed_kd"
        requires_labels = False

        def __init__(self, temperature: float = 4.0, smoothing: float = 0.1, name=None, **kwargs):
            super().__init__(name=name, **kwargs)
            self.temperature = check_positive("temperature", temperature)
            self.smoothing = check_fraction("smoothing", smoothing)

        def compute_target(self, teacher_logits, labels):
            classes = teacher_logits.shape[-1]
            probs = kd_ops.tempered_softmax(teacher_logits, self.temperature)
            probs = (1.0 - self.smoothing) * probs + self.smoothing / classes
            return probs, ops.full((ops.shape(teacher_logits)[0],), self.temperature), {}

        def get_config(self):
            return {**super().get_config(), "temperature": self.temperature,
                    "smoothing": self.smoothing}
    '''
)


@pytest.fixture
def user_policy(tmp_path, monkeypatch):
    """The module on `sys.path`, not yet imported; unregistered and unloaded afterwards."""
    (tmp_path / f"{MODULE}.py").write_text(POLICY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    registry.POLICIES.pop(NAME, None)
    sys.modules.pop(MODULE, None)


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _data_dir() -> Path:
    from conftest import cifar100_dir

    path = cifar100_dir()
    if not (path / "train.npz").exists():
        pytest.skip(f"offline CIFAR-100 not found at {path} (set KDCAP_CIFAR100_DIR)")
    return path


def test_user_policy_computes_its_formula(user_policy, rng):
    module = __import__(MODULE)
    policy = registry.get_policy(NAME, temperature=2.0, smoothing=0.2)
    assert isinstance(policy, module.SmoothedKD)
    f = rng.normal(size=(8, 5)).astype(np.float32) * 3
    probs, temperature = policy(f)
    expected = 0.8 * ref.tempered_softmax(f, 2.0) + 0.2 / 5
    assert_close("SmoothedKD.target", to_numpy(probs), expected)
    np.testing.assert_array_equal(to_numpy(temperature), np.full(8, 2.0, np.float32))


@pytest.mark.one_backend
def test_user_policy_runs_by_name_through_the_example(user_policy, tmp_path):
    from keras_kdcap.models import get_model

    data_dir = _data_dir()
    teacher = tmp_path / "teacher.keras"
    get_model("resnet8", 100).save(teacher)  # untrained: only the plumbing is checked
    out = tmp_path / "run"
    example = _load(REPO / "examples" / "cifar100_isats.py", "cifar100_isats_adding")
    argv = [
        "cifar100_isats",
        f"--policy_module={MODULE}",
        f"--policy={NAME}",
        "--policy_args=temperature=2,smoothing=0.2",
        f"--teacher={teacher}",
        "--student=resnet8",
        f"--data_dir={data_dir}",
        f"--output_dir={out}",
        "--per_class=1",
        "--test_per_class=1",
        "--epochs=1",
        "--batch_size=50",
        "--noanalysis",
        "--notensorboard",
        "--verbose=0",
    ]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = example.main(argv)
    assert status == 0, stderr.getvalue()[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["policy"] == NAME
    assert metrics["config"]["policy_args"] == {"temperature": 2.0, "smoothing": 0.2}
    kd = metrics["student"]["history"]["kd_loss"]
    assert len(kd) == 1 and np.isfinite(kd[0]) and kd[0] > 0
    assert (out / "student.keras").is_file()


@pytest.mark.one_backend
def test_user_policy_runs_by_name_through_step_time(user_policy, tmp_path):
    benchmarks = str(REPO / "benchmarks")
    if benchmarks not in sys.path:
        sys.path.insert(0, benchmarks)
    step_time = _load(REPO / "benchmarks" / "step_time.py", "step_time_adding")
    output = tmp_path / "step_time.json"
    argv = [
        "step_time",
        f"--policy_module={MODULE}",
        f"--policies=kd,{NAME}",
        "--policy_args=smoothing=0.3",
        "--pairs=resnet8:resnet8",
        "--batch_size=8",
        "--repeats=1",
        "--steps=1",
        "--warmup=0",
        "--jit_compile=false",  # no compilation: seconds on every backend
        "--step_api=function",
        "--nodiagnose",
        "--nokeras_distiller",
        "--threads=1",
        f"--output={output}",
    ]
    step_time.main(argv)
    results = json.loads(output.read_text())
    assert results["config"]["policy_args"] == {"smoothing": "0.3"}
    (record,) = results["pairs"]
    assert {"distill/kd", f"distill/{NAME}"} <= set(record["times"])
    assert record["times"][f"distill/{NAME}"]["median_ms"] > 0
    policy = step_time.make_policy(NAME, None, {"smoothing": "0.3"})
    assert (policy.smoothing, policy.temperature) == (0.3, 4.0)
    with pytest.raises(step_time.app.UsageError, match="`smoothing` must lie in"):
        step_time.check_policy_args([NAME], "smoothing=2")
    with pytest.raises(step_time.app.UsageError, match="'gamma' is an argument of none"):
        step_time.check_policy_args(["kd", NAME], "gamma=2")
