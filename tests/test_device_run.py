"""benchmarks/device_run.py: the bundle, the device call and the CPU dry run of the GPU run.

The dry run packs a synthetic CIFAR-100 copy (no wheel download, no network)
and runs the same sub-runs as on the device, on the device's backends (step_time
on jax and torch, the capacity protocol on jax), with tiny sizes, each as a
subprocess: once per suite (`one_backend`). On every backend the sub-runs that
backend would get are planned and their command lines parsed by their scripts.
Nothing asserts on wall-clock values.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import BENCHMARKS, REPO
from helpers import load_benchmark as _load

from keras_kdcap.data import load_cifar100_arrays

SCRIPT = BENCHMARKS / "device_run.py"


@pytest.fixture(scope="module")
def device_run():
    return _load("device_run")


def _fake_cifar(folder: Path, train_per_class: int, test_per_class: int) -> None:
    """A CIFAR-100-shaped npz pair: labels in a shuffled order, images that encode their index."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(100, dtype=np.uint8), per_class))
        images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
        images[:, 0, 0, 0] = np.arange(len(labels)) % 256
        images[:, 0, 0, 1] = np.arange(len(labels)) // 256
        np.savez(folder / f"{split}.npz", images=images, labels=labels)


def _reference_cut(folder: Path, split: str, classes: int, per_class: int):
    """The first `per_class` images of each class below `classes`, in file order (a loop)."""
    with np.load(folder / f"{split}.npz") as npz:
        images, labels = npz["images"], npz["labels"]
    counts = dict.fromkeys(range(classes), 0)
    keep = []
    for i, label in enumerate(labels):
        if label < classes and (per_class == 0 or counts[int(label)] < per_class):
            counts[int(label)] += 1
            keep.append(i)
    return images[keep], labels[keep].astype(np.int32)


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"{args[0]} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def test_flag_merging_and_data_sizes(device_run):
    merged = device_run.merge_flags(
        {"diagnose": None, "seeds": "0,1"},
        device_run.parse_flag_text("--nodiagnose --seeds='0,1,2' --epochs=3"),
    )
    assert merged == {"nodiagnose": None, "seeds": "0,1,2", "epochs": "3"}
    assert device_run.flag_args(merged) == ["--seeds=0,1,2", "--nodiagnose", "--epochs=3"]
    with pytest.raises(device_run.app.UsageError, match="not a --flag"):
        device_run.parse_flag_text("seeds=1")
    sizes = device_run.data_sizes(device_run.CAPACITY)
    cap = device_run.CAPACITY
    assert sizes["classes"] == int(cap["classes"])
    assert sizes["train_per_class"] == int(cap["per_class"]) + int(cap["val_per_class"])
    with pytest.raises(device_run.app.UsageError, match="classes"):
        device_run.data_sizes({**cap, "classes": "1"})


def test_capacity_estimate_counts_the_scripts_plan(device_run):
    capacity = _load("capacity_mismatch")
    for settings in (device_run.CAPACITY, device_run.CAPACITY_DRY):
        seeds = settings["seeds"].split(",")
        methods = settings["methods"].split(",")
        cfg = {
            "methods": methods,
            "small_methods": settings["small_methods"].split(","),
            "teacher_roles": ["small", "large"],
        }
        estimate = device_run.capacity_estimate(settings)
        temperatures = len(settings["tune_kd_temperatures"].split(","))
        assert estimate["tuning_runs"] == temperatures * ("kd_tuned" in methods)
        assert estimate["student_runs"] == len(seeds) * len(capacity.plan(cfg)) + temperatures
        assert estimate["seconds"] > 0


def test_missing_packages_exclude_the_devices_and_gpu_builds(device_run):
    have = device_run.device_packages(None)
    assert {"jax", "torch", "absl-py", "numpy"} <= have
    missing = device_run.missing_packages(have)
    assert "keras" in missing and missing["keras"] == keras.__version__
    assert not set(missing) & (have | device_run.NEVER_CARRY)
    notes = "x\nnvidia-h200: their image holds these. Packages: Absl_Py, keras, numpy.\n"
    assert device_run.device_packages(notes) == {"absl-py", "keras", "numpy"}


def test_dry_run_plans_this_backends_sub_runs(tmp_path, device_run):
    # What `run --dry_run` would start on this backend, checked without starting it: the
    # planned command lines parse in their scripts (the scripts themselves run on every
    # backend in test_benchmarks.py; the whole dry run, subprocesses and all, runs once below)
    backend = keras.backend.backend()
    bundle, out = tmp_path / "bundle", tmp_path / "results"
    cfg = {
        "dry_run": True,
        "tag": "dryrun",
        "backends": [backend],
        "capacity_backend": backend,
        "step_time_flags": "",
        "capacity_flags": "",
        "bundle_dir": str(bundle),
        "budget_s": 540.0,
    }
    sizes = device_run.data_sizes(device_run.CAPACITY_DRY)
    manifest = {"capacity_flags": "", "data": sizes}
    step, capacity = device_run.plan_runs(cfg, manifest, out, tmp_path / "work")
    assert (step.name, capacity.name) == (f"step_time_{backend}", f"capacity_mismatch_{backend}")
    for sub, script in ((step, "step_time"), (capacity, "capacity_mismatch")):
        assert sub.backend == backend and sub.dropped == [], sub
        assert sub.argv[0] == f"benchmarks/{script}.py" and sub.output.parent == out
        module = _load(script)
        module._common.parse_flags(module.FLAGS, [script, *sub.argv[1:]])
        settings = module.config_from_flags([script, *sub.argv[1:]])
        assert (REPO / settings["output"]).resolve() == sub.output.resolve()
        if script == "step_time":
            # tensorflow's `auto` would time graph and XLA both; the dry run takes graph only
            assert settings["jit_compile"] == ("false" if backend == "tensorflow" else "auto")
            assert (settings["pairs"], settings["policies"]) == ("resnet8:resnet8", ["kd"])
        else:
            assert settings["classes"] == sizes["classes"] and settings["seeds"] == [0]
            assert (REPO / settings["data_dir"]).resolve() == (bundle / "cifar100").resolve()
    assert capacity.record["estimate"]["student_runs"] > 0


# the device's backends: step_time on jax and torch, the capacity protocol on jax
DEVICE_BACKENDS = ("jax", "torch")


@pytest.mark.one_backend
def test_dry_run_packs_and_runs_every_sub_run(tmp_path, device_run):
    source, bundle, work, out = (tmp_path / n for n in ("source", "bundle", "work", "out"))
    _fake_cifar(source, train_per_class=8, test_per_class=4)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("OUT", None)

    packed = _run(
        ["pack", "--dry_run", "--no_wheels", f"--source_dir={source}", f"--bundle_dir={bundle}"],
        env,
    )
    manifest = json.loads((bundle / "bundle.json").read_text())
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    assert 0 < size < 64 * 1024 * 1024
    call = json.loads(packed.stdout.strip().splitlines()[-1])
    assert call == manifest["device_call"]
    assert len(call["command"]) < 2000 and " run " in call["command"]
    assert call["carry"] == [os.path.relpath(bundle, REPO)]
    sizes = device_run.data_sizes(device_run.CAPACITY_DRY)
    (x_train, y_train), (x_test, y_test) = load_cifar100_arrays(bundle / "cifar100")
    for split, got_x, got_y in (("train", x_train, y_train), ("test", x_test, y_test)):
        want_x, want_y = _reference_cut(
            source, split, sizes["classes"], sizes[f"{split}_per_class"]
        )
        np.testing.assert_array_equal(got_x, want_x)
        np.testing.assert_array_equal(got_y, want_y)
    assert len(np.unique(y_train)) == sizes["classes"]

    _run(
        [
            "run",
            "--dry_run",
            f"--bundle_dir={bundle}",
            f"--work_dir={work}",
            f"--backends={','.join(DEVICE_BACKENDS)}",
            f"--capacity_backend={DEVICE_BACKENDS[0]}",
        ],
        {**env, "OUT": str(out)},
    )
    results = work / "results"
    summary = json.loads((results / "device_run_dryrun.json").read_text())
    names = [r["name"] for r in summary["runs"]]
    backend = DEVICE_BACKENDS[0]
    assert names == [*(f"step_time_{b}" for b in DEVICE_BACKENDS), f"capacity_mismatch_{backend}"]
    for record in summary["runs"]:
        assert record["rc"] == 0 and record["produced"] and record["complete"], record
        assert not record["timed_out"]
        path = REPO / record["output"]
        assert path.resolve() == (results / path.name).resolve()
        assert (out / path.name).is_file()
    for name in DEVICE_BACKENDS:
        step = json.loads((results / f"step_time_{name}_dryrun.json").read_text())
        assert step["benchmark"] == "step_time" and step["environment"]["backend"] == name
    cap = json.loads((results / f"capacity_mismatch_{backend}_dryrun.json").read_text())
    assert cap["benchmark"] == "capacity_mismatch" and cap["runs"]
    assert cap["data"]["train"] == sizes["classes"] * int(device_run.CAPACITY_DRY["per_class"])
    assert summary["runs"][-1]["estimate"]["student_runs"] == len(cap["runs"]) + sum(
        len(t["trials"]) for role in cap["tuned_methods"].values() for t in role.values()
    )
    assert len(list(out.iterdir())) <= 8
    absolute = re.compile(f"(?<![.])({re.escape(str(tmp_path))}|{re.escape(str(REPO))})")
    for path in results.glob("*.json"):  # relative paths only ("../x" is one)
        assert not absolute.search(path.read_text()), path.name
