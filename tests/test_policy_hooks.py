"""Policies that prepare and schedule themselves, the registry, renamed names, the exports.

Numbers are checked against the float64 references of tests/reference.py.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import reference as ref
from helpers import assert_close, to_numpy

import keras_kdcap
from keras_kdcap import CTKD, DKD, FGCR, SCKD, Distiller, LogitStandardization, TemperaturePolicy
from keras_kdcap.baselines.callbacks import PolicyEpochCallback
from keras_kdcap.policies import registry

CLASSES = 10


def _problem(n=96, features=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    w = rng.normal(size=(features, CLASSES)).astype(np.float32)
    y = np.argmax(x @ w, axis=-1).astype(np.int32)
    teacher = keras.Sequential(
        [keras.Input((features,)), keras.layers.Dense(CLASSES, name="classifier")]
    )
    teacher.layers[-1].set_weights([w, np.zeros(CLASSES, np.float32)])
    student = keras.Sequential([keras.Input((features,)), keras.layers.Dense(CLASSES)])
    return x, y, teacher, student


def _frozen_fit(policy, epochs, callbacks=None, initial_epoch=0):
    """A fit whose student never moves (learning rate 0), so only the schedule changes KD."""
    x, y, teacher, student = _problem()
    distiller = Distiller(teacher, student)
    distiller.compile(keras.optimizers.SGD(0.0), policy=policy, alpha=0.0, beta=1.0)
    history = distiller.fit(
        x,
        y,
        epochs=epochs,
        initial_epoch=initial_epoch,
        batch_size=32,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )
    f = to_numpy(teacher(x)).astype(np.float64)
    g = to_numpy(student(x)).astype(np.float64)
    return history.history, f, g, y


def test_plain_fit_grows_dkd_weight_epoch_by_epoch():
    history, f, g, y = _frozen_fit(DKD(warmup_epochs=10), epochs=4)
    expected_warmup = [min((e + 1) / 10, 1.0) for e in range(4)]
    assert_close("dkd_warmup", np.array(history["dkd_warmup"]), np.array(expected_warmup))
    full = ref.dkd(f, g, y, 1.0, 8.0, 4.0).mean()
    expected_kd = np.array([w * full for w in expected_warmup])
    assert_close("kd_loss by epoch", np.array(history["kd_loss"]), expected_kd)
    assert np.all(np.diff(history["kd_loss"]) > 0), history["kd_loss"]


def test_resumed_fit_continues_the_warmup_and_the_old_callback_does_not_double_it():
    history, *_ = _frozen_fit(DKD(warmup_epochs=10), epochs=3, initial_epoch=1)
    assert_close("resumed", np.array(history["dkd_warmup"]), np.array([0.2, 0.3]))
    with pytest.warns(DeprecationWarning, match="PolicyEpochCallback"):
        callback = PolicyEpochCallback()
    history, *_ = _frozen_fit(DKD(warmup_epochs=10), epochs=3, callbacks=[callback])
    assert_close("with callback", np.array(history["dkd_warmup"]), np.array([0.1, 0.2, 0.3]))


def test_wrapped_ctkd_follows_its_curriculum_in_a_plain_fit():
    policy = LogitStandardization(CTKD(curriculum_epochs=3, lambda_max=2.0))
    history, *_ = _frozen_fit(policy, epochs=3)
    expected = [2.0 * 0.5 * (1.0 - np.cos(np.pi * min((e + 1) / 3, 1.0))) for e in range(3)]
    assert_close("ctkd_lambda", np.array(history["ctkd_lambda"]), np.array(expected))
    assert float(to_numpy(policy.base_policy.epoch)) == 2.0


# ---------------------------------------------------------------------------- prepare
def test_prepare_is_a_no_op_by_default_and_fgcr_prepares_itself():
    x, _, teacher, _ = _problem()
    y = (np.arange(len(x)) % CLASSES).astype(np.int32)  # every class present
    keras_kdcap.FixedTemperature().prepare(teacher, None)  # nothing to do, no error
    data = [(x[i : i + 32], y[i : i + 32]) for i in range(0, len(x), 32)]
    f = to_numpy(teacher(x))

    from_data = FGCR(temperature=2.0)
    from_data.prepare(teacher, data)  # "auto" with data: class means
    expected = ref.class_mean_relations(f, y, 2.0, CLASSES)
    assert_close("relations from data", to_numpy(from_data.relations), expected)

    wrapped = SCKD(base_policy=FGCR(relation_source="classifier", relation_temperature=0.5))
    wrapped.prepare(teacher, data)  # passed on to the base, which ignores the data
    kernel = to_numpy(teacher.get_layer("classifier").kernel)
    expected = ref.cosine_relations(kernel, 0.5)
    assert_close("classifier relations", to_numpy(wrapped.base_policy.relations), expected)
    wrapped.check_ready()

    auto = LogitStandardization(FGCR(relation_temperature=0.5))
    auto.prepare(teacher)  # "auto" without data: the classifier
    assert_close("auto relations", to_numpy(auto.base_policy.relations), expected)


def test_fgcr_prepare_errors_name_the_fix():
    _, _, teacher, _ = _problem()
    with pytest.raises(ValueError, match="relation_source='classifier'"):
        FGCR(relation_source="data").prepare(teacher, None)
    bare = keras.Sequential([keras.Input((8,)), keras.layers.Dense(CLASSES, name="head")])
    with pytest.raises(ValueError, match="Dense layer named 'classifier'"):
        FGCR().prepare(bare)
    with pytest.raises(ValueError, match="`relation_source`"):
        FGCR(relation_source="weights")
    restored = FGCR.from_config(FGCR(relation_source="classifier").get_config())
    assert restored.relation_source == "classifier"


# --------------------------------------------------------------------------- registry
def test_registry_name_registers_and_arguments_come_from_the_signature():
    class Scaled(TemperaturePolicy):
        registry_name = "test_hooks_scaled"
        requires_labels = False

        def __init__(self, temperature: float = 4.0, sharpen: bool = False, name=None, **kw):
            super().__init__(name=name, **kw)
            self.temperature = temperature
            self.sharpen = sharpen

    try:
        assert keras_kdcap.get_policy("test_hooks_scaled").temperature == 4.0
        assert "test_hooks_scaled" in keras_kdcap.get_policy_names()
        assert list(registry.policy_arguments(Scaled)) == ["temperature", "sharpen"]
        args = registry.parse_policy_args("temperature=2.5, sharpen=yes")
        assert registry.convert_arguments(Scaled, args) == {"temperature": 2.5, "sharpen": True}
        with pytest.raises(ValueError, match="sharpen=maybe of test_hooks_scaled: expected bool"):
            registry.convert_argument(Scaled, "sharpen", "maybe")
        with pytest.raises(ValueError, match="takes no argument 'gamma'"):
            registry.convert_argument(Scaled, "gamma", "1")
        with pytest.raises(ValueError, match="is taken by"):

            class Clash(TemperaturePolicy):
                registry_name = "test_hooks_scaled"
    finally:
        registry.POLICIES.pop("test_hooks_scaled", None)
    for text, match in (("temperature", "name=value"), ("a=1,a=2", "twice")):
        with pytest.raises(ValueError, match=match):
            registry.parse_policy_args(text)
    with pytest.raises(ValueError, match="Unknown policy 'nosuch'"):
        keras_kdcap.get_policy("nosuch")
    assert registry.convert_argument(keras_kdcap.ISATS, "target_temperature", "none") is None
    with pytest.raises(ValueError, match="num_candidates=2.5 of isats: expected int"):
        registry.convert_argument(keras_kdcap.ISATS, "num_candidates", "2.5")


# ------------------------------------------------------------------------- old names
def test_renamed_methods_warn_and_agree():
    ctkd = CTKD(initial_temperature=5.0)
    with pytest.warns(DeprecationWarning, match="current_temperature"):
        old = float(to_numpy(ctkd.temperature()))
    assert old == pytest.approx(float(to_numpy(ctkd.current_temperature())))
    assert old == pytest.approx(5.0, rel=1e-6)
    sckd = SCKD(weighting="affine")
    cosine = keras.ops.convert_to_tensor(np.array([-1.0, 0.0, 0.5], np.float32))
    with pytest.warns(DeprecationWarning, match="kd_weight"):
        old = to_numpy(sckd.weight(cosine))
    np.testing.assert_array_equal(old, to_numpy(sckd.kd_weight(cosine)))
    np.testing.assert_allclose(old, [0.0, 0.5, 0.75])


def test_moved_isats_search_keeps_its_old_path():
    from keras_kdcap.policies.isats import isats_temperature

    with pytest.warns(DeprecationWarning, match="keras_kdcap.policies.isats"):
        old = keras_kdcap.ops.isats_temperature
    assert old is isats_temperature
    with pytest.raises(AttributeError):
        keras_kdcap.ops.no_such_function  # noqa: B018


# -------------------------------------------------------------------------- exports
def test_star_import_exports_the_api_and_shadows_no_keras_name():
    namespace: dict = {}
    exec("from keras_kdcap import *", namespace)  # noqa: S102 - the import under test
    exported = set(namespace) - {"__builtins__"}
    assert exported == set(keras_kdcap.__all__)
    for name in ("TeacherCache", "with_teacher_logits", "Distiller", "DKD", "get_policy"):
        assert name in exported
    assert namespace["TeacherCache"] is keras_kdcap.cache.TeacherCache
    assert namespace["with_teacher_logits"] is keras_kdcap.distiller.with_teacher_logits
    public = {name for name in dir(keras) if not name.startswith("_")}
    for module in ("layers", "losses", "metrics", "callbacks", "models", "ops", "optimizers"):
        public |= {n for n in dir(getattr(keras, module)) if not n.startswith("_")}
    assert not exported & public, exported & public
    assert keras_kdcap.ops.tempered_softmax and keras_kdcap.models.get_model  # still reachable
