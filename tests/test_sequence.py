"""Token-level distillation: `[B, T, C]` logits with masks, against the float64 reference.

Also: the `[B, C]` path keeps its bits (tests/bc_fixture.py), layouts that
are not token logits are refused by name, and the memory-bounded ISATS
search (`search="scan"`).
"""

from __future__ import annotations

import json

import bc_fixture
import keras
import numpy as np
import pytest
import reference as ref
from helpers import assert_close, to_numpy

from keras_kdcap import ISATS, Distiller, FixedTemperature, with_teacher_logits
from keras_kdcap.policies import get_policy, registry
from keras_kdcap.policies.isats import SCAN_ELEMENTS, isats_temperature

VOCAB, TOKENS, CLASSES = 13, 6, 7
#: every policy keras_kdcap registers (a test's own policies are left out).
BUILT_IN = sorted(n for n, c in registry.POLICIES.items() if c.__module__.startswith("keras_kdcap"))
ALPHA, BETA = 0.3, 0.7


def test_every_built_in_policy_has_a_token_reference():
    assert sorted(REFERENCE_POLICIES) == BUILT_IN


# ------------------------------------------------------------------ the models
def language_model(hidden: int, seed: int, name: str) -> keras.Model:
    """`{"token_ids", "padding_mask"}` -> `[B, T, C]` logits (KerasHub-style inputs)."""
    ids = keras.Input((TOKENS,), dtype="int32", name="token_ids")
    mask = keras.Input((TOKENS,), dtype="bool", name="padding_mask")
    embed = keras.initializers.RandomNormal(stddev=1.5, seed=seed)
    init = keras.initializers.GlorotUniform(seed=seed)
    h = keras.layers.Embedding(VOCAB, hidden, embeddings_initializer=embed)(ids)
    h = keras.layers.Dense(hidden, "tanh", kernel_initializer=init)(h)
    h = h * keras.ops.expand_dims(keras.ops.cast(mask, "float32"), -1)
    out = keras.layers.Dense(CLASSES, kernel_initializer=init)(h) * 3.0
    return keras.Model({"token_ids": ids, "padding_mask": mask}, out, name=name)


@pytest.fixture
def models():
    return language_model(24, seed=1, name="teacher"), language_model(8, seed=2, name="student")


def token_batch(rng, batch: int = 4):
    """Inputs with padding, labels (-100 where padded) and token weights (one 0 inside)."""
    ids = rng.integers(0, VOCAB, (batch, TOKENS)).astype(np.int32)
    lengths = np.array([TOKENS, 4, 2, 5])[:batch]
    padding = np.arange(TOKENS)[None, :] < lengths[:, None]
    y = rng.integers(0, CLASSES, (batch, TOKENS)).astype(np.int32)
    y[~padding] = -100
    weights = rng.uniform(0.5, 2.0, (batch, TOKENS)).astype(np.float32)
    weights[0, 1] = 0.0  # a real token the sample weight leaves out
    return {"token_ids": ids, "padding_mask": padding}, y, weights


# ------------------------------------------------------------ the reference
def relations_for(num_classes: int) -> np.ndarray:
    return np.random.default_rng(7).dirichlet(np.ones(num_classes), num_classes)


def _kd(t, g, s):
    return ref.kl_kd(t, g, s)


REFERENCE_POLICIES = {
    # name: (kwargs, f(f, g, y) -> (per-token KD, target, statistics))
    "kd": lambda f, g, y: (_kd(ref.tempered_softmax(f, 4.0), g, 4.0), ref.tempered_softmax(f, 4.0)),
    "ats": lambda f, g, y: (_kd(ref.ats(f, y, 4.0, 2.0), g, 1.0), ref.ats(f, y, 4.0, 2.0)),
    "fgcr": lambda f, g, y: (
        _kd(ref.fgcr(f, y, relations_for(f.shape[1]), 0.5, 4.0), g, 4.0),
        ref.fgcr(f, y, relations_for(f.shape[1]), 0.5, 4.0),
    ),
    "dkd": lambda f, g, y: (
        ref.dkd(f, g, y, 1.0, 8.0, 4.0, warmup=1.0 / 20.0),
        ref.tempered_softmax(f, 4.0),
    ),
    "ctkd": lambda f, g, y: (
        _kd(ref.tempered_softmax(f, 4.0), g, 4.0),
        ref.tempered_softmax(f, 4.0),
    ),
    "sckd": lambda f, g, y: (
        (ref.gradient_cosine(ref.tempered_softmax(f, 4.0), g, y, 4.0) > 0)
        * _kd(ref.tempered_softmax(f, 4.0), g, 4.0),
        ref.tempered_softmax(f, 4.0),
    ),
    "ls": lambda f, g, y: (
        _kd(ref.tempered_softmax(ref.standardize(f), 2.0), ref.standardize(g), 2.0),
        ref.tempered_softmax(ref.standardize(f), 2.0),
    ),
    "isats": lambda f, g, y: isats_reference(f, g, y)[:2],
}


def isats_reference(f, g, y):
    t, tau2, _, fell, capped = ref.isats_target(f, y, 0.5, 20.0, 32, 2.0, 4.0, True)
    return (
        _kd(t, g, tau2),
        t,
        {"temperature": tau2, "fallback_rate": fell, "target_cap_rate": capped},
    )


def make_policy(name: str):
    """The policy with its defaults; FGCR with the reference's relations."""
    policy = get_policy(name)
    if name == "fgcr":
        policy.set_relations(relations_for(CLASSES))
    return policy


def expected(name, f, g, labels, weights):
    """Reference `ce_loss`, `kd_loss`, `target_first` and statistics of a token batch.

    Args:
        name: the policy.
        f, g: `[B, T, C]` teacher and student logits.
        labels: `[B, T]` classes or `[B, T, C]` label rows.
        weights: `[B, T]` token weights (0 where masked).
    """
    w = ref.token_rows(weights)
    keep = w != 0
    f, g = ref.token_rows(f)[keep], ref.token_rows(g)[keep]
    rows = ref.token_rows(labels)[keep]
    if rows.ndim == 2:
        y, ce = ref.soft_label_class(rows), ref.soft_cross_entropy(g, rows)
    else:
        y, ce = rows, ref.cross_entropy(g, rows)
    kd, t = REFERENCE_POLICIES[name](f, g, y)
    values = {
        "ce_loss": ref.token_mean(ce, weights),
        "kd_loss": ref.token_mean(kd, weights),
        "target_first": float(np.mean(np.argmax(t, axis=1) == y)) if keep.any() else 0.0,
    }
    if name == "isats":
        for key, value in isats_reference(f, g, y)[2].items():
            values[key] = float(np.mean(value))
    values["loss"] = ALPHA * values["ce_loss"] + BETA * values["kd_loss"]
    return values, y


def check(name, result, values, tag):
    for key in ("loss", "ce_loss", "kd_loss"):
        assert_close(f"tokens.{key}[{name}]{tag}", result[key], values[key])
    assert result["target_first"] == pytest.approx(values["target_first"], abs=1e-6)
    assert result["invalid_labels"] == 0.0 and result["nonfinite_teacher"] == 0.0


# ---------------------------------------------- 1. losses against the reference
@pytest.mark.parametrize("name", BUILT_IN)
def test_token_losses_match_reference_with_masks(name, models, rng):
    # sample_weight [B, T] and the padding_mask of the dict inputs, labels -100 where padded
    teacher, student = models
    x, y, weights = token_batch(rng)
    distiller = Distiller(teacher, student)
    distiller.compile("sgd", policy=make_policy(name), alpha=ALPHA, beta=BETA)
    result = distiller.evaluate(
        x, y, sample_weight=weights, batch_size=len(y), verbose=0, return_dict=True
    )
    f, g = to_numpy(teacher(x, training=False)), to_numpy(student(x, training=False))
    values, _ = expected(name, f, g, y, weights * x["padding_mask"])
    check(name, result, values, "")
    if name == "isats":
        for key in ("temperature", "fallback_rate", "target_cap_rate"):
            assert result[key] == pytest.approx(values[key], rel=1e-5, abs=1e-6), key


def eager_loss(distiller, x, y, f, g, weights=None):
    """`compute_loss` on cached teacher logits, then the step's statistics."""
    distiller.reset_metrics()
    loss = distiller.compute_loss(
        with_teacher_logits(x, keras.ops.convert_to_tensor(f)),
        None if y is None else keras.ops.convert_to_tensor(y),
        keras.ops.convert_to_tensor(g),
        weights,
    )
    statistics = {k: float(v) for k, v in distiller.get_metrics_result().items()}
    return {**statistics, "loss": float(to_numpy(loss))}  # Keras's own `loss` is not updated


def random_logits(rng, batch=4, scale=3.0):
    f = (rng.normal(size=(batch, TOKENS, CLASSES)) * scale).astype(np.float32)
    g = (rng.normal(size=(batch, TOKENS, CLASSES)) * scale).astype(np.float32)
    return f, g


@pytest.mark.parametrize("name", BUILT_IN)
def test_soft_token_labels_match_reference(name, models, rng):
    # [B, T, C] label rows (soft and one-hot), masked by padding_mask only
    x, y, _ = token_batch(rng)
    rows = rng.dirichlet(np.ones(CLASSES), y.shape).astype(np.float32)
    rows[1, :2] = np.eye(CLASSES, dtype=np.float32)[[3, 5]]
    rows[~x["padding_mask"]] = 0.0  # padded tokens: not even a probability vector
    f, g = random_logits(rng)
    f[np.arange(4)[:, None], np.arange(TOKENS)[None], np.argmax(rows, -1)] += 6.0
    distiller = Distiller(*models)
    distiller.compile("sgd", policy=make_policy(name), alpha=ALPHA, beta=BETA)
    result = eager_loss(distiller, x, rows, f, g)
    values, _ = expected(name, f, g, rows, x["padding_mask"].astype(np.float32))
    check(name, result, values, "[soft]")


@pytest.mark.parametrize(
    "source", ["sample_weight", "sequence_weight", "padding_mask", "both", "none"]
)
def test_every_mask_source(source, models, rng):
    x, y, weights = token_batch(rng)
    padding = x["padding_mask"].astype(np.float32)
    f, g = random_logits(rng)
    inputs, sample_weight = dict(x), None
    if source == "sample_weight":  # the mask inside the weights, as KerasHub gives it
        inputs.pop("padding_mask")
        sample_weight = token_weights = weights * padding
    elif source == "sequence_weight":  # [B]: one weight per sequence; a zero drops one
        sample_weight = np.array([1.5, 0.0, 2.0, 0.5], np.float32)
        token_weights = sample_weight[:, None] * padding
    elif source == "padding_mask":
        token_weights = padding
    elif source == "both":  # weights left non-zero on padding: the mask removes it
        sample_weight = weights
        token_weights = weights * padding
    else:  # no mask: every label counts and must be valid
        inputs.pop("padding_mask")
        y = np.where(padding > 0, y, 0)
        token_weights = np.ones(y.shape, np.float32)
    distiller = Distiller(*models)
    distiller.compile("sgd", policy=FixedTemperature(2.0), alpha=ALPHA, beta=BETA)
    result = eager_loss(distiller, inputs, y, f, g, sample_weight)
    keep = ref.token_rows(token_weights) != 0
    ft, gt, yt = ref.token_rows(f)[keep], ref.token_rows(g)[keep], ref.token_rows(y)[keep]
    ce = ref.token_mean(ref.cross_entropy(gt, yt), token_weights)
    kd = ref.token_mean(ref.kl_kd(ref.tempered_softmax(ft, 2.0), gt, 2.0), token_weights)
    assert_close(f"tokens.mask[{source}]", result["loss"], ALPHA * ce + BETA * kd)
    assert result["invalid_labels"] == 0.0


def test_masked_tokens_contribute_nothing(models, rng):
    # any logits (NaN teacher logits included) and any label at a masked token
    x, y, weights = token_batch(rng)
    f, g = random_logits(rng)
    distiller = Distiller(*models)
    distiller.compile("sgd", policy=ISATS(), alpha=ALPHA, beta=BETA)
    first = eager_loss(distiller, x, y, f, g, weights)
    masked = ~x["padding_mask"]
    masked[0, 1] = True  # the zero sample weight
    f2, g2, y2 = f.copy(), g.copy(), y.copy()
    f2[masked] = np.nan
    g2[masked] = 100.0
    y2[masked] = 10**6
    second = eager_loss(distiller, x, y2, f2, g2, weights)
    assert first == second


def test_no_valid_token_gives_zero_not_nan(models, rng):
    x, y, _ = token_batch(rng)
    distiller = Distiller(*models)
    distiller.compile("sgd", policy=ISATS())
    result = distiller.evaluate(
        x, y, sample_weight=np.zeros(y.shape, np.float32), batch_size=4, verbose=0, return_dict=True
    )
    assert result["loss"] == 0.0 and result["ce_loss"] == 0.0 and result["kd_loss"] == 0.0


@pytest.mark.parametrize("name", ["kd", "isats"])
def test_training_step_loss_matches_reference(name, models, rng):
    teacher, student = models
    x, y, weights = token_batch(rng)
    distiller = Distiller(teacher, student)
    distiller.compile(keras.optimizers.SGD(0.0), policy=make_policy(name), alpha=ALPHA, beta=BETA)
    history = distiller.fit(x, y, sample_weight=weights, batch_size=4, epochs=1, verbose=0)
    f, g = to_numpy(teacher(x, training=False)), to_numpy(student(x, training=False))
    values, _ = expected(name, f, g, y, weights * x["padding_mask"])
    assert_close(f"tokens.fit_loss[{name}]", history.history["loss"][0], values["loss"])


def test_fit_lowers_the_token_loss(models, rng):
    teacher, student = models
    x, y, weights = token_batch(rng)
    distiller = Distiller(teacher, student)
    distiller.compile(keras.optimizers.SGD(0.1), policy=ISATS(search="scan"), alpha=0.5, beta=0.5)
    before = distiller.evaluate(x, y, sample_weight=weights, verbose=0, return_dict=True)
    distiller.fit(x, y, sample_weight=weights, batch_size=4, epochs=5, verbose=0)
    after = distiller.evaluate(x, y, sample_weight=weights, verbose=0, return_dict=True)
    assert after["loss"] < before["loss"]


# ----------------------------------------------------- 2. the [B, C] path's bits
def _on_cpu() -> bool:
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.devices()[0].platform == "cpu"
    if backend == "torch":
        import torch

        return not torch.cuda.is_available()
    import tensorflow as tf

    return not tf.config.list_physical_devices("GPU")


def test_batch_class_path_keeps_its_numbers():
    stored = json.loads(bc_fixture.FIXTURE.read_text())
    backend = keras.backend.backend()
    if backend not in stored or not _on_cpu():
        pytest.skip("the stored bits are those of a CPU run of this backend")
    *_, relations = bc_fixture.batch()
    for case, bits in stored[backend].items():
        name, labels = case.split("/")
        policy = bc_fixture.policies(relations)[name] if name in BUILT_IN else None
        assert policy is not None, case
        values = bc_fixture.compute(name, policy, labels)
        assert values.keys() == bits.keys(), case
        for key, value in values.items():  # a float32 rounding apart at most, on any CPU
            expected = float.fromhex(bits[key])
            assert float(value) == pytest.approx(expected, rel=3e-7, abs=1e-9), (case, key)


# ------------------------------------------------------- 3. layouts and errors
def test_per_sample_labels_with_token_logits_are_refused(models, rng):
    x, y, _ = token_batch(rng)
    distiller = Distiller(*models)
    distiller.compile("sgd")
    with pytest.raises(ValueError, match=r"must hold a label per token"):
        distiller.fit(x, y[:, 0], verbose=0)


def test_sequence_backbone_with_per_sample_labels_is_refused(models, rng):
    # a backbone's [B, T, D] features are rank 3 too: per-sample labels give them away
    # (data read only at the first batch: a generator)
    x, y, _ = token_batch(rng)

    def batches():
        yield x, y[:, 0]

    distiller = Distiller(*models)
    distiller.compile("sgd")
    with pytest.raises(ValueError, match=r"one per sample, the model gives a sequence of features"):
        distiller.evaluate(batches(), verbose=0)


def test_token_and_sample_logits_together_are_refused(rng):
    ids = keras.Input((TOKENS,), dtype="int32")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(VOCAB, 4)(ids))
    per_sample = keras.Model(ids, keras.layers.Dense(CLASSES)(pooled), name="classifier")
    per_token = keras.Model(ids, keras.layers.Dense(CLASSES)(keras.layers.Embedding(VOCAB, 4)(ids)))
    distiller = Distiller(per_sample, per_token)
    distiller.compile("sgd")
    x = rng.integers(0, VOCAB, (8, TOKENS)).astype(np.int32)
    y = rng.integers(0, CLASSES, (8, TOKENS)).astype(np.int32)
    with pytest.raises(ValueError, match=r"both must give \[batch, classes\] logits, or both"):
        distiller.fit(x, y, verbose=0)


def test_feature_maps_are_still_refused():
    inputs = keras.Input((6, 6, 3))
    backbone = keras.Model(inputs, keras.layers.Conv2D(CLASSES, 3)(inputs), name="maps")
    with pytest.raises(ValueError, match=r"'maps'\) outputs a tensor of shape \(None, 4, 4, 7\)"):
        Distiller(backbone, language_model(8, 2, "student"))


def test_unmasked_invalid_token_label_stops_fit(models, rng):
    x, y, _ = token_batch(rng)
    y[0, 0] = -100  # a real token (padding_mask true) with the ignore label: not masked
    distiller = Distiller(*models)
    distiller.compile("sgd")
    with pytest.raises(ValueError, match=r"zero `sample_weight` or a false `padding_mask`"):
        distiller.fit(x, y, batch_size=4, verbose=0)


def test_token_labels_of_the_wrong_layout_are_refused_before_fit(models, rng):
    x, y, _ = token_batch(rng)
    distiller = Distiller(*models)
    distiller.compile("sgd")
    with pytest.raises(ValueError, match=r"label rows \[N, T, 7\]; got shape \(4, 6, 3\)"):
        distiller.fit(x, np.zeros((4, TOKENS, 3), np.float32), verbose=0)


def test_padding_mask_of_another_shape_is_refused(models, rng):
    x, y, _ = token_batch(rng)
    f, g = random_logits(rng)
    distiller = Distiller(*models)
    distiller.compile("sgd")
    x = dict(x, padding_mask=np.ones((4, TOKENS, 2), bool))
    with pytest.raises(ValueError, match=r"`padding_mask` must be \[B, T\]"):
        eager_loss(distiller, x, y, f, g)


# ----------------------------------------- 4. the memory-bounded ISATS search
@pytest.mark.parametrize("refine", [False, True])
def test_scan_and_grid_pick_the_same_temperatures(refine, rng):
    f = (rng.normal(size=(64, 50)) * 3.0).astype(np.float32)
    y = rng.integers(0, 50, 64).astype(np.int32)
    f[np.arange(64), y] += 9.0
    grid = to_numpy(isats_temperature(f, y, refine=refine, search="grid"))
    scan = to_numpy(isats_temperature(f, y, refine=refine, search="scan"))
    np.testing.assert_array_equal(scan, grid)


def test_auto_search_scans_large_problems_only():
    from keras_kdcap.policies.isats import _scans

    small = keras.KerasTensor((128, 100))
    large = keras.KerasTensor((4096, 32000))
    unknown_rows = keras.KerasTensor((None, 32000))
    assert not _scans("auto", small, 32)
    assert _scans("auto", large, 32) and _scans("auto", unknown_rows, 32)
    assert _scans("scan", small, 32) and not _scans("grid", large, 32)
    assert 128 * 32 * 100 < SCAN_ELEMENTS < 4096 * 32 * 32000


def test_search_argument_is_checked_and_saved():
    with pytest.raises(ValueError, match=r"`search` must be one of"):
        ISATS(search="fast")
    policy = ISATS(search="scan")
    assert ISATS.from_config(policy.get_config()).search_mode == "scan"


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="XLA memory analysis (JAX)")
def test_scan_memory_is_a_small_multiple_of_the_logits_whatever_k():
    # compile only: nothing of this size is allocated
    import jax
    import jax.numpy as jnp

    rows, classes = 1024, 8192
    shapes = (
        jax.ShapeDtypeStruct((rows, classes), jnp.float32),
        jax.ShapeDtypeStruct((rows,), jnp.int32),
    )
    logits_bytes = 4 * rows * classes
    for k in (8, 64):
        for refine in (False, True):
            scan = jax.jit(
                lambda f, y, k=k, r=refine: isats_temperature(
                    f, y, num_candidates=k, refine=r, search="scan"
                )
            )
            temp = scan.lower(*shapes).compile().memory_analysis().temp_size_in_bytes
            assert temp <= 4 * logits_bytes, (k, refine, temp / logits_bytes)
    grid = jax.jit(lambda f, y: isats_temperature(f, y, num_candidates=64, search="grid"))
    assert grid.lower(*shapes).compile().memory_analysis().temp_size_in_bytes > 16 * logits_bytes
