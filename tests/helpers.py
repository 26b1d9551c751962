"""Shared test helpers: assertions that record the largest relative error seen (for the
suite summary), the small dense models and data of the Distiller tests, and the loader of
the benchmark scripts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import keras
import numpy as np

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"

#: the shape of the small classification problems: 8 features, 5 classes.
CLASSES = 5
FEATURES = 8

#: test-visible record: check name -> max relative error against the reference.
MAX_RELATIVE_ERROR: dict[str, float] = {}


def to_numpy(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float64)


def assert_close(name: str, actual, expected, rtol: float = 1e-5, floor: float = 1e-6) -> None:
    """Asserts `|a - e| <= rtol * max(|e|, floor * max|e|)` elementwise and records the error.

    The floor keeps entries that float32 cannot resolve relative to the
    row (probabilities below ~1e-6 of the largest) from dominating.

    Args:
        name: key for the summary table.
        actual: the library's value.
        expected: the float64 reference.
        rtol: relative tolerance.
        floor: fraction of the largest |expected| below which entries are
            compared absolutely at that scale.
    """
    actual = to_numpy(actual)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = np.maximum(np.abs(expected), floor * np.max(np.abs(expected)) + 1e-30)
    relative = np.abs(actual - expected) / scale
    worst = float(relative.max()) if relative.size else 0.0
    MAX_RELATIVE_ERROR[name] = max(MAX_RELATIVE_ERROR.get(name, 0.0), worst)
    assert worst <= rtol, f"{name}: max relative error {worst:.3g} > {rtol:g}"


def mlp(hidden: int, seed: int, batchnorm: bool = False) -> keras.Model:
    """`FEATURES` -> Dense(`hidden`, relu) [-> BatchNorm -> Dropout] -> `CLASSES` logits.

    Glorot-uniform kernels seeded with `seed`; `hidden=0` leaves out the hidden layer.
    """
    init = keras.initializers.GlorotUniform(seed=seed)
    layers = [keras.Input((FEATURES,))]
    if hidden:
        layers.append(keras.layers.Dense(hidden, "relu", kernel_initializer=init))
    if batchnorm:
        layers += [keras.layers.BatchNormalization(), keras.layers.Dropout(0.5)]
    layers.append(keras.layers.Dense(CLASSES, kernel_initializer=init))
    return keras.Sequential(layers)


def classification_data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` normal float32 feature rows and int32 labels drawn uniformly from `CLASSES`."""
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, n).astype(np.int32)
    return x, y


def load_benchmark(name: str):
    """A fresh copy of `benchmarks/<name>.py`, importable by its scripts' own imports."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module
