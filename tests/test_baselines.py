"""Baselines and the logit-temperature family: DKD, LS, CTKD, SCKD, ESKD, TAKD.

Every loss is checked against a float64 NumPy reference written below from
the formulas of docs/policies/*.md (never by calling the library).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from helpers import assert_close, to_numpy
from keras import ops

import keras_kdcap
from keras_kdcap import (
    ATS,
    CTKD,
    DKD,
    SCKD,
    Distiller,
    FixedTemperature,
    LogitStandardization,
)
from keras_kdcap.baselines import eskd, takd
from keras_kdcap.baselines.callbacks import PolicyEpochCallback
from keras_kdcap.policies import get_policy

CASES = [(scale, classes) for scale in (1.0, 3.0, 10.0) for classes in (10, 100)]


# --------------------------------------------------------------------------
# float64 NumPy references
# --------------------------------------------------------------------------
def np_log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_logsumexp(z, axis=-1):
    m = z.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def np_kl_from_logs(log_p, log_q):
    """KL(p || q) per row, from log-probabilities."""
    return np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)


def ref_kd(f, g, temperature, scaling=True):
    """s^2 KL(softmax(f/T) || softmax(g/T)); T scalar or [B]."""
    t = np.reshape(np.asarray(temperature, dtype=np.float64), (-1, 1))
    kl = np_kl_from_logs(np_log_softmax(f / t), np_log_softmax(g / t))
    return kl * t[:, 0] ** 2 if scaling else kl


def ref_dkd_terms(f, g, y, temperature):
    """TCKD and NCKD per sample (no T^2)."""
    rows = np.arange(len(y))
    out = []
    for logits in (f, g):
        log_p = np_log_softmax(np.asarray(logits, np.float64) / temperature)
        mask = np.zeros_like(log_p, dtype=bool)
        mask[rows, y] = True
        others = log_p[~mask].reshape(len(y), -1)  # log p_c, c != y
        log_binary = np.stack([log_p[rows, y], np_logsumexp(others)], axis=-1)
        log_non_target = others - np_logsumexp(others)[:, None]
        out.append((log_binary, log_non_target))
    (bt, nt), (bs, ns) = out
    return np_kl_from_logs(bt, bs), np_kl_from_logs(nt, ns)


def ref_dkd(f, g, y, alpha, beta, temperature):
    tckd, nckd = ref_dkd_terms(f, g, y, temperature)
    return temperature**2 * (alpha * tckd + beta * nckd)


def ref_standardize(z, ddof=0, eps=1e-7):
    z = np.asarray(z, dtype=np.float64)
    centred = z - z.mean(axis=-1, keepdims=True)
    std = np.sqrt((centred**2).sum(axis=-1, keepdims=True) / (z.shape[-1] - ddof))
    return centred / (std + eps)


def ref_ats_log(f, y, tau1, tau2):
    scaled = np.asarray(f, np.float64) / tau2
    rows = np.arange(len(y))
    scaled[rows, y] = f[rows, y] / tau1
    return np_log_softmax(scaled)


def ref_sckd_parts(f, g, y, temperature):
    """Gradient cosine between CE and s^2 KL w.r.t. the student logits, and the KD."""
    onehot = np.eye(f.shape[-1])[y]
    grad_ce = np.exp(np_log_softmax(g)) - onehot
    teacher = np.exp(np_log_softmax(f / temperature))
    grad_kd = temperature * (np.exp(np_log_softmax(g / temperature)) - teacher)
    norms = np.linalg.norm(grad_ce, axis=-1) * np.linalg.norm(grad_kd, axis=-1)
    cosine = np.sum(grad_ce * grad_kd, axis=-1) / np.maximum(norms, 1e-12)
    return cosine, ref_kd(f, g, temperature)


def ref_sckd_weight(cosine, weighting):
    return {
        "binary": (cosine > 0).astype(np.float64),
        "clip": np.maximum(cosine, 0.0),
        "affine": 0.5 * (1.0 + cosine),
    }[weighting]


def ref_ctkd_temperature(theta, t_min, t_max):
    return t_min + (t_max - t_min) / (1.0 + np.exp(-theta))


def ref_ctkd_lambda(epoch, lambda_max, curriculum_epochs):
    progress = 1.0 if curriculum_epochs == 0 else min((epoch + 1) / curriculum_epochs, 1.0)
    return lambda_max * 0.5 * (1.0 - math.cos(math.pi * progress))


def check(name, actual, expected):
    """`|a - e| <= 1e-5 |e|`, or `1e-6 * max|e|` for entries below a tenth of the max.

    A KL between two close distributions is a difference of nearly equal
    terms: in float32 its absolute error is ~1e-8 whatever its size, so tiny
    entries (e.g. TCKD where teacher and student agree on p_t) are compared
    absolutely at 1e-6 of the largest value.
    """
    assert_close(name, actual, expected, rtol=1e-5, floor=0.1)


def logits_pair(rng, scale, classes, batch=16):
    f = (rng.normal(size=(batch, classes)) * scale).astype(np.float32)
    g = (rng.normal(size=(batch, classes)) * scale).astype(np.float32)
    y = rng.integers(0, classes, size=batch).astype(np.int32)
    # make the teacher mostly right, as a trained teacher is
    boost = rng.random(batch) < 0.75
    f[np.arange(batch)[boost], y[boost]] += 3.0 * scale
    return f, g, y


def kd_of(policy, f, g, y, scaling=True):
    loss, probs, stats = policy.kd_loss(
        ops.convert_to_tensor(f), ops.convert_to_tensor(g), ops.convert_to_tensor(y), scaling
    )
    return to_numpy(loss), to_numpy(probs), {k: to_numpy(v) for k, v in stats.items()}


def backend_grad(fn, x):
    """d sum(fn(x)) / dx with the backend's autodiff; `x` a float32 array."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = ops.sum(fn(x))
        return tape.gradient(y, x).numpy().astype(np.float64)
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(lambda v: ops.sum(fn(v)))(ops.convert_to_tensor(x)), np.float64)
    import torch

    x = torch.tensor(x, requires_grad=True)
    (grad,) = torch.autograd.grad(ops.sum(fn(x)), x)
    return grad.detach().cpu().numpy().astype(np.float64)


# --------------------------------------------------------------------------
# DKD
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "scale,classes,alpha,beta,temperature",
    [(*case, 1.0, 8.0, 4.0) for case in CASES]
    + [(1.0, 10, 0.5, 2.0, 1.0), (10.0, 100, 0.5, 2.0, 1.0)],
)
def test_dkd_loss_matches_reference(rng, scale, classes, alpha, beta, temperature):
    f, g, y = logits_pair(rng, scale, classes)
    policy = DKD(tckd_weight=alpha, nckd_weight=beta, temperature=temperature, warmup_epochs=0)
    loss, _, _ = kd_of(policy, f, g, y)
    check("DKD.kd_loss", loss, ref_dkd(f, g, y, alpha, beta, temperature))


def test_deprecated_dkd_names_still_work(rng):
    f, g, y = logits_pair(rng, 3.0, 10)
    one_hot = np.eye(10, dtype=np.float32)[y]
    expected = ref_dkd(f, g, y, 0.5, 2.0, 4.0)
    with pytest.warns(DeprecationWarning, match="dkd_loss"):
        from keras_kdcap.losses import dkd_loss

        check("losses.dkd_loss", dkd_loss(f, g, one_hot, 0.5, 2.0, 4.0), expected)
    with pytest.warns(DeprecationWarning, match="`alpha` is deprecated"):
        policy = DKD(alpha=0.5, beta=2.0, warmup_epochs=0)
    assert (policy.tckd_weight, policy.nckd_weight) == (0.5, 2.0)
    check("DKD(alpha, beta)", kd_of(policy, f, g, y)[0], expected)
    old_config = {**policy.get_config(), "alpha": 0.5, "beta": 2.0}  # a model saved before
    for key in ("tckd_weight", "nckd_weight"):
        old_config.pop(key)
    with pytest.warns(DeprecationWarning):
        restored = DKD.from_config(old_config)
    assert (restored.tckd_weight, restored.nckd_weight) == (0.5, 2.0)
    with pytest.raises(TypeError, match="tckd_weight"):
        DKD(alpha=0.5, tckd_weight=2.0)
    with pytest.warns(DeprecationWarning, match="decoupled_kl"):
        from keras_kdcap.losses import decoupled_kl
    from keras_kdcap.policies.dkd import decoupled_kl as moved

    assert decoupled_kl is moved


def test_dkd_reference_identity(rng):
    f, g, y = logits_pair(rng, 3.0, 10)
    # the reference satisfies DKD's identity KL = TCKD + (1 - p_t^teacher) NCKD
    tckd, nckd = ref_dkd_terms(f, g, y, 4.0)
    p_other = 1.0 - np.exp(np_log_softmax(f / 4.0))[np.arange(len(y)), y]
    np.testing.assert_allclose(tckd + p_other * nckd, ref_kd(f, g, 4.0, scaling=False), rtol=1e-9)


@pytest.mark.parametrize("scale,classes", CASES[::2])
def test_dkd_policy_applies_warmup_and_scaling(rng, scale, classes):
    f, g, y = logits_pair(rng, scale, classes)
    policy = DKD(tckd_weight=1.0, nckd_weight=8.0, temperature=4.0, warmup_epochs=4)
    policy.set_epoch(1)  # second epoch: min(2 / 4, 1)
    loss, probs, stats = kd_of(policy, f, g, y)
    check("DKD.kd_loss", loss, 0.5 * ref_dkd(f, g, y, 1.0, 8.0, 4.0))
    check("DKD.target", probs, np.exp(np_log_softmax(f / 4.0)))
    tckd, nckd = ref_dkd_terms(f, g, y, 4.0)
    check("DKD.tckd", stats["tckd"], tckd)
    check("DKD.nckd", stats["nckd"], nckd)
    np.testing.assert_allclose(stats["dkd_warmup"], 0.5)
    unscaled, _, _ = kd_of(policy, f, g, y, scaling=False)
    check("DKD.kd_loss_unscaled", unscaled, 0.5 * ref_dkd(f, g, y, 1.0, 8.0, 4.0) / 16.0)


def test_dkd_warmup_factor():
    policy = DKD(warmup_epochs=4)
    got = []
    for epoch in range(7):
        policy.set_epoch(epoch)
        got.append(float(to_numpy(policy.warmup_factor())))
    np.testing.assert_allclose(got, [min((e + 1) / 4, 1.0) for e in range(7)], rtol=1e-7)
    assert float(to_numpy(DKD(warmup_epochs=0).warmup_factor())) == 1.0


# --------------------------------------------------------------------------
# Logit standardisation
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "scale,classes,ddof", [(*case, 0) for case in CASES] + [(3.0, 10, 1), (10.0, 100, 1)]
)
def test_logit_standardization_matches_reference(rng, scale, classes, ddof):
    f, g, y = logits_pair(rng, scale, classes)
    policy = LogitStandardization(temperature=2.0, ddof=ddof)
    loss, probs, _ = kd_of(policy, f, g, y)
    zf, zg = ref_standardize(f, ddof), ref_standardize(g, ddof)
    check("LS.kd_loss", loss, ref_kd(zf, zg, 2.0))
    check("LS.target", probs, np.exp(np_log_softmax(zf / 2.0)))


@pytest.mark.parametrize("scale,classes", CASES[::2])
def test_logit_standardization_wraps_ats(rng, scale, classes):
    f, g, y = logits_pair(rng, scale, classes)
    policy = LogitStandardization(ATS(target_temperature=1.5, other_temperature=1.0))
    loss, probs, stats = kd_of(policy, f, g, y)
    log_t = ref_ats_log(ref_standardize(f), y, 1.5, 1.0)
    log_s = np_log_softmax(ref_standardize(g))  # ATS: student at temperature 1
    check("LS(ATS).kd_loss", loss, np_kl_from_logs(log_t, log_s))
    check("LS(ATS).target", probs, np.exp(log_t))
    assert set(stats) == {"target_cap_rate"}
    assert policy.metric_names == ATS.metric_names
    assert policy.requires_labels


def test_logit_standardization_is_invariant_to_logit_shift_and_scale(rng):
    f, g, y = logits_pair(rng, 3.0, 100)
    policy = LogitStandardization(FixedTemperature(2.0))
    base, _, _ = kd_of(policy, f, g, y)
    moved, _, _ = kd_of(policy, 7.0 * f - 3.0, 0.25 * g + 11.0, y)
    np.testing.assert_allclose(moved, base, rtol=2e-4, atol=1e-6)
    plain, _, _ = kd_of(LogitStandardization(temperature=2.0), f, g, y)
    np.testing.assert_allclose(plain, base, rtol=1e-6)


# --------------------------------------------------------------------------
# SCKD
# --------------------------------------------------------------------------
def test_kd_gradient_formula_by_finite_differences(rng):
    """The reference gradient T (softmax(g/T) - t) of T^2 KL is right (float64)."""
    f, g, y = logits_pair(rng, 3.0, 10, batch=2)
    g = g.astype(np.float64)
    numeric = np.zeros_like(g)
    h = 1e-6
    for c in range(g.shape[1]):
        step = np.zeros_like(g)
        step[:, c] = h
        numeric[:, c] = (ref_kd(f, g + step, 4.0) - ref_kd(f, g - step, 4.0)) / (2 * h)
    analytic = 4.0 * (np.exp(np_log_softmax(g / 4.0)) - np.exp(np_log_softmax(f / 4.0)))
    np.testing.assert_allclose(numeric, analytic, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "scale,classes,weighting",
    [(*case, "binary") for case in CASES] + [(1.0, 100, "clip"), (10.0, 10, "affine")],
)
def test_sckd_matches_reference(rng, scale, classes, weighting):
    f, g, y = logits_pair(rng, scale, classes)
    policy = SCKD(temperature=4.0, weighting=weighting)
    loss, probs, stats = kd_of(policy, f, g, y)
    cosine, kd = ref_sckd_parts(f, g, y, 4.0)
    # A cosine of two gradients that are differences of close distributions is
    # ill-conditioned in float32 (~1e-6 absolute): compare it absolutely, then
    # the loss as the library's weight times the reference KD.
    np.testing.assert_allclose(stats["grad_cosine"], cosine, rtol=0, atol=2e-5)
    weight = ref_sckd_weight(cosine, weighting)
    np.testing.assert_allclose(stats["sckd_weight"], weight, rtol=0, atol=2e-5)
    check(f"SCKD[{weighting}].kd_loss", loss, stats["sckd_weight"] * kd)
    check("SCKD.target", probs, np.exp(np_log_softmax(f / 4.0)))


def test_sckd_weight_carries_no_gradient(rng):
    f, g, y = logits_pair(rng, 1.0, 10)
    policy = SCKD(temperature=4.0, weighting="clip")

    def loss_of(student):
        return policy.kd_loss(ops.convert_to_tensor(f), student, ops.convert_to_tensor(y))[0]

    grad = backend_grad(loss_of, g)
    cosine, _ = ref_sckd_parts(f, g, y, 4.0)
    analytic = 4.0 * (np.exp(np_log_softmax(g / 4.0)) - np.exp(np_log_softmax(f / 4.0)))
    expected = np.maximum(cosine, 0.0)[:, None] * analytic
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------
# CTKD
# --------------------------------------------------------------------------
@pytest.mark.parametrize("scale,classes", CASES)
def test_ctkd_matches_reference(rng, scale, classes):
    f, g, y = logits_pair(rng, scale, classes)
    policy = CTKD(initial_temperature=5.0)
    np.testing.assert_allclose(float(to_numpy(policy.current_temperature())), 5.0, rtol=1e-6)
    loss, probs, stats = kd_of(policy, f, g, y)
    temperature = ref_ctkd_temperature(float(to_numpy(policy.temperature_logit)), 1.0, 21.0)
    check("CTKD.kd_loss", loss, ref_kd(f, g, temperature))
    check("CTKD.target", probs, np.exp(np_log_softmax(f / temperature)))
    np.testing.assert_allclose(stats["temperature"], temperature, rtol=1e-6)


def test_ctkd_curriculum_and_bounds():
    policy = CTKD(lambda_max=0.8, curriculum_epochs=10)
    for epoch in (0, 1, 4, 9, 10, 30):
        policy.set_epoch(epoch)
        np.testing.assert_allclose(
            float(to_numpy(policy.grl_lambda())), ref_ctkd_lambda(epoch, 0.8, 10), rtol=1e-6
        )
    assert float(to_numpy(CTKD(curriculum_epochs=0).grl_lambda())) == pytest.approx(1.0)
    bounded = CTKD(min_temperature=2.0, max_temperature=6.0, initial_temperature=3.0)
    for theta in (-80.0, 0.0, 80.0):
        bounded.temperature_logit.assign(theta)
        value = float(to_numpy(bounded.current_temperature()))
        assert 2.0 <= value <= 6.0
        np.testing.assert_allclose(value, ref_ctkd_temperature(theta, 2.0, 6.0), rtol=1e-6)


def _numeric_dkd_dtheta(f, g, theta, t_min=1.0, t_max=21.0, h=1e-5):
    def mean_kd(th):
        return ref_kd(f, g, ref_ctkd_temperature(th, t_min, t_max)).mean()

    return (mean_kd(theta + h) - mean_kd(theta - h)) / (2 * h), mean_kd


def test_ctkd_temperature_gradient_is_reversed(rng):
    f, g, y = logits_pair(rng, 3.0, 10)
    policy = CTKD(initial_temperature=4.0, lambda_max=1.0, curriculum_epochs=4)
    policy.set_epoch(1)
    lam = ref_ctkd_lambda(1, 1.0, 4)
    theta = np.asarray(to_numpy(policy.temperature_logit), np.float32)

    def mean_kd(theta_value):
        with keras.StatelessScope(state_mapping=[(policy.temperature_logit, theta_value)]):
            loss = policy.kd_loss(
                ops.convert_to_tensor(f), ops.convert_to_tensor(g), ops.convert_to_tensor(y)
            )[0]
        return ops.mean(loss)

    grad = backend_grad(mean_kd, theta)
    numeric, _ = _numeric_dkd_dtheta(f, g, float(theta))
    assert numeric != 0.0
    np.testing.assert_allclose(grad, -lam * numeric, rtol=1e-3)


def _linear_problem(rng, n=256, features=8, classes=10):
    x = rng.normal(size=(n, features)).astype(np.float32)
    w = rng.normal(size=(features, classes)).astype(np.float32)
    y = np.argmax(x @ w, axis=-1).astype(np.int32)
    teacher = keras.Sequential([keras.Input((features,)), keras.layers.Dense(classes)])
    teacher.layers[-1].set_weights([2.0 * w, np.zeros(classes, np.float32)])
    return x, y, teacher


def _mlp(features=8, classes=10, hidden=16):
    return keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(classes),
        ]
    )


def test_ctkd_distiller_step_moves_temperature_to_increase_kd(rng):
    x, y, teacher = _linear_problem(rng, n=32)
    student = _mlp()
    policy = CTKD(initial_temperature=4.0, curriculum_epochs=0)  # lambda = 1 at once
    distiller = Distiller(teacher, student)
    distiller.compile(keras.optimizers.SGD(0.5), policy=policy, alpha=0.0, beta=1.0)
    f = to_numpy(teacher(x))
    g = to_numpy(student(x))
    theta0 = float(to_numpy(policy.temperature_logit))
    distiller.train_on_batch(x, y)
    theta1 = float(to_numpy(policy.temperature_logit))
    slope, mean_kd = _numeric_dkd_dtheta(f, g, theta0)
    # SGD on the reversed gradient: theta1 = theta0 + lr * lambda * beta * dKD/dtheta.
    np.testing.assert_allclose(theta1 - theta0, 0.5 * slope, rtol=2e-3)
    assert mean_kd(theta1) > mean_kd(theta0)


# --------------------------------------------------------------------------
# Training, callback, save/load
# --------------------------------------------------------------------------
POLICIES = {
    "dkd": lambda: DKD(warmup_epochs=1),
    "ls_ctkd": lambda: LogitStandardization(CTKD(curriculum_epochs=2)),
    "ctkd": lambda: CTKD(curriculum_epochs=2),
    "sckd": lambda: SCKD(),
}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_fit_lowers_loss_and_save_load_round_trip(rng, tmp_path, name):
    x, y, teacher = _linear_problem(rng)
    distiller = Distiller(teacher, _mlp())
    policy = POLICIES[name]()
    distiller.compile(keras.optimizers.Adam(1e-2), policy=policy, alpha=0.5, beta=0.5)
    history = distiller.fit(x, y, epochs=2, batch_size=32, verbose=0)  # no epoch callback
    loss = history.history["loss"]
    assert loss[1] < loss[0], loss
    for metric in policy.metric_names:
        assert metric in history.history
    ctkd = policy if isinstance(policy, CTKD) else getattr(policy, "base_policy", None)
    if isinstance(ctkd, CTKD):
        # the Distiller advanced the curriculum on every backend
        np.testing.assert_allclose(
            history.history["ctkd_lambda"], [ref_ctkd_lambda(e, 1.0, 2) for e in (0, 1)], rtol=1e-6
        )
        assert abs(float(to_numpy(ctkd.current_temperature())) - 4.0) > 1e-4  # it was trained

    path = tmp_path / f"{name}.keras"
    distiller.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), distiller.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )
    assert type(loaded.policy) is type(policy)
    assert loaded.policy.get_config() == policy.get_config()
    for saved, restored in zip(policy.weights, loaded.policy.weights, strict=True):
        np.testing.assert_array_equal(to_numpy(restored), to_numpy(saved))
    if isinstance(ctkd, CTKD):
        restored = loaded.policy if isinstance(loaded.policy, CTKD) else loaded.policy.base_policy
        now = float(to_numpy(ctkd.current_temperature()))
        assert float(to_numpy(restored.current_temperature())) == now
        assert float(to_numpy(restored.epoch)) == 1.0


def test_policy_epoch_callback_needs_a_distiller():
    with pytest.warns(DeprecationWarning, match="PolicyEpochCallback"):
        callback = PolicyEpochCallback()
    callback.set_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]))
    with pytest.raises(ValueError, match="policy"):
        callback.on_epoch_begin(0)


# --------------------------------------------------------------------------
# Arguments, registry, exports
# --------------------------------------------------------------------------
BAD_ARGUMENTS = [
    (lambda: DKD(tckd_weight=-1.0), "tckd_weight"),
    (lambda: DKD(nckd_weight=float("nan")), "nckd_weight"),
    (lambda: DKD(temperature=0.0), "temperature"),
    (lambda: DKD(warmup_epochs=-1), "warmup_epochs"),
    (lambda: DKD(warmup_epochs=1.5), "warmup_epochs"),
    (lambda: LogitStandardization(temperature=-2.0), "temperature"),
    (lambda: LogitStandardization(base_policy="kd"), "base_policy"),
    (lambda: LogitStandardization(base_policy=SCKD()), "base_policy"),
    (lambda: LogitStandardization(base_policy=LogitStandardization()), "base_policy"),
    (lambda: LogitStandardization(ddof=2), "ddof"),
    (lambda: LogitStandardization(eps=-1.0), "eps"),
    (lambda: CTKD(min_temperature=5.0, max_temperature=2.0), "min_temperature"),
    (lambda: CTKD(initial_temperature=21.0), "initial_temperature"),
    (lambda: CTKD(initial_temperature=0.5), "initial_temperature"),
    (lambda: CTKD(lambda_max=-1.0), "lambda_max"),
    (lambda: CTKD(curriculum_epochs=-3), "curriculum_epochs"),
    (lambda: SCKD(temperature=0.0), "temperature"),
    (lambda: SCKD(weighting="cosine"), "weighting"),
    (lambda: SCKD(base_policy=DKD()), "base_policy"),
    (lambda: DKD().set_epoch(-1), "epoch"),
]


@pytest.mark.parametrize("make,argument", BAD_ARGUMENTS)
def test_bad_arguments_name_the_argument(make, argument):
    with pytest.raises((ValueError, TypeError), match=f"`{argument}`"):
        make()


def test_registry_and_exports():
    for flag, cls in {"dkd": DKD, "ls": LogitStandardization, "ctkd": CTKD, "sckd": SCKD}.items():
        assert isinstance(get_policy(flag), cls)
        assert getattr(keras_kdcap, cls.__name__) is cls


# --------------------------------------------------------------------------
# ESKD and TAKD
# --------------------------------------------------------------------------
def test_eskd_select_checkpoint(tmp_path):
    for epoch in (10, 20, 30, 120):
        (tmp_path / f"teacher_epoch{epoch:03d}.keras").write_bytes(b"")
    (tmp_path / "teacher.keras").write_bytes(b"")  # the final model: ignored
    pick = eskd.select_checkpoint
    assert pick(tmp_path, epoch=25) == str(tmp_path / "teacher_epoch020.keras")
    assert pick(tmp_path, epoch=30) == str(tmp_path / "teacher_epoch030.keras")
    assert pick(tmp_path, epoch=1000) == str(tmp_path / "teacher_epoch120.keras")
    assert pick(tmp_path, fraction=0.25, total_epochs=100) == str(
        tmp_path / "teacher_epoch020.keras"
    )
    with pytest.raises(ValueError, match="`total_epochs`"):
        pick(tmp_path, fraction=0.5)  # no history.csv to read the length from
    # the teacher trainer's CSVLogger: one row per epoch, 0-based "epoch" column
    rows = "".join(f"{e},0.5,1.0\n" for e in range(240))
    (tmp_path / "history.csv").write_text("epoch,accuracy,loss\n" + rows)
    assert pick(tmp_path, fraction=0.125) == str(tmp_path / "teacher_epoch030.keras")
    assert pick(tmp_path, fraction=0.1) == str(tmp_path / "teacher_epoch020.keras")
    assert pick(tmp_path, fraction=1.0) == str(tmp_path / "teacher_epoch120.keras")
    assert sorted(eskd.list_checkpoints(tmp_path)) == [10, 20, 30, 120]
    with pytest.raises(ValueError, match="`epoch`"):
        pick(tmp_path, epoch=5)
    with pytest.raises(ValueError, match="`epoch` or `fraction`"):
        pick(tmp_path)
    with pytest.raises(ValueError, match="`epoch` or `fraction`"):
        pick(tmp_path, epoch=10, fraction=0.5)
    with pytest.raises(ValueError, match="`fraction`"):
        pick(tmp_path, fraction=1.5)
    with pytest.raises(ValueError, match="`fraction`"):
        pick(tmp_path, fraction=0.01)
    with pytest.raises(FileNotFoundError, match="checkpoint_dir"):
        pick(tmp_path / "missing", epoch=10)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="teacher_epoch"):
        pick(empty, epoch=10)


def test_eskd_reads_the_teacher_trainers_names():
    from keras_kdcap.training.teacher import HISTORY_NAME, checkpoint_name

    assert int(eskd.CHECKPOINT_PATTERN.match(checkpoint_name(7)).group(1)) == 7
    assert eskd.HISTORY_NAME == HISTORY_NAME


def test_takd_chain_on_tiny_mlps(rng):
    x, y, teacher = _linear_problem(rng)
    assistant, student = _mlp(), _mlp()  # the sizes of the other tests: cached compiles
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    assistant_before = [w.copy() for w in assistant.get_weights()]
    models, histories = takd.distill_chain(
        [teacher, assistant, student],
        (x, y),
        epochs=[2, 2],
        optimizer_fn=lambda: keras.optimizers.Adam(3e-2),
        policy_fn=lambda: FixedTemperature(4.0),
        alpha=0.1,
        beta=0.9,
        return_histories=True,
        batch_size=32,
        verbose=0,
    )
    assert models[0] is teacher and models[1] is assistant and models[2] is student
    for before, after in zip(teacher_weights, teacher.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    assert not teacher.trainable and assistant.trainable and student.trainable
    after = assistant.get_weights()
    assert any(not np.array_equal(b, a) for b, a in zip(assistant_before, after, strict=True))
    for history in histories:
        loss = history.history["loss"]
        assert loss[-1] < loss[0]
    accuracy = np.mean(np.argmax(to_numpy(student(x)), axis=-1) == y)
    assert accuracy > 0.3, accuracy


def test_takd_arguments():
    model = _mlp()
    with pytest.raises(ValueError, match="`models`"):
        takd.distill_chain([model], None, 1, lambda: "sgd")
    with pytest.raises(ValueError, match="`epochs`"):
        takd.distill_chain([model, _mlp(), _mlp()], None, [1], lambda: "sgd")
    with pytest.raises(TypeError, match="`optimizer_fn`"):
        takd.distill_chain([model, _mlp()], None, 1, "sgd")
