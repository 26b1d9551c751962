"""Every temperature policy against the float64 NumPy reference."""

from __future__ import annotations

import inspect

import keras
import numpy as np
import pytest
import reference as ref
from helpers import assert_close, to_numpy

from keras_kdcap import (
    ATS,
    FGCR,
    ISATS,
    Distiller,
    FixedTemperature,
    get_policy_names,
    with_teacher_logits,
)
from keras_kdcap.policies import get_policy

CASES = [(scale, classes) for scale in (1.0, 3.0, 10.0) for classes in (10, 100, 1000)]


def teacher_like(rng, scale, classes, batch=16, correct=0.75):
    """Logits where about `correct` of the samples rank the label first."""
    f = (rng.normal(size=(batch, classes)) * scale).astype(np.float32)
    y = rng.integers(0, classes, size=batch).astype(np.int32)
    boost = rng.random(batch) < correct
    f[np.arange(batch)[boost], y[boost]] += 4.0 * scale
    return f, y


@pytest.mark.parametrize("scale,classes", CASES)
def test_fixed_temperature(rng, scale, classes):
    f, y = teacher_like(rng, scale, classes)
    probs, s = FixedTemperature(3.0)(f, y)
    assert_close("FixedTemperature.probs", probs, ref.tempered_softmax(f, 3.0))
    np.testing.assert_array_equal(to_numpy(s), np.full(len(y), 3.0))


@pytest.mark.parametrize("scale,classes", CASES)
def test_ats(rng, scale, classes):
    f, y = teacher_like(rng, scale, classes)
    probs, s = ATS(4.0, 2.0)(f, y)
    assert_close("ATS.probs", probs, ref.ats(f, y, 4.0, 2.0))
    np.testing.assert_array_equal(to_numpy(s), np.ones(len(y)))


def test_ats_with_equal_temperatures_is_fixed_kd(rng):
    f, y = teacher_like(rng, 3.0, 100)
    ats_probs, _ = ATS(4.0, 4.0, student_temperature=4.0)(f, y)
    kd_probs, _ = FixedTemperature(4.0)(f, y)
    np.testing.assert_allclose(to_numpy(ats_probs), to_numpy(kd_probs), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("scale,classes", CASES)
@pytest.mark.parametrize("keep_first", [True, False])
@pytest.mark.parametrize("search", ["grid", "scan"])
def test_isats_target_and_statistics(rng, scale, classes, keep_first, search):
    f, y = teacher_like(rng, scale, classes)
    policy = ISATS(
        min_temperature=0.5,
        max_temperature=20.0,
        num_candidates=32,
        target_ratio=2.0,
        fallback_temperature=4.0,
        keep_target_first=keep_first,
        search=search,
    )
    probs, student_t, stats = policy.compute_target(f, y)
    e_probs, e_tau2, _, e_fell, e_cap = ref.isats_target(f, y, 0.5, 20.0, 32, 2.0, 4.0, keep_first)
    # where the grid arg-max is a near-tie, float32 may pick the neighbour:
    # compare targets on the samples whose temperature agrees.
    tau2 = to_numpy(stats["temperature"])
    same = np.isclose(tau2, e_tau2, rtol=1e-5)
    assert same.mean() > 0.8
    assert_close("ISATS.probs", to_numpy(probs)[same], e_probs[same])
    np.testing.assert_allclose(to_numpy(student_t)[same], e_tau2[same], rtol=1e-5)
    np.testing.assert_array_equal(to_numpy(stats["fallback_rate"]), e_fell)
    np.testing.assert_array_equal(to_numpy(stats["target_cap_rate"])[same], e_cap[same])
    np.testing.assert_allclose(to_numpy(probs).sum(axis=1), 1.0, rtol=1e-5)
    if keep_first:
        first = np.argmax(to_numpy(probs), axis=1) == y
        correct = e_fell == 0
        assert np.all(first[correct])


def test_isats_fixed_target_temperature_and_student_temperature(rng):
    f, y = teacher_like(rng, 3.0, 100, correct=1.0)
    policy = ISATS(target_temperature=6.0, student_temperature=1.0, keep_target_first=False)
    probs, s, stats = policy.compute_target(f, y)
    tau2 = to_numpy(stats["temperature"])
    tau1 = np.where(to_numpy(stats["fallback_rate"]) > 0, 4.0, 6.0)  # fallback: plain KD at 4
    assert_close("ISATS.fixed_tau1", probs, ref.ats(f, y, tau1, tau2))
    np.testing.assert_array_equal(to_numpy(s), np.ones(len(y)))


def test_isats_target_stays_first_where_plain_ats_loses_it(rng):
    # an under-confident teacher: the label leads by little
    f = rng.normal(size=(64, 100)).astype(np.float32)
    y = np.argmax(f, axis=1).astype(np.int32)
    f[np.arange(64), y] += 0.3
    f += 2.0  # positive logits: raising tau1 pulls the target down
    capped_probs, _ = ISATS(target_ratio=2.0)(f, y)
    plain_probs, _ = ISATS(target_ratio=2.0, keep_target_first=False)(f, y)
    assert np.mean(np.argmax(to_numpy(capped_probs), axis=1) == y) == 1.0
    assert np.mean(np.argmax(to_numpy(plain_probs), axis=1) == y) < 0.5


def margin_rows(rng, scale, classes, batch=24):
    """`teacher_like` rows plus correct rows with `m <= 0` and a misclassified one."""
    f, y = teacher_like(rng, scale, classes, batch)
    y[:4] = np.argmax(f[:4], axis=1)
    others = np.where(np.arange(classes) == y[:4, None], -np.inf, f[:4]).max(axis=1)
    f[:2] -= others[:2, None] + 0.5  # the best other class at -0.5, the label above it
    f[2] -= f[2].max() + 1.0  # every logit negative, the label first
    y[3] = np.argmin(f[3])  # misclassified, every logit negative
    f[3] -= f[3].max() + 1.0
    return f, y


@pytest.mark.parametrize("scale,classes", [(1.0, 10), (3.0, 100), (10.0, 1000)])
@pytest.mark.parametrize("kappa", [0.0, 0.25, 0.5, 1.0])
def test_isats_target_margin_against_reference(rng, scale, classes, kappa):
    f, y = margin_rows(rng, scale, classes)
    policy = ISATS(target_margin=kappa, num_candidates=32, search="grid")
    probs, student_t, stats = policy.compute_target(f, y)
    e_probs, e_tau2, e_tau1, e_fell, e_cap = ref.isats_margin_target(
        f, y, 0.5, 20.0, 32, kappa, 4.0
    )
    others = np.where(np.arange(classes) == y[:, None], -np.inf, f).max(axis=1)
    correct = e_fell == 0
    assert (~correct).any() and (correct & (others <= 0)).sum() >= 3 and (others > 0).any()
    tau2 = to_numpy(stats["temperature"])
    same = np.isclose(tau2, e_tau2, rtol=1e-5)  # float32 may take a near-tie's neighbour
    assert same.mean() > 0.8 and same[:4].all()
    assert_close(f"ISATS.margin[{kappa}]", to_numpy(probs)[same], e_probs[same])
    np.testing.assert_allclose(to_numpy(student_t)[same], e_tau2[same], rtol=1e-5)
    np.testing.assert_array_equal(to_numpy(stats["fallback_rate"]), e_fell)
    np.testing.assert_array_equal(to_numpy(stats["target_cap_rate"])[same], e_cap[same])
    if kappa == 0.0:  # the cap binds for every correct sample with m > 0
        np.testing.assert_array_equal(e_cap, (correct & (others > 0)).astype(float))
    assert np.all(np.argmax(to_numpy(probs), axis=1)[correct] == y[correct])
    # uncapped: the label keeps the fraction kappa of its lead, f_y / tau1 = (m + kappa lead) / tau2
    target = f[np.arange(len(y)), y].astype(np.float64)
    keep = correct & (others > 0) & (e_cap == 0)
    kept = (others + kappa * (target - others)) / e_tau2
    np.testing.assert_allclose((target / e_tau1)[keep], kept[keep], rtol=1e-12)


def test_isats_target_margin_one_is_target_ratio_one(rng):
    f, y = margin_rows(rng, 3.0, 100)
    margin_probs, margin_t, margin_stats = ISATS(target_margin=1.0).compute_target(f, y)
    ratio_probs, ratio_t, ratio_stats = ISATS(target_ratio=1.0).compute_target(f, y)
    np.testing.assert_array_equal(to_numpy(margin_probs), to_numpy(ratio_probs))
    np.testing.assert_array_equal(to_numpy(margin_t), to_numpy(ratio_t))
    for key, value in margin_stats.items():
        np.testing.assert_array_equal(to_numpy(value), to_numpy(ratio_stats[key]))


def test_isats_target_margin_per_token(rng):
    # [B, T, C] logits: the policy applies to every token (keras_kdcap.sequence)
    batch, tokens, classes = 3, 5, 11
    f = (rng.normal(size=(batch, tokens, classes)) * 3.0).astype(np.float32)
    g = rng.normal(size=(batch, tokens, classes)).astype(np.float32)
    y = rng.integers(0, classes, (batch, tokens)).astype(np.int32)
    boost = rng.random((batch, tokens)) < 0.7  # the label first; elsewhere the last class
    np.put_along_axis(f, y[..., None], f.max(axis=-1, keepdims=True) + 1.0, -1)
    y = np.where(boost, y, np.argmin(f, axis=-1)).astype(np.int32)
    teacher, student = (
        keras.Sequential(
            [keras.Input((tokens,), dtype="int32"), keras.layers.Embedding(7, classes)]
        )
        for _ in range(2)
    )
    distiller = Distiller(teacher, student)
    distiller.compile("sgd", policy=ISATS(target_margin=0.5), alpha=0.3, beta=0.7)
    x = rng.integers(0, 7, (batch, tokens)).astype(np.int32)
    distiller.compute_loss(
        with_teacher_logits(x, keras.ops.convert_to_tensor(f)),
        keras.ops.convert_to_tensor(y),
        keras.ops.convert_to_tensor(g),
    )
    result = {k: float(v) for k, v in distiller.get_metrics_result().items()}
    rows_f, rows_g, rows_y = ref.token_rows(f), ref.token_rows(g), ref.token_rows(y)
    t, tau2, _, fell, capped = ref.isats_margin_target(rows_f, rows_y, 0.5, 20.0, 32, 0.5, 4.0)
    assert_close("ISATS.margin.tokens", result["kd_loss"], ref.kl_kd(t, rows_g, tau2).mean())
    assert result["temperature"] == pytest.approx(tau2.mean(), rel=1e-5)
    assert result["fallback_rate"] == pytest.approx(fell.mean(), abs=1e-6)
    assert result["target_cap_rate"] == pytest.approx(capped.mean(), abs=1e-6)
    assert 0 < fell.mean() < 1


@pytest.mark.parametrize("scale,classes", [(1.0, 10), (3.0, 100), (10.0, 1000)])
def test_fgcr_with_relations(rng, scale, classes):
    f, y = teacher_like(rng, scale, classes)
    relations = ref.softmax(rng.normal(size=(classes, classes)))
    policy = FGCR(weight=0.3, temperature=4.0)
    policy.set_relations(relations)
    probs, s = policy(f, y)
    assert_close("FGCR.probs", probs, ref.fgcr(f, y, relations, 0.3, 4.0))
    np.testing.assert_array_equal(to_numpy(s), np.full(len(y), 4.0))


def test_fgcr_adapt_is_the_class_mean_probability(rng):
    classes = 10
    x = rng.normal(size=(200, 6)).astype(np.float32)
    y = np.repeat(np.arange(classes), 20).astype(np.int32)
    teacher = keras.Sequential([keras.Input((6,)), keras.layers.Dense(classes)])
    f = to_numpy(teacher(x))
    policy = FGCR(weight=0.5, temperature=2.0)
    policy.adapt(teacher, [(x[i : i + 50], y[i : i + 50]) for i in range(0, 200, 50)])
    expected = ref.class_mean_relations(f, y, 2.0, classes)
    assert_close("FGCR.adapt", policy.relations, expected)


def test_fgcr_classifier_relations(rng):
    kernel = rng.normal(size=(16, 10)).astype(np.float32)
    policy = FGCR()
    policy.set_classifier_relations(kernel, relation_temperature=0.25)
    assert_close("FGCR.classifier", policy.relations, ref.cosine_relations(kernel, 0.25))


def test_fgcr_errors(rng):
    policy = FGCR()
    with pytest.raises(ValueError, match="adapt"):
        policy(np.zeros((2, 5), np.float32), np.array([0, 1]))
    with pytest.raises(ValueError, match="no samples of classes"):
        teacher = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
        policy.adapt(teacher, [(np.zeros((4, 3), np.float32), np.array([0, 0, 1, 1]))])
    with pytest.raises(ValueError, match="sum to 1"):
        policy.set_relations(np.ones((3, 3)))
    with pytest.raises(ValueError, match="weight"):
        FGCR(weight=1.5)


@pytest.mark.parametrize(
    "policy",
    [
        FixedTemperature(3.0),
        ATS(5.0, 1.5, student_temperature=2.0, keep_target_first=True),
        ISATS(0.2, 30.0, 16, refine=True, target_ratio=1.5, fallback_temperature=3.0),
        ISATS(target_margin=0.25, fallback_temperature=3.0, student_temperature=2.0),
        FGCR(weight=0.2, temperature=3.0, num_classes=4),
    ],
    ids=lambda p: type(p).__name__,
)
def test_policy_serialization_round_trip(policy):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(policy))
    assert type(restored) is type(policy)
    assert restored.get_config() == policy.get_config()
    if isinstance(policy, ISATS):
        assert restored.target_margin == policy.target_margin
        assert ISATS.from_config(policy.get_config()).target_margin == policy.target_margin


@pytest.mark.parametrize(
    "make,argument",
    [
        (lambda: FixedTemperature(0.0), "temperature"),
        (lambda: FixedTemperature(-1.0), "temperature"),
        (lambda: ATS(target_temperature=float("nan")), "target_temperature"),
        (lambda: ATS(other_temperature=0), "other_temperature"),
        (lambda: ISATS(min_temperature=5.0, max_temperature=5.0), "min_temperature"),
        (lambda: ISATS(min_temperature=0.0), "min_temperature"),
        (lambda: ISATS(num_candidates=1), "num_candidates"),
        (lambda: ISATS(fallback_temperature=-2.0), "fallback_temperature"),
        (lambda: ISATS(student_temperature=0.0), "student_temperature"),
        (lambda: ISATS(target_margin=1.5), "target_margin"),
        (lambda: ISATS(target_margin=-0.1), "target_margin"),
        (lambda: ISATS(target_margin=float("nan")), "target_margin"),
        (lambda: ISATS(target_margin=0.5, target_temperature=4.0), "target_temperature"),
        (lambda: ISATS(target_margin=0.5, target_temperature=4.0), "target_margin"),
        (lambda: FGCR(temperature=0.0), "temperature"),
    ],
)
def test_bad_policy_arguments_name_the_argument(make, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        make()


def test_label_needing_policy_called_without_labels():
    with pytest.raises(ValueError, match="needs the labels"):
        ISATS()(np.zeros((2, 5), np.float32))
    probs, _ = FixedTemperature()(np.zeros((2, 5), np.float32))
    np.testing.assert_allclose(to_numpy(probs), 0.2, rtol=1e-6)


def test_get_policy_by_name():
    assert isinstance(get_policy("isats", target_ratio=1.5), ISATS)
    assert get_policy("isats", target_margin=0.5).target_margin == 0.5
    assert set(get_policy_names()) >= {"kd", "ats", "isats", "fgcr"}
    with pytest.raises(ValueError, match="Unknown policy"):
        get_policy("nope")


# ------------------------------------------------------------------ configs
#: per registry name, calls whose arguments between them all differ from the defaults.
NON_DEFAULT = {
    "kd": [dict(temperature=2.5)],
    "ats": [
        dict(
            target_temperature=3.0,
            other_temperature=1.5,
            student_temperature=2.0,
            keep_target_first=True,
        )
    ],
    "ctkd": [
        dict(
            initial_temperature=5.0,
            min_temperature=2.0,
            max_temperature=10.0,
            lambda_max=0.5,
            curriculum_epochs=3,
        )
    ],
    "dkd": [dict(tckd_weight=0.5, nckd_weight=2.0, temperature=3.0, warmup_epochs=5)],
    "fgcr": [
        dict(
            weight=0.3,
            temperature=2.0,
            num_classes=7,
            relation_source="classifier",
            relation_temperature=0.5,
        )
    ],
    "isats": [
        dict(
            min_temperature=1.0,
            max_temperature=10.0,
            num_candidates=8,
            refine=True,
            target_ratio=3.0,
            fallback_temperature=2.0,
            student_temperature=1.5,
            keep_target_first=False,
            search="scan",
            target_margin=0.5,
        ),
        dict(target_temperature=3.0),
    ],
    "ls": [dict(base_policy=ATS(2.0), temperature=3.0, ddof=1, eps=1e-5)],
    "sckd": [dict(temperature=3.0, weighting="clip", base_policy=FixedTemperature(2.0))],
}


def _package_policies():
    from keras_kdcap.policies import POLICIES

    return sorted(n for n, c in POLICIES.items() if c.__module__.startswith("keras_kdcap."))


@pytest.mark.parametrize("name", _package_policies())
def test_config_holds_exactly_the_constructor_arguments(name):
    from keras_kdcap.policies.registry import policy_class

    cls = policy_class(name)
    params = inspect.signature(cls.__init__).parameters
    settings = [p for p in params if p not in ("self", "name", "kwargs")]
    assert name in NON_DEFAULT, f"add {name!r} to NON_DEFAULT"
    assert set(settings) == {k for args in NON_DEFAULT[name] for k in args}
    for args in NON_DEFAULT[name]:
        policy = cls(**args)
        config = policy.get_config()
        assert list(config) == ["name", "trainable", "dtype", *settings]
        for key, value in args.items():
            assert value != params[key].default, key
            if key == "base_policy":
                value = keras.saving.serialize_keras_object(value)
            assert config[key] == value and type(config[key]) is type(value), key
        assert cls.from_config(config).get_config() == config
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(policy)
        )
        assert type(restored) is cls and restored.get_config() == config


def test_config_of_a_subclass_and_of_arguments_kept_elsewhere():
    class Sharper(ATS):
        def __init__(self, sharpness: float = 1.0, **kwargs):
            super().__init__(**kwargs)
            self.sharpness = sharpness

    class Hidden(FixedTemperature):
        def __init__(self, scale: float = 1.0, **kwargs):
            super().__init__(**kwargs)
            self._scale = scale  # not under its own name: Keras's record of it is used

    config = Sharper(2.0, target_temperature=5.0).get_config()
    assert (config["target_temperature"], config["sharpness"]) == (5.0, 2.0)
    assert list(config)[-2:] == ["keep_target_first", "sharpness"]
    assert Sharper.from_config(config).get_config() == config
    assert Hidden(scale=3.0, temperature=2.0).get_config()["scale"] == 3.0
