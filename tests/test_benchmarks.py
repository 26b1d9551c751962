"""The benchmark scripts end to end on tiny configurations, in-process.

Structure only: every timing here is noise, so nothing asserts on wall-clock
values beyond their being positive numbers.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import BENCHMARKS, REPO
from helpers import load_benchmark as _load


@pytest.fixture(scope="module")
def step_time():
    return _load("step_time")


@pytest.fixture(scope="module")
def capacity():
    return _load("capacity_mismatch")


@pytest.fixture
def one_thread():
    """`--threads=1` in the scripts, and torch's thread count restored afterwards."""
    if keras.backend.backend() != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _data_dir() -> Path:
    env = os.environ.get("KDCAP_CIFAR100_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data" / "cifar100"


def _argv(script: str, output: Path, flags: str) -> list[str]:
    """`script` with the space-separated `flags`, one thread, and `--output=<output>`."""
    return [script, *flags.split(), "--threads=1", f"--output={output}"]


def _positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_paired_ratio_and_table():
    common = _load("_common")
    ratio = common.paired_ratio([2.0, 4.0, 6.0], [1.0, 2.0, 2.0])
    assert ratio["value"] == 2.0 and ratio["of_minimums"] == 2.0
    assert ratio["q1"] <= ratio["value"] <= ratio["q3"]
    table = common.markdown_table(["a", "b"], [[1, 2]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |"]


def test_brute_force_search_matches_isats(step_time):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((6, 100)) * 4).astype("float32")
    labels = rng.integers(0, 100, 6).astype("int32")
    logits[np.arange(6), labels] += 10.0  # correctly classified: interior maximum
    fast = keras.ops.convert_to_numpy(
        step_time.isats_temperature(logits, labels, **step_time.ISATS_SEARCH)
    )
    np.testing.assert_allclose(fast, step_time.brute_force_search(logits, labels), rtol=1e-4)


def test_diagnostics(step_time):
    common = _load("_common")
    x, y = step_time.make_batch(4, 0)

    def tiny(seed):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input(step_time.IMAGE_SHAPE)
        pooled = keras.layers.GlobalAveragePooling2D()(inputs)
        logits = keras.layers.Dense(step_time.NUM_CLASSES, name="classifier")(pooled)
        return keras.Model(inputs, logits)

    student = tiny(0)
    student.compile(optimizer="sgd", loss=step_time._ce())
    distiller = step_time.Distiller(tiny(1), tiny(0))
    distiller.compile(optimizer="sgd", policy=step_time.make_policy("isats", None))
    # the "function" step API (step_time's default; test_step_time_tiny takes on_batch) on
    # every backend: train steps, and a predict step of the teacher the Distiller shares
    models = {"student": student, "distiller": distiller}
    runners = {name: common.StepRunner(model, x, y, kind="train") for name, model in models.items()}
    runners["teacher"] = common.StepRunner(distiller.teacher, x, kind="predict", api="function")
    for runner in runners.values():
        assert runner.api == "function"
        runner.run(2)
    counts = {name: common.op_count(model, "train", x, y) for name, model in models.items()}
    assert counts["student"]["ops"] > 0, counts
    assert counts["distiller"]["ops"] > counts["student"]["ops"], counts
    dtypes = step_time.dtype_check(["kd", "isats", "fgcr"], distiller.teacher, 4)
    assert not any(d["float64"] for d in dtypes.values()), dtypes
    check = step_time.teacher_check({"distill": (distiller, "train")})["distill"]
    assert check["trainable"] == check["student_trainable"] and check["teacher_trainable"] == 0


def test_step_time_tiny(step_time, tmp_path, one_thread):
    # resnet8 -> resnet8, not the named pair `small` (resnet20 -> resnet8): the same steps,
    # a third of the layers to build and compile; the name's lookup is checked here
    assert step_time.parse_pairs("small") == [("small", "resnet20", "resnet8")]
    output = tmp_path / "step_time.json"
    jit_compile = "true" if keras.backend.backend() == "jax" else "false"
    argv = _argv(
        "step_time",
        output,
        "--pairs=resnet8:resnet8 --repeats=2 --steps=1 --warmup=0 --policies=kd,isats"
        f" --jit_compile={jit_compile} --step_api=on_batch --nodiagnose",
    )  # on_batch: the function API compiles each step a second time (test_diagnostics runs it)
    returned = step_time.main(argv)
    results = json.loads(output.read_text())
    assert results["benchmark"] == "step_time"
    assert results["environment"]["backend"] == keras.backend.backend()
    assert results["environment"]["versions"]["keras"] == keras.__version__
    assert results["command"].startswith("step_time")
    assert results["step_api"]["chosen"] == "on_batch"
    (record,) = results["pairs"]
    assert (record["pair"], record["teacher"], record["student"]) == (
        "resnet8->resnet8",
        "resnet8",
        "resnet8",
    )
    expected = {
        "teacher",
        "student",
        "distill/kd",
        "distill/isats",
        "isats_search",
        "isats_brute_force",
    }
    if step_time.has_keras_distiller():
        expected.add("keras_distiller")
    assert expected <= set(record["times"])
    for summary in record["times"].values():
        assert summary["n"] == 2 and _positive(summary["median_ms"])
    ratios = record["ratios"]
    for name in (
        "distill/kd / (student + teacher)",
        "distill/isats / (student + teacher)",
        "distill/isats / distill/kd",
        "isats_search / isats_brute_force",
    ):
        assert _positive(ratios[name]["value"]) and _positive(ratios[name]["of_minimums"])
        assert isinstance(ratios[name]["meets"], bool) or ratios[name]["goal"] is None
    if step_time.has_keras_distiller():
        assert _positive(ratios["distill/kd / keras_distiller"]["value"])
    # exact except at near-ties of the grid (an untrained teacher has flat curves)
    assert record["diagnostics"]["isats_search_agreement"] >= 0.95
    assert "| ratio |" in results["markdown"]
    assert returned["pairs"][0]["ratios"].keys() == ratios.keys()


def test_capacity_mismatch_tuning_trials(capacity):
    cfg = {
        "isats_target_ratio": 2.0,
        "isats_fallback": 4.0,
        "isats_grid": "0.5:20:32",
        "isats_student_temperature": "tau",
        "tune_target_ratios": [1.0, 2.0, 3.0],
        "tune_fallbacks": [2.0, 4.0],
        "tune_grids": ["0.5:20:32", "1:10:16"],
        "tune_student_temperatures": ["tau", 4.0],
        "tune_mode": "sweep",
    }
    base = {"target_ratio": 2.0, "fallback": 4.0, "grid": "0.5:20:32", "student_temperature": "tau"}
    sweep = capacity.tuning_trials(cfg)
    assert sweep[0] == base and len(sweep) == 6
    # every other trial moves exactly one factor away from the base settings
    for trial in sweep[1:]:
        assert sum(trial[k] != base[k] for k in base) == 1
    assert {t["target_ratio"] for t in sweep} == {1.0, 2.0, 3.0}
    grid = capacity.tuning_trials({**cfg, "tune_mode": "grid"})
    assert len(grid) == 3 * 2 * 2 * 2 and len({tuple(t.values()) for t in grid}) == 24


def test_capacity_mismatch_isats_margin_setup(capacity):
    cfg = {"temperature": 4.0, "tune_isats_margins": [0.0, 0.25, 0.5]}
    isats = {"target_ratio": 2.0, "fallback": 3.0, "grid": "1:10:16", "student_temperature": "tau"}
    assert capacity.tuning_candidates("isats_margin", cfg) == [
        {"target_margin": 0.0},
        {"target_margin": 0.25},
        {"target_margin": 0.5},
    ]
    setup = capacity.method_setup("isats_margin", cfg, isats, {"target_margin": 0.25})
    policy = setup["policy"]
    assert isinstance(policy, capacity.ISATS) and policy.target_margin == 0.25
    assert (policy.fallback_temperature, policy.num_candidates) == (3.0, 16)
    assert (policy.min_temperature, policy.max_temperature) == (1.0, 10.0)
    assert policy.student_temperature is None and policy.target_temperature is None
    assert (setup["alpha"], setup["beta"], setup["temperature_scaling"]) == (0.1, 0.9, True)
    assert "kappa 0.25" in setup["description"]
    assert "(tuned on validation)" in setup["description"]
    with pytest.raises(ValueError, match="after its tuning"):
        capacity.method_setup("isats_margin", cfg, isats, {"kd_temperature": 4.0})
    assert "isats_margin" in capacity.METHODS and "isats_margin" in capacity.TUNED_METHODS
    assert "isats_margin" not in capacity.DEFAULT_METHODS  # on request only


class _TuningData:
    """The data of a tuning loop that trains nothing (see `_fake_students`)."""

    def sizes(self):
        return {"train": 10, "val": 10, "test": 10}


class _TuningStore:
    teachers = {"large": "the large teacher", "small": "the small teacher"}

    def get(self, role, seed):
        return None, 0.0


def _fake_students(monkeypatch, capacity, scores):
    """`train_student` replaced: a candidate's validation accuracy is `scores(candidate, seed)`."""
    calls = []

    def train_student(method, teacher, cached, data, seed, cfg, isats, splits, tuned=None):
        calls.append((method, teacher, seed, dict(isats), tuned))
        candidate = isats if method == "isats" else tuned
        value = scores(candidate, seed)
        return {
            "val_last": value,
            "val_best": value + 0.1,
            "seconds": 1.0,
            "last_epoch_metrics": {},
        }

    monkeypatch.setattr(capacity, "train_student", train_student)
    return calls


def test_capacity_mismatch_one_tuning_loop_keeps_its_records(capacity, monkeypatch):
    isats = {
        "target_ratio": 2.0,
        "fallback": 4.0,
        "grid": "0.5:20:32",
        "student_temperature": "tau",
    }
    cfg = {
        **{f"isats_{k}": v for k, v in isats.items()},
        "tune_target_ratios": [1.0, 2.0, 3.0],
        "tune_fallbacks": [4.0],
        "tune_grids": ["0.5:20:32"],
        "tune_student_temperatures": ["tau"],
        "tune_mode": "sweep",
        "tune_seeds": [0, 1],
        "tune_kd_temperatures": [2.0, 4.0, 8.0],
    }
    # ISATS: ratios 3 and 1 tie on the mean (0.5); the smaller ratio wins
    calls = _fake_students(
        monkeypatch,
        capacity,
        lambda c, seed: {1.0: 0.5, 2.0: 0.25, 3.0: 0.25 + 0.5 * seed}[c["target_ratio"]],
    )
    tuning = capacity.run_tuning(_TuningData(), _TuningStore(), cfg)
    assert tuning["choice"] == {**isats, "target_ratio": 1.0, "val_last_mean": 0.5}
    assert tuning["criterion"].endswith("(ties: smaller ratio)")
    assert (tuning["mode"], tuning["teacher"]) == ("sweep", "large")
    assert [t["target_ratio"] for t in tuning["trials"]] == [2.0, 1.0, 3.0] * 2
    assert set(tuning["trials"][0]) == {
        *isats,
        "seed",
        "val_last",
        "val_best",
        "seconds",
        "last_epoch_metrics",
    }
    assert calls[1][:4] == ("isats", "the large teacher", 0, {**isats, "target_ratio": 1.0})
    # a tuned method: a tie goes to the earlier candidate
    _fake_students(
        monkeypatch, capacity, lambda c, seed: {2.0: 0.3, 4.0: 0.6, 8.0: 0.6}[c["kd_temperature"]]
    )
    record = capacity.tune_method("kd_tuned", "small", _TuningData(), _TuningStore(), cfg, isats)
    assert record["choice"] == {"kd_temperature": 4.0} and record["val_last_mean"] == 0.6
    assert (record["method"], record["teacher"]) == ("kd_tuned", "small")
    assert record["criterion"].endswith("(ties: the earlier candidate)")
    assert len(record["trials"]) == 6
    assert set(record["trials"][0]) == {"kd_temperature", "seed", "val_last", "seconds"}


def _regime_results():
    return json.loads((BENCHMARKS / "results" / "capacity_mismatch_regime.json").read_text())


def test_capacity_mismatch_new_flag_keeps_finished_runs_resumable(capacity):
    # the regime results (25 finished runs) were written before --tune_isats_margins existed
    results = _regime_results()
    config = results["config"]
    with_default = {**config, "tune_isats_margins": [0.0, 0.25, 0.5]}
    assert capacity._resume_key(with_default) == capacity._resume_key(config)
    assert capacity._resume_key({**config, "tune_isats_margins": [0.5]}) != capacity._resume_key(
        config
    )
    # the regime command itself, isats_margin added, resumes that file
    argv = ["capacity_mismatch", *results["command"].split()[1:]]
    argv = [a + ",isats_margin" if a.startswith("--methods=") else a for a in argv]
    capacity._common.parse_flags(capacity.FLAGS, argv)
    cfg = capacity.config_from_flags(argv)
    assert cfg["tune_isats_margins"] == [0.0, 0.25, 0.5]
    assert capacity._resume_key(cfg) == capacity._resume_key(config)
    # existing methods' student folders keep their names (digests from before the flag)
    folders = [
        ("large", "isats", 0, results["isats_settings"], "isats-0-d7c3dd62f7bb"),
        ("large", "kd_tuned", 3, {"kd_temperature": 4.0}, "kd_tuned-3-8ebe4d907f52"),
        (None, "ce", 0, None, "ce-0-01bd0e15005c"),
    ]
    for role, method, seed, settings, name in folders:
        assert capacity.student_folder(with_default, role, method, seed, settings).name == name


def _tiny_capacity_argv(output: Path, flags: str) -> list[str]:
    """A one-image-per-class run of capacity_mismatch on the offline CIFAR-100 copy, with
    the space-separated `flags`, writing `output` and caching in the `cache` beside it."""
    if not (_data_dir() / "train.npz").is_file():
        pytest.skip(f"offline CIFAR-100 not found at {_data_dir()} (set KDCAP_CIFAR100_DIR)")
    tiny = "--small_teacher=resnet8 --large_teacher=resnet14 --per_class=1 --test_per_class=1"
    return [
        *_argv("capacity_mismatch", output, f"{tiny} --teacher_epochs=1 --batch_size=50 {flags}"),
        f"--data_dir={_data_dir()}",
        f"--cache_dir={output.parent / 'cache'}",
    ]


@pytest.mark.one_backend
def test_capacity_mismatch_tiny(capacity, tmp_path, one_thread):
    output = tmp_path / "capacity.json"
    flat = "--teacher_roles=small,large_flat --flat_label_smoothing=0.2"  # no `large` students
    argv = _tiny_capacity_argv(
        output,
        f"--student=resnet8 --val_per_class=1 --epochs=1 --seeds=0 --methods=ce,kd,isats {flat}"
        " --teacher_dtype_policy=float32",
    )
    returned = capacity.main(argv)
    results = json.loads(output.read_text())
    assert results["benchmark"] == "capacity_mismatch"
    assert results["complete"] is True  # partial records (after each run) say False
    assert results["data"] == {"train": 100, "val": 100, "test": 100}
    assert set(results["teachers"]) == {"small", "large", "large_flat"}
    for teacher in results["teachers"].values():
        assert teacher["params"] > 0
        for key in ("train_accuracy", "test_accuracy", "target_first"):
            assert 0.0 <= teacher[key] <= 1.0
        assert teacher["non_target_variance_T"] > 0
        assert 0.5 <= teacher["tau_star_median"] <= 20.0  # the default ISATS grid
    assert "spearman_vs_small" not in results["teachers"]["small"]
    for role in ("large", "large_flat"):
        assert -1.0 <= results["teachers"][role]["spearman_vs_small"] <= 1.0
        assert 0.0 <= results["teachers"][role]["overlap5_vs_small"] <= 1.0
    assert [(r["teacher"], r["method"]) for r in results["table"]] == [
        (None, "ce"),
        ("small", "kd"),
        ("small", "isats"),
        ("large_flat", "kd"),
        ("large_flat", "isats"),
    ]
    assert set(results["mismatch_check"]) == {"large", "large_flat"}
    assert set(results["regime"]) == {"large_flat"}  # no KD run from `large`
    smoothed = Path(results["teachers"]["large_flat"]["path"]).name
    assert smoothed.startswith("resnet14-smoothed-")
    for row in results["table"]:
        assert 0.0 <= row["test_last_mean"] <= 1.0 and row["seeds"] == [0]
    for run in results["runs"]:
        assert run["eval_epochs"] == [1] and run["seconds"] > 0
        if run["method"] != "ce":
            assert 0.0 <= run["last_epoch_metrics"]["target_first"] <= 1.0
    assert results["environment"]["backend"] == keras.backend.backend()
    assert "| teacher | method |" in results["markdown"]
    assert returned["table"] == results["table"]


def test_isats_memory_tiny(tmp_path, one_thread):
    # compiled memory on JAX, a child process per search form on torch (the scan only here:
    # --torch_grid_rows=0, one child is enough for the structure), timing everywhere
    isats_memory = _load("isats_memory")
    output = tmp_path / "isats_memory.json"
    rows, classes = 16, 64
    isats_memory.run(
        _argv(
            "isats_memory",
            output,
            f"--rows={rows} --classes={classes} --candidates=4 --time_rows=4 --repeats=1"
            " --policies=kd,isats --torch_grid_rows=0 --torch_memory_calls=2",
        )
    )
    result = json.loads(output.read_text())
    # the forms may differ at float32 near-ties (isats_temperature): recorded, not asserted
    assert isinstance(result["timing"]["same_temperatures"], bool)
    assert result["timing"]["rows"] == 4 and result["settings"]["torch_grid_rows"] == 0
    memory = result["memory"]
    backend = keras.backend.backend()
    if backend == "jax":
        searches = [(r["search"], r["refine"]) for r in memory if r["what"] == "search"]
        assert searches == [("grid", False), ("grid", True), ("scan", False), ("scan", True)]
        policies = [r["policy"] for r in memory if r["what"] == "kd_loss+grad"]
        assert policies == ["kd", "isats", "isats search=grid"]
    elif backend == "torch" and isats_memory._torch_unmeasured() is None:
        # structure only: at this size the peaks are the allocator's noise
        assert [(r["search"], r["rows"]) for r in memory] == [("scan", rows)]
        for record in memory:
            assert record["temp_bytes"] == record["peak_bytes"] - record["before_bytes"]
            assert record["temp_in_logits"] == pytest.approx(
                record["temp_bytes"] / (4 * record["rows"] * classes)
            )
            assert len(record["later_calls_in_logits"]) == 1
            assert "VmHWM" in record["measure"] or "cuda" in record["measure"]
        assert isinstance(memory[0]["within_limit"], bool)
    else:
        assert memory == []


@pytest.mark.one_backend
def test_cache_speed_tiny(tmp_path, one_thread):
    cache_speed = _load("cache_speed")
    output = tmp_path / "cache_speed.json"
    argv = _argv(
        "cache_speed",
        output,
        "--teacher=resnet8 --student=resnet8 --classes=10 --batch_size=8 --steps=2 --repeats=2",
    )
    returned = cache_speed.main(argv)
    result = json.loads(output.read_text())
    assert result["benchmark"] == "cache_speed"
    assert result["environment"]["backend"] == keras.backend.backend()
    assert result["command"] == " ".join(argv)
    names = {"student", "uncached", "cached", "cached_no_guard", "teacher_pass"}
    assert set(result["seconds_per_step"]) == names
    for name, values in result["seconds_per_step"].items():
        assert len(values) == 2 and all(_positive(v) for v in values)
        assert result["min_seconds_per_step"][name] == min(values)
    best = result["min_seconds_per_step"]
    ratios = result["ratios_of_min"]
    assert ratios["cached_over_uncached"] == pytest.approx(best["cached"] / best["uncached"])
    assert ratios["speedup_cached_vs_uncached"] == pytest.approx(1 / ratios["cached_over_uncached"])
    assert returned["ratios_of_median"].keys() == ratios.keys()


def test_cache_speed_rejects_zero_steps():
    from absl import app

    cache_speed = _load("cache_speed")
    with pytest.raises(app.UsageError, match="--steps"):
        cache_speed.main(["cache_speed", "--steps=0"])


def _kd_row(role, mean, std=0.01):
    return {"teacher": role, "method": "kd", "test_last_mean": mean, "test_last_std": std}


@pytest.mark.parametrize(
    "small_acc, large_acc, kd_small, kd_large, holds",
    [
        (0.20, 0.22, 0.17, 0.16, True),  # more accurate, teaches worse: the regime
        (0.20, 0.22, 0.16, 0.17, False),  # more accurate and teaches better
        (0.20, 0.18, 0.17, 0.16, False),  # less accurate: the ordinary case
    ],
)
def test_capacity_mismatch_regime_check(capacity, small_acc, large_acc, kd_small, kd_large, holds):
    teachers = {"small": {"test_accuracy": small_acc}, "large": {"test_accuracy": large_acc}}
    table = [
        {"teacher": None, "method": "ce", "test_last_mean": 0.1, "test_last_std": 0.0},
        _kd_row("small", kd_small),
        _kd_row("large", kd_large),
    ]
    check = capacity.regime_check(table, teachers)
    assert check["holds"] is holds
    flat = capacity.regime_check(
        [{**r, "teacher": "large_flat"} if r["teacher"] == "large" else r for r in table],
        {**teachers, "large_flat": teachers["large"]},
        role="large_flat",
    )
    assert flat["holds"] is holds and "(large_flat)" in flat["message"]
    assert check["kd_large_minus_small"] == pytest.approx(kd_large - kd_small)
    assert ("Regime shown" in check["message"]) is holds
    assert capacity.regime_check(table[:2], teachers) is None  # no KD row of the large one


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--teacher_roles=small,huge"], "--teacher_roles"),
        (["--teacher_roles=large_flat"], "--flat_label_smoothing > 0"),
        (["--flat_label_smoothing=1.5"], "--flat_label_smoothing must"),
        (["--classes=5"], "--classes must lie in \\[6, 100\\]"),
        (["--small_methods=ats", "--methods=kd"], "--small_methods"),
        (["--tune_ats=4:2,3"], "tau1:tau2 pairs"),
        (["--tune_kd_temperatures=0,2"], "all > 0"),
        (["--tune_isats_margins=0.5,1.5"], "--tune_isats_margins .*\\[0, 1\\]"),
        (["--tune_isats_margins=-0.1"], "--tune_isats_margins"),
        (["--tune_isats_margins=a"], "--tune_isats_margins must be a comma list"),
    ],
)
def test_capacity_mismatch_rejects_bad_teacher_flags(capacity, flags, message):
    from absl import app

    with pytest.raises(app.UsageError, match=message):
        capacity._common.parse_flags(capacity.FLAGS, ["capacity_mismatch", *flags])
        capacity.config_from_flags(["capacity_mismatch", *flags])


@pytest.mark.one_backend
def test_capacity_mismatch_teachers_only(capacity, tmp_path, one_thread):
    output = tmp_path / "teachers.json"
    argv = _tiny_capacity_argv(output, "--val_per_class=0 --tune --teachers_only")
    results = capacity.main(argv)
    assert set(results["teachers"]) == {"small", "large", "large_regt"}
    assert results["runs"] == [] and results["tuning"] is None and results["regime"] == {}
    assert "| teacher | model |" in results["markdown"]
    assert "| teacher | method |" not in results["markdown"]  # no empty student table
    assert -1.0 <= results["teachers"]["large"]["spearman_vs_small"] < 1.0
    # --tune_only on the same teachers (loaded from the cache): ISATS tuned, then a stop
    argv = _tiny_capacity_argv(
        tmp_path / "tuned.json",
        "--val_per_class=1 --epochs=1 --tune_only --tune_target_ratios=1,2 --tune_fallbacks=4"
        " --tune_grids=0.5:20:32 --tune_student_temperatures=tau",
    )
    tuned = capacity.main(argv)
    assert all(t["cached"] for t in tuned["teachers"].values()) and tuned["runs"] == []
    tuning = tuned["tuning"]
    assert [t["target_ratio"] for t in tuning["trials"]] == [2.0, 1.0]
    best = max(tuning["trials"], key=lambda t: (t["val_last"], -t["target_ratio"]))
    assert tuning["choice"] == {
        **{k: best[k] for k in capacity.TUNED},
        "val_last_mean": best["val_last"],
    }
    assert tuned["isats_settings"] == {k: best[k] for k in capacity.TUNED}
    assert json.loads(output.read_text())["complete"] is True


def test_capacity_paired_difference_reference(capacity):
    a = {0: 0.50, 1: 0.60, 2: 0.55, 3: 0.52, 4: 0.58}
    b = {0: 0.48, 1: 0.57, 2: 0.56, 3: 0.50, 4: 0.55, 5: 0.90}  # seed 5 has no pair
    diffs = np.array([a[s] - b[s] for s in range(5)], np.float64)
    half = 2.7764451051977987 * diffs.std(ddof=1) / np.sqrt(5)  # t(0.975, 4 dof)
    result = capacity.paired_difference(a, b)
    assert result["seeds"] == [0, 1, 2, 3, 4] and result["n"] == 5
    assert result["mean"] == pytest.approx(diffs.mean(), abs=1e-12)
    assert result["std"] == pytest.approx(diffs.std(ddof=1), abs=1e-12)
    assert result["ci95"] == pytest.approx([diffs.mean() - half, diffs.mean() + half], abs=1e-9)
    assert result["excludes_zero"] is bool(diffs.mean() - half > 0)
    shifted = capacity.paired_difference({s: v + 0.1 for s, v in b.items()}, b)
    assert shifted["excludes_zero"] is True  # a constant gain: zero spread
    assert capacity.paired_difference({0: 0.5}, b) is None  # one common seed: no interval


def test_capacity_paired_table_chooses_best_kd_on_validation(capacity):
    def run(method, seed, test, val):
        return {
            "teacher": "large",
            "method": method,
            "seed": seed,
            "test_last": test,
            "val_last": val,
        }

    runs = [run("kd", s, 0.30 + s / 100, 0.10) for s in range(3)]  # better on test
    runs += [run("kd_tuned", s, 0.20, 0.20) for s in range(3)]  # better on validation
    runs += [run("isats", s, 0.25 + s / 50, 0.15) for s in range(3)]
    runs.append({**run("ce", 0, 0.1, 0.1), "teacher": None})
    rows = {r["method"]: r for r in capacity.paired_table(runs)}
    assert set(rows) == {"kd", "isats"}
    assert {r["reference"] for r in rows.values()} == {"kd_tuned"}
    isats = np.array([0.25 + s / 50 - 0.20 for s in range(3)])
    assert rows["isats"]["mean"] == pytest.approx(isats.mean(), abs=1e-12)


def _records(path):
    return {(r["teacher"], r["method"], r["seed"]): r for r in json.loads(path.read_text())["runs"]}


@pytest.mark.one_backend
def test_capacity_mismatch_tuned_kd_and_resume(capacity, tmp_path, one_thread):
    from absl import app

    output = tmp_path / "resume.json"
    argv = _tiny_capacity_argv(
        output,
        "--student=resnet8 --val_per_class=1 --epochs=1 --seeds=0,1 --methods=kd,kd_tuned"
        " --small_methods=kd --tune_kd_temperatures=2,4",
    )
    first = capacity.main(argv)
    tuning = first["tuned_methods"]["kd_tuned"]["large"]
    means = [
        np.mean([t["val_last"] for t in tuning["trials"] if t["kd_temperature"] == temp])
        for temp in (2.0, 4.0)
    ]
    assert tuning["choice"] == {"kd_temperature": [2.0, 4.0][int(np.argmax(means))]}
    assert "small" not in first["tuned_methods"]["kd_tuned"]  # --small_methods=kd
    kd = {r["seed"]: r for r in first["runs"] if (r["teacher"], r["method"]) == ("large", "kd")}
    for run in (r for r in first["runs"] if r["method"] == "kd_tuned"):
        if tuning["choice"]["kd_temperature"] == 4.0:  # kd's own T: its run is reused
            assert run["same_run_as"] == "kd" and run["accuracy"] == kd[run["seed"]]["accuracy"]
        else:
            assert "same_run_as" not in run
    assert {(r["teacher"], r["method"]) for r in first["table"]} == {
        ("small", "kd"),
        ("large", "kd"),
        ("large", "kd_tuned"),
    }
    assert {p["teacher"] for p in first["paired"]} == {"large"}
    assert first["regime"]["large"]["kd_large_minus_small_paired"]["n"] == 2
    assert "excludes 0" in first["markdown"]
    before = _records(output)
    # a run killed after seed 0: its file keeps seed 0's runs and the tuning
    cut = json.loads(output.read_text())
    cut["runs"] = [r for r in cut["runs"] if r["seed"] == 0]
    cut["complete"] = False
    output.write_text(json.dumps(cut))
    resumed = capacity.main(argv)
    after = _records(output)
    assert after.keys() == before.keys() and resumed["complete"] is True
    for key, record in after.items():
        kept = key[2] == 0
        assert (record["seconds"] == before[key]["seconds"]) is kept  # kept, not retrained
    assert resumed["tuned_methods"] == first["tuned_methods"]
    capacity._common.parse_flags(capacity.FLAGS, [*argv, "--noresume"])
    fresh = capacity.resume_state(capacity.config_from_flags([*argv, "--noresume"]))
    assert fresh == {"tuning": None, "tuned": {}, "runs": [], "teachers": {}}  # starts over
    other = [*argv, "--lr=0.0123"]  # other settings: refused, the file is kept
    capacity._common.parse_flags(capacity.FLAGS, other)
    with pytest.raises(app.UsageError, match=r"--lr: .* -> 0.0123.*--noresume"):
        capacity.resume_state(capacity.config_from_flags(other))
    assert _records(output) == after


def test_resumed_runs_are_never_paired_with_a_retrained_teacher(capacity):
    from absl import app

    recorded = {"large": {"test_accuracy": 0.475, "val_accuracy": 0.486, "train_accuracy": 1.0}}
    runs = [{"teacher": "large", "method": "kd", "seed": 0}, {"teacher": None, "method": "ce"}]
    same = {"large": {**recorded["large"], "path": "runs/t"}}
    capacity.check_same_teachers(recorded, same, runs, "r.json")  # the same teacher: resumes
    retrained = {"large": {**same["large"], "test_accuracy": 0.464}}
    with pytest.raises(app.UsageError, match=r"large teacher .*test_accuracy 0.464 now, 0.475"):
        capacity.check_same_teachers(recorded, retrained, runs, "r.json")
    # a teacher no finished run used may differ
    capacity.check_same_teachers(recorded, retrained, runs[1:], "r.json")


def test_capacity_mismatch_refuses_a_cut_results_file(capacity, tmp_path):
    from absl import app

    output = tmp_path / "cut.json"
    output.write_text('{"benchmark": "capacity_mis')
    argv = _tiny_capacity_argv(output, "--val_per_class=1")
    with pytest.raises(app.UsageError, match="--noresume"):
        capacity.main(argv)


class _KilledError(Exception):
    """Stands for a kill right after a commit."""


@pytest.mark.one_backend
def test_capacity_mismatch_student_resumes_after_its_last_epoch(
    capacity, tmp_path, one_thread, monkeypatch
):
    flags = "--student=resnet8 --val_per_class=0 --epochs=2 --seeds=0 --methods=kd"
    whole = capacity.main(_tiny_capacity_argv(tmp_path / "whole.json", flags))
    assert not list((tmp_path / "cache" / "students").iterdir())  # cleared after each run
    argv = _tiny_capacity_argv(tmp_path / "cut.json", flags)
    commit = capacity.StudentProgress.commit

    def commit_then_die(self, model, state):
        commit(self, model, state)
        raise _KilledError(state["epoch"])

    monkeypatch.setattr(capacity.StudentProgress, "commit", commit_then_die)
    with pytest.raises(_KilledError):
        capacity.main(argv)  # the first student dies right after committing epoch 1
    monkeypatch.undo()
    (folder,) = (tmp_path / "cache" / "students").iterdir()
    assert json.loads((folder / "progress.json").read_text())["epoch"] == 1
    resumed = capacity.main(argv)
    first = resumed["runs"][0]
    assert first["resumed_after_epoch"] == 1
    assert "resumed_after_epoch" not in resumed["runs"][1]
    for run, reference in zip(resumed["runs"], whole["runs"], strict=True):
        assert run["accuracy"] == reference["accuracy"]  # the same finished numbers
        assert run["last_epoch_metrics"]["loss"] == pytest.approx(
            reference["last_epoch_metrics"]["loss"], rel=1e-5
        )


@pytest.mark.one_backend  # its subprocesses on the backend under test (torch starts quickest)
def test_capacity_mismatch_survives_sigkill(tmp_path):
    import signal
    import subprocess
    import time

    output = tmp_path / "killed.json"
    argv = _tiny_capacity_argv(
        output, "--student=resnet8 --val_per_class=0 --epochs=3 --seeds=0 --methods=kd"
    )
    command = [sys.executable, str(REPO / "benchmarks" / "capacity_mismatch.py"), *argv[1:]]
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend(), "CUDA_VISIBLE_DEVICES": ""}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    students = tmp_path / "cache" / "students"
    deadline = time.monotonic() + 300
    while not list(students.glob("*/progress.json")) and process.poll() is None:
        assert time.monotonic() < deadline, "no student epoch was committed"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)  # mid-run: epoch 1 committed, epoch 2 running
    process.wait()
    assert process.returncode == -signal.SIGKILL
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[resume] student continues after epoch" in done.stdout
    results = json.loads(output.read_text())
    assert results["complete"] is True
    assert [(r["teacher"], r["method"]) for r in results["runs"]] == [
        ("small", "kd"),
        ("large", "kd"),
    ]
    assert any(r.get("resumed_after_epoch", 0) >= 1 for r in results["runs"])
    assert all(r["eval_epochs"] == [3] and len(r["accuracy"]["test"]) == 1 for r in results["runs"])
    assert not list(students.iterdir())


def _strings(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def test_results_files_hold_relative_paths_only():
    import re

    absolute = re.compile(r"(^|[\s=])/(work|root|tmp|home|Users)/")
    for path in sorted((REPO / "benchmarks" / "results").glob("*.json")):
        found = [s for s in _strings(json.loads(path.read_text())) if absolute.search(s)]
        assert not found, f"{path.name} records absolute paths: {found[:3]}"


def test_write_json_rewrites_paths_relative_to_the_repository(tmp_path):
    common = _load("_common")
    inside = str(REPO / "runs" / "x")
    payload = {"path": inside, "command": f"run --data_dir={REPO.parent / 'shared' / 'd'} -v"}
    common.write_json(tmp_path / "r.json", payload)
    written = json.loads((tmp_path / "r.json").read_text())
    assert written == {"path": "runs/x", "command": "run --data_dir=../shared/d -v"}
