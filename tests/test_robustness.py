"""Numerical robustness: extreme teacher logits, class counts, batch sizes and dtypes.

Every case must give finite targets (rows summing to 1), finite losses and
statistics, finite gradients and weights after a training step, and an
ISATS temperature inside its search interval. The outcome of each case is
documented in docs/scaling.md, "Numerical robustness".
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import reference as ref
from helpers import to_numpy

from keras_kdcap import FGCR, ISATS, Distiller, distillation_loss, get_policy, get_policy_names
from keras_kdcap import ops as kd_ops
from keras_kdcap.policies.isats import isats_temperature

MIN_T, MAX_T = 0.5, 20.0


def make_case(name: str, rng: np.random.Generator):
    """Teacher logits `[B, C]` and labels `[B]` of one named extreme case."""
    batch, classes = 8, 10
    if name == "batch_1":
        batch = 1
    elif name == "classes_2":
        classes = 2
    elif name == "classes_1000":
        classes = 1000
    f = 3.0 * rng.normal(size=(batch, classes))
    y = rng.integers(0, classes, batch)
    if name == "huge_1e4":  # magnitude 1e4, half the samples correct
        f = 1e4 * rng.normal(size=(batch, classes))
        y[: batch // 2] = np.argmax(f[: batch // 2], axis=-1)
    elif name == "offset_1e4":  # every logit near +1e4
        f = 1e4 + rng.normal(size=(batch, classes))
        y[: batch // 2] = np.argmax(f[: batch // 2], axis=-1)
    elif name == "all_equal":
        f = np.full((batch, classes), 2.5)
    elif name == "all_zero":
        f = np.zeros((batch, classes))
    elif name == "label_far_ahead":
        f[np.arange(batch), y] = 1e3
    elif name == "other_far_ahead":
        f[np.arange(batch), (y + 1) % classes] = 1e3
    else:
        y[: batch // 2] = np.argmax(f[: batch // 2], axis=-1)
    return f.astype("float32"), y.astype("int32")


CASES = (
    "huge_1e4",
    "offset_1e4",
    "all_equal",
    "all_zero",
    "label_far_ahead",
    "other_far_ahead",
    "classes_2",
    "classes_1000",
    "batch_1",
)


def build_policy(name: str, classes: int):
    policy = get_policy(name)
    if isinstance(policy, FGCR):
        rng = np.random.default_rng(0)
        relations = rng.uniform(size=(classes, classes))
        policy.set_relations(relations / relations.sum(axis=1, keepdims=True))
    return policy


def assert_finite(name: str, value) -> np.ndarray:
    value = to_numpy(value)
    assert np.all(np.isfinite(value)), f"{name} has NaN/inf: {value}"
    return value


def assert_distribution(name: str, probs) -> None:
    probs = assert_finite(name, probs)
    assert np.all(probs >= 0.0), name
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("case", CASES)
def test_ops_stay_finite(case, rng):
    f, y = make_case(case, rng)
    for refine in (False, True):
        tau = assert_finite("tau*", isats_temperature(f, y, MIN_T, MAX_T, 16, refine))
        assert np.all((tau >= MIN_T * (1 - 1e-6)) & (tau <= MAX_T * (1 + 1e-6))), tau
    for temperature in (MIN_T, MAX_T):
        assert_distribution("tempered_softmax", kd_ops.tempered_softmax(f, temperature))
        assert_finite("tempered_log_softmax", kd_ops.tempered_log_softmax(f, temperature))
    tau1, capped = kd_ops.keep_target_first(f, y, np.full(len(y), 8.0), np.full(len(y), 4.0))
    tau1 = assert_finite("capped tau1", tau1)
    assert np.all(tau1 > 0), tau1
    probs = kd_ops.asymmetric_softmax(f, y, tau1, np.full(len(y), 4.0))
    assert_distribution("asymmetric_softmax", probs)
    # Where the teacher ranks the label first, the capped target keeps it first.
    correct = to_numpy(kd_ops.label_ranked_first(f, y)) > 0.5
    first = to_numpy(kd_ops.label_ranked_first(probs, y)) > 0.5
    assert np.all(first[correct]), (first, correct)
    assert_finite("variance", kd_ops.non_target_variance(kd_ops.tempered_softmax(f, 4.0), y))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("policy_name", get_policy_names())
def test_policies_stay_finite(policy_name, case, rng):
    f, y = make_case(case, rng)
    g = (3.0 * rng.normal(size=f.shape)).astype("float32")
    policy = build_policy(policy_name, f.shape[-1])
    loss, probs, stats = policy.kd_loss(f, g, y, True)
    assert_distribution(f"{policy_name} target", probs)
    loss = assert_finite(f"{policy_name} loss", loss)
    assert loss.shape == (len(y),)
    assert np.all(loss > -1e-4), loss
    for key in policy.metric_names:
        assert_finite(f"{policy_name} {key}", stats[key])
    if isinstance(policy, ISATS):
        tau = to_numpy(stats["temperature"])
        assert np.all((tau >= MIN_T * (1 - 1e-6)) & (tau <= MAX_T * (1 + 1e-6))), tau


# ------------------------------------------------------------ documented outcomes
def test_equal_logits_give_uniform_targets_and_the_lowest_temperature(rng):
    """Equal logits: `v(q) = 0` at every tau, the arg-max takes the first grid point.

    The target is uniform but for the label, which the cap of `tau1` (0.1%
    margin) keeps strictly first when the logits are positive.
    """
    f, y = make_case("all_equal", rng)
    tau = to_numpy(isats_temperature(f, y, MIN_T, MAX_T, 16))
    np.testing.assert_allclose(tau, MIN_T, rtol=1e-6)
    probs, _ = ISATS(num_candidates=16)(f, y)
    probs = to_numpy(probs)
    np.testing.assert_allclose(probs, 1.0 / f.shape[-1], rtol=1e-2)
    others = np.where(np.eye(f.shape[-1])[y] > 0, -1.0, probs).max(axis=-1)
    assert np.all(probs[np.arange(len(y)), y] > others)  # strictly first
    zero, y0 = make_case("all_zero", rng)
    np.testing.assert_allclose(to_numpy(ISATS()(zero, y0)[0]), 1.0 / f.shape[-1], rtol=1e-6)


def test_two_classes_reduce_isats_to_the_lowest_temperature(rng):
    """C = 2: one non-target entry, whose variance is 0: tau* = min_temperature."""
    f, y = make_case("classes_2", rng)
    tau = to_numpy(isats_temperature(f, y, MIN_T, MAX_T, 16))
    np.testing.assert_allclose(tau, MIN_T, rtol=1e-6)


def log_variance_reference(f, y, grid) -> np.ndarray:
    """`log v(q(x; tau))` in float64, `[B, K]`, scaled so that no entry underflows.

    `q = exp(m - L) * r` with `m` the largest non-target scaled logit, `L`
    the log-partition and `r = exp(f_c / tau - m)` (largest entry 1), so
    `log v(q) = 2 (m - L) + log v(r)`.
    """
    f = np.asarray(f, np.float64)
    out = np.empty((len(y), len(grid)))
    for i in range(len(y)):
        for j, tau in enumerate(grid):
            scaled = f[i] / tau
            others = np.delete(scaled, y[i])
            top = others.max()
            log_total = scaled.max() + np.log(np.sum(np.exp(scaled - scaled.max())))
            with np.errstate(divide="ignore"):
                out[i, j] = 2.0 * (top - log_total) + np.log(np.var(np.exp(others - top)))
    return out


@pytest.mark.parametrize("refine", [False, True])
@pytest.mark.parametrize("case", ["label_far_ahead", "huge_1e4", "offset_1e4"])
def test_confident_samples_search_agrees_with_float64(case, refine, rng):
    """A label 1e3 (or 1e4) ahead: `v(q)` is below float32's range at every tau.

    Its maximiser over [0.5, 20] is the upper end; a search in float32
    probabilities would see only zeros and return the lower end.
    """
    f, y = make_case(case, rng)
    grid = ref.isats_grid(MIN_T, MAX_T, 16)
    expected = grid[np.argmax(log_variance_reference(f, y, grid), axis=1)]
    correct = to_numpy(kd_ops.label_ranked_first(f, y)) > 0.5
    tau = to_numpy(isats_temperature(f, y, MIN_T, MAX_T, 16))
    np.testing.assert_allclose(tau[correct], expected[correct], rtol=1e-5)
    if case == "label_far_ahead":
        np.testing.assert_allclose(tau, MAX_T, rtol=1e-5)
        _, values = ref.isats_brute_force(f, y, MIN_T, MAX_T, 16)  # float64 still resolves it
        np.testing.assert_allclose(tau, grid[np.argmax(values, axis=1)], rtol=1e-5)
    if refine:
        fine = to_numpy(isats_temperature(f, y, MIN_T, MAX_T, 16, refine=True))
        assert np.all(fine[correct] >= tau[correct] * (1 - 1e-6))  # never below the grid's best


def test_confident_mistakes_fall_back(rng):
    """Another class 1e3 ahead: the teacher is wrong, ISATS uses the fallback temperature."""
    f, y = make_case("other_far_ahead", rng)
    _, _, stats = ISATS(num_candidates=16).compute_target(f, y)
    np.testing.assert_array_equal(to_numpy(stats["fallback_rate"]), 1.0)
    np.testing.assert_allclose(to_numpy(stats["temperature"]), 4.0)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_logits_are_computed_in_float32(dtype, rng):
    f, y = make_case("huge_1e4", rng)
    f = np.clip(f, -6e4, 6e4)  # the float16 range
    g = (3.0 * rng.normal(size=f.shape)).astype("float32")
    half_f = keras.ops.cast(f, dtype)
    half_g = keras.ops.cast(g, dtype)
    probs, temperature = ISATS(num_candidates=16)(half_f, y)
    assert keras.backend.standardize_dtype(probs.dtype) == "float32"
    loss = assert_finite("half loss", distillation_loss(probs, half_g, temperature))
    reference = distillation_loss(
        probs, keras.ops.cast(half_g, "float32"), temperature
    )  # the same values, cast first
    np.testing.assert_allclose(loss, to_numpy(reference), rtol=1e-5)


# --------------------------------------------------- gradients through a training step
def train_step(policy, f, y, student_dtype: str = "float32"):
    """One eager Distiller step on cached teacher logits `f`; returns loss and weights."""
    classes = f.shape[-1]
    rng = np.random.default_rng(1)
    x = rng.normal(size=(len(y), 4)).astype("float32")
    student = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(
                classes,
                dtype=student_dtype,
                kernel_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=2),
            ),
        ]
    )
    teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(classes)])
    distiller = Distiller(teacher, student)
    distiller.compile(keras.optimizers.SGD(0.1), policy=policy, run_eagerly=True)
    logs = distiller.train_on_batch({"inputs": x, "teacher_logits": f}, y, return_dict=True)
    return logs, [to_numpy(v) for v in student.weights]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("policy_name", ["isats", "fgcr"])
def test_a_training_step_stays_finite(policy_name, case, rng):
    f, y = make_case(case, rng)
    logs, weights = train_step(build_policy(policy_name, f.shape[-1]), f, y)
    assert np.isfinite(logs["loss"]), logs
    for weight in weights:
        assert_finite("weights", weight)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("case", ["huge_1e4"])
def test_half_precision_students_train(dtype, case, rng):
    f, y = make_case(case, rng)
    logs, weights = train_step(ISATS(num_candidates=16), f, y, student_dtype=dtype)
    assert np.isfinite(logs["loss"]), logs
    for weight in weights:
        assert_finite("weights", weight)
