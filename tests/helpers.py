"""Assertions that record the largest relative error seen, for the suite summary."""

from __future__ import annotations

import keras
import numpy as np

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
