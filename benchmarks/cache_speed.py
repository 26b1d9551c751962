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
    KERAS_BACKEND=jax python benchmarks/cache_speed.py --repeats 5 --steps 8
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

import keras
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

from keras_kdcap import ISATS, Distiller  # noqa: E402
from keras_kdcap.cache import TeacherCache  # noqa: E402
from keras_kdcap.models import get_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def run(args: argparse.Namespace) -> dict:
    """Builds the models and times the five configurations.

    Args:
        args: the parsed command line.

    Returns:
        The result record written to JSON.
    """
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    num = args.batch_size * args.steps
    x = rng.normal(size=(num, 32, 32, 3)).astype("float32")
    y = rng.integers(0, args.classes, num).astype("int32")
    teacher = get_model(args.teacher, num_classes=args.classes)

    def optimizer():
        return keras.optimizers.SGD(0.05, momentum=0.9)

    def distiller():
        model = Distiller(teacher, get_model(args.student, num_classes=args.classes))
        model.compile(optimizer(), policy=ISATS())
        return model

    student = get_model(args.student, num_classes=args.classes)
    student.compile(optimizer(), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    uncached, cached, unguarded = distiller(), distiller(), distiller()
    cache = TeacherCache(teacher, batch_size=args.batch_size).build(x, y)
    cached_x, cached_y, _ = cache.arrays()
    fit = dict(batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0)

    epochs = {
        "student": lambda: student.fit(x, y, **fit),
        "uncached": lambda: uncached.fit(x, y, **fit),
        "cached": lambda: cached.fit(cached_x, cached_y, **fit),
        "cached_no_guard": lambda: keras.Model.fit(unguarded, cached_x, cached_y, **fit),
        "teacher_pass": lambda: teacher.predict(x, batch_size=args.batch_size, verbose=0),
    }
    # one call = one epoch of `steps` batches: compiled by a first call, then
    # timed in turn within each repeat
    per_epoch = _common.round_robin(
        {name: _common.CallableRunner(call) for name, call in epochs.items()},
        repeats=args.repeats,
        steps=1,
        warmup=1,
    )
    timings = {name: [t / args.steps for t in values] for name, values in per_epoch.items()}
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
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "device": args.device_label or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_end": os.getloadavg()[0],
        "teacher": args.teacher,
        "student": args.student,
        "batch_size": args.batch_size,
        "classes": args.classes,
        "policy": "ISATS()",
        "steps_per_timing": args.steps,
        "repeats": args.repeats,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--steps", type=int, default=8, help="batches per timed epoch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device-label", default="", help="recorded in the JSON")
    parser.add_argument("--output", default="", help="JSON path (default: results/...)")
    args = parser.parse_args()
    result = run(args)
    print_table(result)
    path = Path(args.output) if args.output else RESULTS / f"cache_speed_{result['backend']}.json"
    _common.write_json(path, result)
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
