"""Training throughput (images/s) of zoo models on the current backend.

Times `train_on_batch` (the compiled train function plus its per-call bookkeeping) on a fixed batch
after warm-up, and prints a markdown table and writes JSON.

    KERAS_BACKEND=jax python benchmarks/train_throughput.py --models=resnet8x4,resnet32x4
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from absl import flags

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

from keras_kdcap.experiment.cli import define_flag_table  # noqa: E402
from keras_kdcap.models import get_model  # noqa: E402

FLAGS = flags.FlagValues()
define_flag_table(
    FLAGS,
    {
        "models": ("resnet8x4,resnet32x4", "Comma list of zoo models."),
        "batch_size": (64, "Images per step."),
        "steps": (5, "Timed steps per repeat."),
        "repeats": (3, "Timed repeats (the median is reported)."),
        "warmup": (2, "Untimed steps after compilation."),
        "output": (None, "JSON path (default: results/train_throughput_<backend>.json)."),
    },
)


def images_per_second(name: str, batch_size: int, steps: int, repeats: int, warmup: int) -> dict:
    """Median training throughput of one zoo model on random CIFAR-sized batches.

    Args:
        name: zoo model name.
        batch_size: images per step.
        steps: steps per timed repeat.
        repeats: timed repeats.
        warmup: untimed steps after compilation.

    Returns:
        `{"model", "images_per_second", "seconds_per_step", "samples"}`.
    """
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch_size, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 100, size=batch_size).astype("int32")
    model = get_model(name, num_classes=100)
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    for _ in range(warmup + 1):
        model.train_on_batch(x, y)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            loss = model.train_on_batch(x, y)
        float(np.asarray(loss).ravel()[0])  # wait for the last step
        samples.append((time.perf_counter() - start) / steps)
    per_step = float(np.median(samples))
    return {
        "model": name,
        "images_per_second": batch_size / per_step,
        "seconds_per_step": per_step,
        "samples": samples,
    }


def main(argv: Sequence[str]) -> dict:
    """Runs the benchmark, prints the table and writes the JSON.

    Args:
        argv: command line, program name first.

    Returns:
        The results dict (also written to the JSON file).
    """
    _common.parse_flags(FLAGS, argv)
    backend = keras.backend.backend()
    rows = [
        images_per_second(m, FLAGS.batch_size, FLAGS.steps, FLAGS.repeats, FLAGS.warmup)
        for m in _common.parse_list(FLAGS.models)
    ]
    table = _common.markdown_table(
        ["model", "backend", "images/s", "s/step"],
        [
            [r["model"], backend, f"{r['images_per_second']:.1f}", f"{r['seconds_per_step']:.3f}"]
            for r in rows
        ],
    )
    print(table)
    result = {
        "benchmark": "train_throughput",
        "environment": _common.environment(),
        "batch_size": FLAGS.batch_size,
        "rows": rows,
        "markdown": table,
    }
    default = Path(__file__).parent / "results" / f"train_throughput_{backend}.json"
    _common.write_json(FLAGS.output or default, result)
    return result


if __name__ == "__main__":
    _common.run_as_script(FLAGS, main)
