"""The Distiller: its loss against the reference, training, saving and bad input."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import reference as ref
from helpers import CLASSES, FEATURES, assert_close, mlp, to_numpy

from keras_kdcap import ATS, FGCR, ISATS, Distiller, FixedTemperature


@pytest.fixture
def teacher(data):
    x, y = data
    model = mlp(32, seed=1, batchnorm=True)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, verbose=0)
    return model


def fgcr_for(teacher, data):
    policy = FGCR(weight=0.4, temperature=3.0)
    x, y = data
    policy.adapt(teacher, [(x, y)])
    return policy


POLICIES = {
    "kd": lambda teacher, data: FixedTemperature(4.0),
    "ats": lambda teacher, data: ATS(4.0, 2.0),
    "isats": lambda teacher, data: ISATS(num_candidates=16),
    "fgcr": fgcr_for,
}


def reference_target(name, policy, f, y):
    if name == "kd":
        return ref.tempered_softmax(f, 4.0), np.full(len(y), 4.0)
    if name == "ats":
        return ref.ats(f, y, 4.0, 2.0), np.ones(len(y))
    if name == "isats":
        probs, tau2, *_ = ref.isats_target(f, y, 0.5, 20.0, 16, 2.0, 4.0, True)
        return probs, tau2
    return ref.fgcr(f, y, to_numpy(policy.relations), 0.4, 3.0), np.full(len(y), 3.0)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_loss_matches_reference_with_sample_weights(name, teacher, data, rng):
    x, y = data
    student = mlp(8, seed=2)
    policy = POLICIES[name](teacher, data)
    distiller = Distiller(teacher, student)
    distiller.compile("sgd", policy=policy, alpha=0.3, beta=0.7)
    weights = rng.uniform(0.0, 2.0, len(y)).astype(np.float32)
    result = distiller.evaluate(
        x, y, sample_weight=weights, batch_size=len(y), verbose=0, return_dict=True
    )
    f = to_numpy(teacher(x, training=False))
    g = to_numpy(student(x, training=False))
    t, s = reference_target(name, policy, f, y)
    ce = ref.cross_entropy(g, y)
    kd = ref.kl_kd(t, g, s)
    assert_close(f"Distiller.ce_loss[{name}]", result["ce_loss"], np.mean(weights * ce))
    assert_close(f"Distiller.kd_loss[{name}]", result["kd_loss"], np.mean(weights * kd))
    assert_close(
        f"Distiller.loss[{name}]", result["loss"], np.mean(weights * (0.3 * ce + 0.7 * kd))
    )
    first = np.mean(np.argmax(t, axis=1) == y)
    assert result["target_first"] == pytest.approx(first, abs=1e-6)


@pytest.mark.parametrize("name", ["kd", "isats"])
def test_training_step_loss_matches_reference(name, teacher, data):
    # The training path (on torch the teacher runs before the student): with a
    # zero learning rate the step's loss is the reference loss of the initial
    # weights; a teacher run in training mode (dropout, batch statistics) would differ.
    x, y = data
    student = mlp(8, seed=2)
    policy = POLICIES[name](teacher, data)
    distiller = Distiller(teacher, student)
    distiller.compile(keras.optimizers.SGD(0.0), policy=policy, alpha=0.3, beta=0.7)
    history = distiller.fit(x, y, batch_size=len(y), epochs=1, verbose=0).history
    f = to_numpy(teacher(x, training=False))
    g = to_numpy(student(x, training=False))
    t, s = reference_target(name, policy, f, y)
    expected = np.mean(0.3 * ref.cross_entropy(g, y) + 0.7 * ref.kl_kd(t, g, s))
    assert_close(f"Distiller.fit_loss[{name}]", history["loss"][0], expected)
    assert history["kd_loss"][0] == pytest.approx(np.mean(ref.kl_kd(t, g, s)), rel=1e-5)


def test_all_zero_sample_weights_give_zero_loss_not_nan(teacher, data):
    x, y = data
    distiller = Distiller(teacher, mlp(8, seed=2))
    distiller.compile("sgd")
    result = distiller.evaluate(
        x, y, sample_weight=np.zeros(len(y)), batch_size=16, verbose=0, return_dict=True
    )
    assert result["loss"] == 0.0 and result["kd_loss"] == 0.0


def test_label_layouts_give_the_same_loss(teacher, data):
    x, y = data
    distiller = Distiller(teacher, mlp(8, seed=2))
    distiller.compile("sgd", policy=ISATS(num_candidates=8))
    losses = [
        distiller.evaluate(x, labels, batch_size=64, verbose=0)
        for labels in (y, y[:, None], np.eye(CLASSES, dtype=np.float32)[y])
    ]
    np.testing.assert_allclose(losses, [losses[0]] * 3, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_fit_lowers_the_loss_and_leaves_the_teacher_untouched(name, teacher, data):
    x, y = data
    before = [np.array(w) for w in teacher.weights]  # includes BN moving statistics
    student = mlp(16, seed=3)
    distiller = Distiller(teacher, student)
    distiller.compile(
        keras.optimizers.SGD(0.1), policy=POLICIES[name](teacher, data), metrics=["accuracy"]
    )
    history = distiller.fit(
        x, y, epochs=2, batch_size=16, validation_data=(x, y), verbose=0
    ).history
    assert history["loss"][1] < history["loss"][0]
    assert history["val_loss"][1] < history["val_loss"][0]
    expected = {"loss", "ce_loss", "kd_loss", "target_first", "accuracy", "val_kd_loss"}
    expected |= set(distiller.policy.metric_names)
    assert expected <= set(history)
    for old, new in zip(before, teacher.weights, strict=True):
        np.testing.assert_array_equal(old, np.array(new))
    assert not teacher.trainable
    assert {id(v) for v in distiller.trainable_variables} == {
        id(v) for v in student.trainable_variables
    }
    np.testing.assert_allclose(
        to_numpy(distiller.predict(x, verbose=0)), to_numpy(student(x)), rtol=1e-5, atol=1e-6
    )


def test_isats_reports_temperature_statistics(teacher, data):
    x, y = data
    distiller = Distiller(teacher, mlp(8, seed=2))
    distiller.compile("sgd", policy=ISATS(num_candidates=16))
    result = distiller.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    f = to_numpy(teacher(x, training=False))
    _, tau2, _, fell, capped = ref.isats_target(f, y, 0.5, 20.0, 16, 2.0, 4.0, True)
    assert result["temperature"] == pytest.approx(tau2.mean(), rel=1e-4)
    assert result["fallback_rate"] == pytest.approx(fell.mean(), abs=1e-6)
    assert result["target_cap_rate"] == pytest.approx(capped.mean(), abs=1e-6)


def test_only_the_student_gets_gradients(teacher, data):
    x, y = data
    student = mlp(8, seed=2)
    distiller = Distiller(teacher, student)
    distiller.compile(keras.optimizers.SGD(0.5), policy=ISATS(num_candidates=8))
    student_before = [np.array(w) for w in student.trainable_weights]
    distiller.fit(x, y, epochs=1, batch_size=64, verbose=0)
    moved = [
        not np.array_equal(a, np.array(b))
        for a, b in zip(student_before, student.weights, strict=True)
    ]
    assert all(moved)
    assert len(distiller.trainable_weights) == len(student.trainable_weights)


def test_tf_data_and_pydataset_inputs(teacher, data):
    tf = pytest.importorskip("tensorflow")
    x, y = data
    distiller = Distiller(teacher, mlp(8, seed=2))
    distiller.compile("sgd", policy=ISATS(num_candidates=8))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    assert len(distiller.fit(ds, epochs=1, verbose=0).history["loss"]) == 1

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return x[i * 16 : (i + 1) * 16], y[i * 16 : (i + 1) * 16]

    assert len(distiller.fit(Batches(), epochs=1, verbose=0).history["loss"]) == 1


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_save_and_load_round_trip(name, teacher, data, tmp_path):
    x, y = data
    distiller = Distiller(teacher, mlp(8, seed=2))
    distiller.compile(
        keras.optimizers.SGD(0.05), policy=POLICIES[name](teacher, data), alpha=0.2, beta=0.8
    )
    distiller.fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = tmp_path / "distiller.keras"
    distiller.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored, Distiller) and restored.compiled
    assert type(restored.policy) is type(distiller.policy)
    assert restored.policy.get_config() == distiller.policy.get_config()
    assert (restored.alpha, restored.beta) == (0.2, 0.8)
    np.testing.assert_array_equal(
        to_numpy(restored.predict(x, verbose=0)), to_numpy(distiller.predict(x, verbose=0))
    )
    if name == "fgcr":
        np.testing.assert_array_equal(
            to_numpy(restored.policy.relations), to_numpy(distiller.policy.relations)
        )
    np.testing.assert_allclose(
        restored.evaluate(x, y, batch_size=64, verbose=0),
        distiller.evaluate(x, y, batch_size=64, verbose=0),
        rtol=1e-5,
    )
    restored.fit(x, y, epochs=1, batch_size=32, verbose=0)  # still trainable as loaded


@pytest.mark.parametrize("policy_name", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_student_with_float32_teacher(policy_name, teacher, data):
    x, y = data
    keras.mixed_precision.set_global_policy(policy_name)
    try:
        student = keras.Sequential(
            [
                keras.Input((FEATURES,)),
                keras.layers.Dense(16, "relu"),
                keras.layers.Dense(CLASSES, dtype="float32"),
            ]
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # a sharp teacher at a small temperature overflows in half precision
    distiller = Distiller(teacher, student)
    distiller.compile(keras.optimizers.SGD(0.01), policy=FixedTemperature(0.05))
    history = distiller.fit(x * 50.0, y, epochs=1, batch_size=16, verbose=0).history
    assert np.isfinite(history["loss"][0]) and np.isfinite(history["kd_loss"][0])
    f = to_numpy(teacher(x * 50.0, training=False))
    assert np.abs(f).max() / 0.05 > 1e3  # the tempered logits would overflow float16 exp


# ----------------------------------------------------------------- bad input
def test_class_count_mismatch_is_refused(teacher):
    other = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(CLASSES + 1)])
    with pytest.raises(ValueError, match="`teacher` gives 5 classes but `student` gives 6"):
        Distiller(teacher, other)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"alpha": -0.1}, "`alpha`"),
        ({"beta": -1.0}, "`beta`"),
        ({"loss": "mse"}, "`loss` is not a Distiller argument"),
        ({"policy": "isats"}, "`policy` must be"),
    ],
)
def test_bad_compile_arguments(kwargs, match, teacher):
    distiller = Distiller(teacher, mlp(8, seed=2))
    with pytest.raises((ValueError, TypeError), match=match):
        distiller.compile("sgd", **kwargs)


def test_out_of_range_numpy_labels_fail_before_training(teacher, data):
    x, y = data
    bad = y.copy()
    bad[3] = CLASSES
    distiller = Distiller(teacher, mlp(8, seed=2))
    distiller.compile("sgd")
    with pytest.raises(ValueError, match=r"labels outside \[0, 5\)"):
        distiller.fit(x, bad, verbose=0)
    with pytest.raises(ValueError, match=r"labels outside \[0, 5\)"):
        distiller.fit(x, -np.abs(y) - 1, verbose=0)


def test_out_of_range_labels_in_a_dataset_stop_fit_and_keep_the_teacher(teacher, data):
    tf = pytest.importorskip("tensorflow")
    x, y = data
    bad = y.copy()
    bad[40] = 17
    before = [np.array(w) for w in teacher.weights]
    distiller = Distiller(teacher, mlp(8, seed=2))
    distiller.compile("sgd")
    ds = tf.data.Dataset.from_tensor_slices((x, bad)).batch(16)
    with pytest.raises(ValueError, match=r"labels outside \[0, C\)"):
        distiller.fit(ds, epochs=1, verbose=0)
    for old, new in zip(before, teacher.weights, strict=True):
        np.testing.assert_array_equal(old, np.array(new))
    # the models are still usable after the error (JAX detaches state during fit)
    assert np.all(np.isfinite(to_numpy(teacher(x, training=False))))
    assert np.all(np.isfinite(to_numpy(distiller.student(x))))


def test_nonfinite_teacher_logits_are_detected(data):
    x, y = data
    broken = mlp(8, seed=4)
    bias = broken.layers[-1].bias
    bias.assign(np.array([0.0, np.nan, 0.0, 0.0, 0.0], np.float32))
    student = mlp(8, seed=2)
    distiller = Distiller(broken, student)
    distiller.compile("sgd")
    with pytest.raises(ValueError, match="NaN or inf logits"):
        distiller.fit(x, y, batch_size=16, verbose=0)
    assert all(np.all(np.isfinite(np.array(w))) for w in student.weights)


def test_empty_data_is_refused(teacher):
    distiller = Distiller(teacher, mlp(8, seed=2))
    distiller.compile("sgd")
    with pytest.raises(ValueError, match="empty"):
        distiller.fit(np.zeros((0, FEATURES), np.float32), np.zeros((0,), np.int32), verbose=0)
    tf = pytest.importorskip("tensorflow")
    empty = tf.data.Dataset.from_tensor_slices(
        (np.zeros((0, FEATURES), np.float32), np.zeros((0,), np.int32))
    ).batch(4)
    with pytest.raises(ValueError, match="empty"):
        distiller.fit(empty, verbose=0)


def test_missing_labels_and_unprepared_policy(teacher, data):
    x, _ = data
    distiller = Distiller(teacher, mlp(8, seed=2))
    with pytest.raises(ValueError, match="compile"):
        distiller.fit(x, verbose=0)
    distiller.compile("sgd", policy=FGCR())
    with pytest.raises(ValueError, match="adapt"):
        distiller.fit(x, np.zeros(len(x), np.int32), verbose=0)
    distiller.compile("sgd")
    with pytest.raises(ValueError, match="needs labels"):
        distiller.fit(x, verbose=0)


def test_recompile_with_another_policy(teacher, data):
    x, y = data
    distiller = Distiller(teacher, mlp(8, seed=2))
    distiller.compile("sgd", policy=FixedTemperature())
    distiller.fit(x, y, epochs=1, verbose=0)
    distiller.compile("sgd", policy=ISATS(num_candidates=8))
    history = distiller.fit(x, y, epochs=1, verbose=0).history
    assert "temperature" in history
    assert len(distiller.trainable_weights) == len(distiller.student.trainable_weights)
