"""keras_kdcap.ops against the float64 NumPy reference (tests/reference.py)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import reference as ref
from helpers import assert_close, to_numpy

from keras_kdcap import ops as kd_ops
from keras_kdcap.policies.isats import isats_temperature, temperature_grid

CASES = [(scale, classes) for scale in (1.0, 3.0, 10.0) for classes in (10, 100, 1000)]


def logits_and_labels(rng, scale, classes, batch=16):
    f = (rng.normal(size=(batch, classes)) * scale).astype(np.float32)
    y = rng.integers(0, classes, size=batch).astype(np.int32)
    return f, y


@pytest.mark.parametrize("scale,classes", CASES)
def test_tempered_softmax_scalar_and_per_sample(rng, scale, classes):
    f, _ = logits_and_labels(rng, scale, classes)
    assert_close("tempered_softmax", kd_ops.tempered_softmax(f, 4.0), ref.tempered_softmax(f, 4.0))
    tau = rng.uniform(0.5, 8.0, size=f.shape[0]).astype(np.float32)
    assert_close(
        "tempered_softmax[B]", kd_ops.tempered_softmax(f, tau), ref.tempered_softmax(f, tau)
    )


@pytest.mark.parametrize("scale,classes", CASES)
def test_asymmetric_softmax(rng, scale, classes):
    f, y = logits_and_labels(rng, scale, classes)
    assert_close(
        "asymmetric_softmax", kd_ops.asymmetric_softmax(f, y, 4.0, 2.0), ref.ats(f, y, 4.0, 2.0)
    )
    tau1 = rng.uniform(2.0, 8.0, size=f.shape[0]).astype(np.float32)
    tau2 = rng.uniform(0.5, 4.0, size=f.shape[0]).astype(np.float32)
    assert_close(
        "asymmetric_softmax[B]",
        kd_ops.asymmetric_softmax(f, y, tau1, tau2),
        ref.ats(f, y, tau1, tau2),
    )


def test_asymmetric_softmax_equal_temperatures_is_tempered_softmax(rng):
    f, y = logits_and_labels(rng, 3.0, 100)
    np.testing.assert_allclose(
        to_numpy(kd_ops.asymmetric_softmax(f, y, 4.0, 4.0)),
        to_numpy(kd_ops.tempered_softmax(f, 4.0)),
        rtol=1e-6,
        atol=1e-9,
    )


@pytest.mark.parametrize("scale,classes", CASES)
def test_non_target_variance(rng, scale, classes):
    f, y = logits_and_labels(rng, scale, classes)
    p = ref.tempered_softmax(f, 2.0).astype(np.float32)
    assert_close(
        "non_target_variance", kd_ops.non_target_variance(p, y), ref.non_target_variance(p, y)
    )


def test_non_target_variance_of_one_hot_and_uniform_is_zero():
    y = np.array([0, 3])
    one_hot = np.eye(5, dtype=np.float32)[y]
    uniform = np.full((2, 5), 0.2, dtype=np.float32)
    assert np.all(to_numpy(kd_ops.non_target_variance(one_hot, y)) == 0.0)
    assert np.all(np.abs(to_numpy(kd_ops.non_target_variance(uniform, y))) < 1e-12)


def test_temperature_grid_is_log_spaced_with_ends(rng):
    grid = to_numpy(temperature_grid(0.5, 20.0, 32))
    np.testing.assert_allclose(grid, ref.isats_grid(0.5, 20.0, 32), rtol=1e-6)
    assert grid[0] == pytest.approx(0.5, rel=1e-6) and grid[-1] == pytest.approx(20.0, rel=1e-6)


@pytest.mark.parametrize("search", ["grid", "scan"])
@pytest.mark.parametrize("scale,classes", CASES)
def test_isats_temperature_is_the_brute_force_grid_argmax(rng, scale, classes, search):
    f, y = logits_and_labels(rng, scale, classes)
    # make most samples correctly classified, as for a trained teacher
    f[np.arange(len(y)), y] += 3.0 * scale
    lo, hi, k = 0.5, 20.0, 32
    tau = to_numpy(isats_temperature(f, y, lo, hi, k, search=search))
    expected, values = ref.isats_brute_force(f, y, lo, hi, k)
    grid = ref.isats_grid(lo, hi, k)
    chosen = np.argmin(np.abs(grid[None, :] - tau[:, None]), axis=1)
    np.testing.assert_allclose(tau, grid[chosen], rtol=1e-6)  # always a grid point
    top2 = np.sort(values, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-4 * top2[:, 1]
    assert clear.mean() > 0.8
    np.testing.assert_array_equal(chosen[clear], np.argmax(values, axis=1)[clear])
    np.testing.assert_allclose(tau[clear], expected[clear], rtol=1e-6)
    # near-ties: the chosen point is as good as the best to float32 precision
    best = values.max(axis=1)
    got = values[np.arange(len(y)), chosen]
    assert np.all(got >= best * (1 - 1e-4))


@pytest.mark.parametrize("search", ["grid", "scan"])
def test_isats_temperature_interior_for_confident_teacher(search):
    f = np.array([[8.0, 2.0, 1.0, 0.0, -1.0]], dtype=np.float32)
    tau = isats_temperature(f, np.array([0]), 0.1, 100.0, 64, search=search)
    tau = float(to_numpy(tau)[0])
    assert 0.1 < tau < 100.0
    _, values = ref.isats_brute_force(f, [0], 0.1, 100.0, 64)
    assert values[0, 0] < values.max() and values[0, -1] < values.max()


@pytest.mark.parametrize("search", ["grid", "scan"])
@pytest.mark.parametrize("scale,classes", [(1.0, 10), (3.0, 100), (10.0, 1000)])
def test_isats_refinement_never_below_grid_best(rng, scale, classes, search):
    f, y = logits_and_labels(rng, scale, classes)
    f[np.arange(len(y)), y] += 3.0 * scale
    lo, hi, k = 0.5, 20.0, 8
    coarse = to_numpy(isats_temperature(f, y, lo, hi, k, search=search))
    fine = isats_temperature(f, y, lo, hi, k, refine=True, refine_candidates=8, search=search)
    fine = to_numpy(fine)
    v_coarse = ref.non_target_variance(ref.tempered_softmax(f, coarse), y)
    v_fine = ref.non_target_variance(ref.tempered_softmax(f, fine), y)
    assert np.all(v_fine >= v_coarse * (1 - 1e-5))
    assert np.all((fine >= lo * (1 - 1e-6)) & (fine <= hi * (1 + 1e-6)))
    assert np.any(fine != coarse)  # refinement actually moves some samples


def test_keep_target_first_caps_only_where_needed():
    f = np.array(
        [
            [6.0, 4.0, 0.0],  # y=0, m=4 > 0: cap tau1 <= tau2 * 6/4 = 3 (tau2 = 2)
            [6.0, -1.0, -2.0],  # m < 0: no cap
            [1.0, 5.0, 0.0],  # label 0 not first: no cap
        ],
        dtype=np.float32,
    )
    y = np.array([0, 0, 0])
    tau1, capped = kd_ops.keep_target_first(
        f, y, np.full(3, 8.0, np.float32), np.full(3, 2.0, np.float32)
    )
    np.testing.assert_allclose(to_numpy(tau1), [3.0 / 1.001, 8.0, 8.0], rtol=1e-6)
    np.testing.assert_array_equal(to_numpy(capped), [1.0, 0.0, 0.0])
    probs = kd_ops.asymmetric_softmax(f, y, tau1, np.full(3, 2.0, np.float32))
    assert to_numpy(kd_ops.label_ranked_first(probs, y))[:2].tolist() == [1.0, 1.0]


def test_sparse_labels_accepts_all_layouts():
    expected = np.array([2, 0, 1])
    for labels in (expected, expected[:, None], np.eye(3)[expected]):
        np.testing.assert_array_equal(to_numpy(kd_ops.sparse_labels(labels, 3)), expected)
    with pytest.raises(ValueError, match="labels"):
        kd_ops.sparse_labels(np.zeros((3, 2, 1)), 3)


def test_ops_compute_in_float32_from_half_precision(rng):
    f, y = logits_and_labels(rng, 10.0, 100)
    p = kd_ops.tempered_softmax(f.astype("float16"), 0.5)
    assert keras.backend.standardize_dtype(p.dtype) == "float32"
    assert np.all(np.isfinite(to_numpy(p)))
    for search in ("grid", "scan"):
        tau = isats_temperature(f.astype("float16"), y, 0.1, 10.0, 16, search=search)
        assert keras.backend.standardize_dtype(tau.dtype) == "float32"
