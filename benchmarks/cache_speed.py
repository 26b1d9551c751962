"""Step time of offline KD (cached teacher logits) against the student alone and plain KD.

Times one epoch of `fit` over the same `--steps` batches (resnet32x4
teacher -> resnet8x4 student by default, CIFAR-shaped random inputs), per
step, for:

- `student`: the student trained alone with cross-entropy (the floor);
- `uncached`: `Distiller.fit`, running the teacher's forward pass every step;
- `cached`: `Distiller.fit` on `{"inputs": x, "teacher_logits": f}` batches
  (keras_kdcap.cache.TeacherCache), skipping the teacher;
- `cached_no_guard`: the same through `keras.Model.fit`, without the
  Distiller's per-batch input checks (which read the logs every step);
- `teacher_pass`: the one-off cost per batch of building the cache
  (`teacher.predict`).

`fit` is timed rather than `train_on_batch`, whose per-call bookkeeping (on
JAX, writing every variable back, the teacher's included) is not what a
training run pays. Each configuration is compiled first, then the
configurations are timed in turn within each repeat so that a change of
machine load affects them alike; the minimum over repeats is the headline
(a shared machine only ever slows a step down), the median is recorded too.
Prints a table and writes `benchmarks/results/cache_speed_<backend>.json`.

Usage:
    KERAS_BACKEND=jax python benchmarks/cache_speed.py --repeats=5 --steps=8
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from absl import flags

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

from keras_kdcap import ISATS, Distiller  # noqa: E402
from keras_kdcap.cache import TeacherCache  # noqa: E402
from keras_kdcap.experiment.cli import define_flag_table  # noqa: E402
from keras_kdcap.models import get_model  # noqa: E402

FLAGS = flags.FlagValues()
define_flag_table(
    FLAGS,
    {
        "teacher": ("resnet32x4", "Teacher zoo model."),
        "student": ("resnet8x4", "Student zoo model."),
        "batch_size": (64, "Images per step."),
        "classes": (100, "Number of classes."),
        "steps": (8, "Batches per timed epoch."),
        "repeats": (5, "Timed epochs per configuration."),
        "output": (None, "JSON path (default: results/cache_speed_<backend>.json)."),
    },
)
_common.define_threads_flag(FLAGS)


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Builds the models and times the five configurations.

    Args:
        cfg: the flag values (teacher, student, batch_size, classes, steps,
            repeats, threads).

    Returns:
        The result record written to JSON.
    """
    environment = _common.environment_with_threads(cfg["threads"])
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    num = cfg["batch_size"] * cfg["steps"]
    x = rng.normal(size=(num, 32, 32, 3)).astype("float32")
    y = rng.integers(0, cfg["classes"], num).astype("int32")
    teacher = get_model(cfg["teacher"], num_classes=cfg["classes"])

    def optimizer():
        return keras.optimizers.SGD(0.05, momentum=0.9)

    def distiller():
        model = Distiller(teacher, get_model(cfg["student"], num_classes=cfg["classes"]))
        model.compile(optimizer(), policy=ISATS())
        return model

    student = get_model(cfg["student"], num_classes=cfg["classes"])
    student.compile(optimizer(), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    uncached, cached, unguarded = distiller(), distiller(), distiller()
    cache = TeacherCache(teacher, batch_size=cfg["batch_size"]).build(x, y)
    cached_x, cached_y, _ = cache.arrays()
    fit = dict(batch_size=cfg["batch_size"], epochs=1, shuffle=False, verbose=0)

    epochs = {
        "student": lambda: student.fit(x, y, **fit),
        "uncached": lambda: uncached.fit(x, y, **fit),
        "cached": lambda: cached.fit(cached_x, cached_y, **fit),
        "cached_no_guard": lambda: keras.Model.fit(unguarded, cached_x, cached_y, **fit),
        "teacher_pass": lambda: teacher.predict(x, batch_size=cfg["batch_size"], verbose=0),
    }
    # one call = one epoch of `steps` batches: compiled by a first call, then
    # timed in turn within each repeat
    per_epoch = _common.round_robin(
        {name: _common.CallableRunner(call) for name, call in epochs.items()},
        repeats=cfg["repeats"],
        steps=1,
        warmup=1,
    )
    timings = {name: [t / cfg["steps"] for t in values] for name, values in per_epoch.items()}
    best = {name: min(values) for name, values in timings.items()}
    median = {name: statistics.median(values) for name, values in timings.items()}

    def ratios(figures: dict) -> dict:
        return {
            "cached_over_student": figures["cached"] / figures["student"],
            "cached_over_uncached": figures["cached"] / figures["uncached"],
            "uncached_over_student": figures["uncached"] / figures["student"],
            "speedup_cached_vs_uncached": figures["uncached"] / figures["cached"],
            "cached_no_guard_over_student": figures["cached_no_guard"] / figures["student"],
        }

    return {
        "benchmark": "cache_speed",
        "backend": keras.backend.backend(),
        "environment": environment,
        "load_average_at_end": _common.load_average(),
        "teacher": cfg["teacher"],
        "student": cfg["student"],
        "batch_size": cfg["batch_size"],
        "classes": cfg["classes"],
        "policy": "ISATS()",
        "steps_per_timing": cfg["steps"],
        "repeats": cfg["repeats"],
        "seconds_per_step": timings,
        "min_seconds_per_step": best,
        "median_seconds_per_step": median,
        "ratios_of_min": ratios(best),
        "ratios_of_median": ratios(median),
    }


def print_table(result: dict) -> None:
    """Prints the per-step times and the ratios."""
    print(
        f"\n{result['teacher']} -> {result['student']}, batch {result['batch_size']}, "
        f"backend {result['backend']}, {result['repeats']} x {result['steps_per_timing']} steps"
    )
    print(f"{'configuration':<18}{'min s/step':>12}{'median':>10}{'min/student':>13}")
    floor = result["min_seconds_per_step"]["student"]
    for name, value in result["min_seconds_per_step"].items():
        median = result["median_seconds_per_step"][name]
        print(f"{name:<18}{value:>12.4f}{median:>10.4f}{value / floor:>13.2f}")
    print(f"{'ratio':<32}{'of min':>8}{'of median':>11}")
    for name, value in result["ratios_of_min"].items():
        print(f"{name:<32}{value:>8.3f}{result['ratios_of_median'][name]:>11.3f}")


def main(argv: Sequence[str]) -> dict[str, Any]:
    """Runs the benchmark, prints the table and writes the JSON.

    Args:
        argv: command line, program name first.

    Returns:
        The result record (also written to the JSON file).
    """
    _common.parse_flags(FLAGS, argv)
    cfg = FLAGS.flag_values_dict()
    _common.check_at_least_one(cfg, ("batch_size", "classes", "steps", "repeats"))
    result = run(cfg)
    result["command"] = " ".join(argv)
    print_table(result)
    default = _common.RESULTS_DIR / f"cache_speed_{result['backend']}.json"
    path = _common.write_json(FLAGS.output or default, result)
    print(f"\nwritten: {path}")
    return result


if __name__ == "__main__":
    _common.run_as_script(FLAGS, main)
