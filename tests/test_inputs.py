"""Any model, any data: output checks, soft labels, unlabelled data, adapt inputs."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
import reference as ref
from helpers import assert_close, to_numpy

from keras_kdcap import ATS, FGCR, ISATS, Distiller, FixedTemperature

CLASSES = 5
FEATURES = 8


def mlp(hidden: int, seed: int, activation=None, name=None) -> keras.Model:
    init = keras.initializers.GlorotUniform(seed=seed)
    return keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(hidden, "relu", kernel_initializer=init),
            keras.layers.Dense(CLASSES, activation=activation, kernel_initializer=init),
        ],
        name=name,
    )


@pytest.fixture
def data(rng):
    x = rng.normal(size=(48, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, 48).astype(np.int32)
    return x, y


def soft_labels(rng, y, mixed: int = 8) -> np.ndarray:
    """MixUp-like rows for all but the first `mixed` samples, which stay one-hot."""
    one_hot = np.eye(CLASSES, dtype=np.float32)[y]
    lam = rng.uniform(0.55, 0.95, (len(y), 1)).astype(np.float32)
    other = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, len(y))]
    rows = lam * one_hot + (1.0 - lam) * other
    rows[:mixed] = one_hot[:mixed]
    return rows


def distiller_for(teacher=None, student=None, **kwargs) -> Distiller:
    teacher = mlp(16, seed=1, name="the_teacher") if teacher is None else teacher
    student = mlp(8, seed=2, name="the_student") if student is None else student
    return Distiller(teacher, student, **kwargs)


# ---------------------------------------------------- 1. outputs, first batch
def softmax_teacher(kind: str) -> keras.Model:
    if kind == "activation":
        return mlp(16, seed=1, activation="softmax", name="soft_teacher")
    logits = mlp(16, seed=1)
    return keras.Sequential([logits, keras.layers.Softmax()], name="soft_teacher")


@pytest.mark.parametrize("kind", ["activation", "layer"])
def test_softmax_teacher_is_refused_naming_it_and_the_fix(kind, data):
    x, y = data
    distiller = distiller_for(teacher=softmax_teacher(kind))
    distiller.compile("sgd")
    message = r"`teacher` \(model 'soft_teacher'\) outputs probabilities.*activation=None"
    with pytest.raises(ValueError, match=message):
        distiller.fit(x, y, verbose=0)
    with pytest.raises(ValueError, match='teacher_outputs="probabilities"'):
        distiller.evaluate(x, y, verbose=0)


def test_softmax_student_is_refused(data):
    x, y = data
    student = mlp(8, seed=2, activation="softmax", name="soft_student")
    distiller = distiller_for(student=student)
    distiller.compile("sgd")
    with pytest.raises(ValueError, match=r"`student` \(model 'soft_student'\) outputs probab"):
        distiller.fit(x, y, verbose=0)


@pytest.mark.parametrize("name", ["kd", "ats"])
def test_declared_probabilities_are_converted_exactly(name, data):
    # log p = f - logsumexp(f): the logits up to a constant per row
    x, y = data
    logits_teacher = mlp(16, seed=1)
    teacher = keras.Sequential([logits_teacher, keras.layers.Softmax()])
    student = mlp(8, seed=2)
    distiller = Distiller(teacher, student, teacher_outputs="probabilities")
    policy = FixedTemperature(3.0) if name == "kd" else ATS(4.0, 2.0)
    distiller.compile("sgd", policy=policy, alpha=0.3, beta=0.7)
    result = distiller.evaluate(x, y, batch_size=len(y), verbose=0, return_dict=True)
    f = ref.log_softmax(to_numpy(logits_teacher(x)))
    g = to_numpy(student(x))
    if name == "kd":
        t, s = ref.tempered_softmax(f, 3.0), 3.0
    else:
        t, s = ref.ats(f, y, 4.0, 2.0), 1.0
    assert_close(f"probabilities.kd_loss[{name}]", result["kd_loss"], np.mean(ref.kl_kd(t, g, s)))
    assert result["nonfinite_teacher"] == 0


def test_declared_probabilities_that_are_logits_are_refused(data):
    x, y = data
    distiller = distiller_for(teacher_outputs="probabilities")
    distiller.compile("sgd")
    with pytest.raises(ValueError, match=r"declared with `teacher_outputs=\"probabilities\"`"):
        distiller.fit(x, y, verbose=0)
    with pytest.raises(ValueError, match="`teacher_outputs` must be one of"):
        distiller_for(teacher_outputs="softmax")


def sharp_softmax_teacher() -> keras.Model:
    """A softmax teacher whose probabilities underflow to exactly 0 for large inputs."""
    teacher = mlp(16, seed=1, activation="softmax", name="sharp")
    kernel = teacher.layers[-1].kernel
    kernel.assign(to_numpy(kernel) * 200.0)
    return teacher


def test_declared_probabilities_with_exact_zeros_are_refused(data):
    x, y = data
    teacher = sharp_softmax_teacher()
    assert np.any(to_numpy(teacher(x * 100.0)) == 0.0)
    distiller = distiller_for(teacher=teacher, teacher_outputs="probabilities")
    distiller.compile("sgd")
    with pytest.raises(ValueError, match="probability of exactly 0"):
        distiller.fit(x * 100.0, y, verbose=0)


def test_exact_zeros_in_a_later_batch_stop_fit(data):
    x, y = data
    teacher = sharp_softmax_teacher()
    small = x * 1e-3  # a flat first batch: no zero
    assert not np.any(to_numpy(teacher(small[:16])) == 0.0)
    inputs = np.concatenate([small[:16], x[16:] * 100.0])
    distiller = distiller_for(teacher=teacher, teacher_outputs="probabilities")
    distiller.compile("sgd")
    with pytest.raises(ValueError, match=r"probability of exactly 0 \(or NaN/inf\)"):
        distiller.fit(inputs, y, batch_size=16, shuffle=False, verbose=0)


def backbone(name: str = "backbone") -> keras.Model:
    inputs = keras.Input((6, 6, 3))
    return keras.Model(inputs, keras.layers.Conv2D(16, 3)(inputs), name=name)


def conv_student(classes: int) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(classes),
        ],
        name="student",
    )


@pytest.mark.parametrize("classes", [CLASSES, 16])
def test_backbone_teacher_is_refused_with_its_output_shape(classes):
    # today: "`teacher` gives 16 classes" (the 16 are channels) or a broadcasting error
    message = (
        r"`teacher` \(model 'backbone'\) outputs a tensor of shape \(None, 4, 4, 16\): "
        r"the Distiller needs one \[batch, classes\] tensor of logits"
    )
    with pytest.raises(ValueError, match=message):
        Distiller(backbone(), conv_student(classes))


def test_dict_and_tuple_outputs_are_refused():
    inputs = keras.Input((FEATURES,))
    hidden = keras.layers.Dense(CLASSES)(inputs)
    as_dict = keras.Model(inputs, {"logits": hidden, "features": inputs}, name="dict_out")
    with pytest.raises(ValueError, match=r"`teacher` \(model 'dict_out'\) outputs a dict"):
        Distiller(as_dict, mlp(8, seed=2))
    as_tuple = keras.Model(inputs, (hidden, hidden), name="tuple_out")
    with pytest.raises(ValueError, match=r"`student` \(model 'tuple_out'\) outputs a tuple of 2"):
        Distiller(mlp(8, seed=2), as_tuple)


class FeatureMap(keras.Model):
    """A subclassed backbone: its output shape is known only once called."""

    def __init__(self, as_dict: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(16, 3)
        self.as_dict = as_dict

    def call(self, x, training=False):
        features = self.conv(x)
        if self.as_dict:
            return {"features": features, "pooled": keras.ops.mean(features, (1, 2))}
        return features


@pytest.mark.parametrize("as_dict", [False, True])
def test_subclassed_backbone_is_refused_at_the_first_batch(as_dict, rng):
    x = rng.normal(size=(8, 6, 6, 3)).astype(np.float32)
    y = rng.integers(0, 16, 8).astype(np.int32)
    distiller = Distiller(FeatureMap(as_dict, name="sub_backbone"), conv_student(16))
    distiller.compile("sgd")
    shape = "a tensor of shape (8, 4, 4, 16)"
    if as_dict:
        shape = "a dict {'features': " + shape
    with pytest.raises(ValueError, match=r"model 'sub_backbone'\) outputs " + re.escape(shape)):
        distiller.fit(x, y, verbose=0)


def test_teacher_outputs_round_trip_through_the_config():
    teacher = keras.Sequential([mlp(16, seed=1), keras.layers.Softmax()])
    distiller = Distiller(teacher, mlp(8, seed=2), teacher_outputs="probabilities")
    restored = Distiller.from_config(distiller.get_config())
    assert restored.teacher_outputs == "probabilities"


# --------------------------------------------------------- 3. soft labels
@pytest.mark.parametrize("labels_first", [False, True])
def test_soft_labels_are_soft_targets_of_the_cross_entropy(labels_first, data, rng):
    x, y = data
    rows = soft_labels(rng, y)
    distiller = distiller_for()
    distiller.compile("sgd", policy=ATS(4.0, 2.0), alpha=0.3, beta=0.7)
    weights = rng.uniform(0.0, 2.0, len(y)).astype(np.float32)
    if labels_first:  # [B], [B, 1], then [B, C]: TensorFlow retraces with an unknown rank
        for labels in (y, y[:, None]):
            distiller.evaluate(x, labels, sample_weight=weights, batch_size=len(y), verbose=0)
    result = distiller.evaluate(
        x, rows, sample_weight=weights, batch_size=len(y), verbose=0, return_dict=True
    )
    f = to_numpy(distiller.teacher(x))
    g = to_numpy(distiller.student(x))
    ce = ref.soft_cross_entropy(g, rows)
    target = ref.soft_label_class(rows)  # ATS's target class: the arg-max of the row
    kd = ref.kl_kd(ref.ats(f, target, 4.0, 2.0), g, 1.0)
    assert_close("soft_labels.ce_loss", result["ce_loss"], np.mean(weights * ce))
    assert_close("soft_labels.kd_loss", result["kd_loss"], np.mean(weights * kd))
    assert_close("soft_labels.loss", result["loss"], np.mean(weights * (0.3 * ce + 0.7 * kd)))
    # the argmax of the rows would give another cross-entropy (today's silent behaviour)
    assert not np.isclose(result["ce_loss"], np.mean(weights * ref.cross_entropy(g, target)))


def test_soft_labels_in_training_and_a_dataset(data, rng):
    tf = pytest.importorskip("tensorflow")
    x, y = data
    rows = soft_labels(rng, y, mixed=0)
    distiller = distiller_for()
    distiller.compile(keras.optimizers.SGD(0.0), policy=ISATS(num_candidates=8), alpha=1.0)
    ds = tf.data.Dataset.from_tensor_slices((x, rows)).batch(len(y))
    history = distiller.fit(ds, epochs=1, verbose=0).history
    g = to_numpy(distiller.student(x))
    expected = np.mean(ref.soft_cross_entropy(g, rows))
    assert_close("soft_labels.fit_ce_loss", history["ce_loss"][0], expected)


def test_one_hot_labels_keep_the_sparse_numbers(data):
    x, y = data
    distiller = distiller_for()
    distiller.compile("sgd", policy=ISATS(num_candidates=8), alpha=0.3, beta=0.7)
    sparse = distiller.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    one_hot = np.eye(CLASSES, dtype=np.float32)[y]
    dense = distiller.evaluate(x, one_hot, batch_size=16, verbose=0, return_dict=True)
    for key in ("ce_loss", "kd_loss", "target_first"):
        assert dense[key] == sparse[key], key  # bit for bit
    # the total within float32 rounding: XLA fuses `alpha * ce + beta * kd` per graph
    assert dense["loss"] == pytest.approx(sparse["loss"], rel=3e-7)


def test_label_rows_that_are_not_distributions_are_refused(data, rng):
    x, y = data
    rows = soft_labels(rng, y)
    rows[5] *= 2.0
    distiller = distiller_for()
    distiller.compile("sgd")
    with pytest.raises(ValueError, match=r"label rows that are not probability vectors"):
        distiller.fit(x, rows, verbose=0)
    tf = pytest.importorskip("tensorflow")
    ds = tf.data.Dataset.from_tensor_slices((x, rows)).batch(16)
    with pytest.raises(ValueError, match=r"1 sample\(s\) have invalid labels"):
        distiller.fit(ds, verbose=0)


# ------------------------------------------------------ 4. unlabelled data
def test_unlabelled_inputs_train_with_alpha_zero(data):
    x, _ = data
    distiller = distiller_for()
    distiller.compile(keras.optimizers.SGD(0.0), policy=ISATS(num_candidates=8), alpha=0.0)
    history = distiller.fit(x, batch_size=len(x), epochs=1, verbose=0).history
    assert history["pseudo_labels"] == [1.0]
    f = to_numpy(distiller.teacher(x))
    g = to_numpy(distiller.student(x))
    stand_in = ref.teacher_stand_in_labels(f)
    t, s, *_ = ref.isats_target(f, stand_in, 0.5, 20.0, 8, 2.0, 4.0, True)
    assert_close("pseudo_labels.kd_loss", history["kd_loss"][0], np.mean(ref.kl_kd(t, g, s)))
    assert_close("pseudo_labels.loss", history["loss"][0], 0.9 * np.mean(ref.kl_kd(t, g, s)))
    assert_close(
        "pseudo_labels.ce_loss", history["ce_loss"][0], np.mean(ref.cross_entropy(g, stand_in))
    )
    labelled = distiller.evaluate(x, stand_in, verbose=0, return_dict=True)
    assert labelled["pseudo_labels"] == 0.0


def test_unlabelled_datasets_and_generators(data):
    tf = pytest.importorskip("tensorflow")
    x, _ = data
    distiller = distiller_for()
    distiller.compile("sgd", policy=FixedTemperature(4.0), alpha=0.0)
    ds = tf.data.Dataset.from_tensor_slices(x).batch(16)
    assert distiller.fit(ds, epochs=1, verbose=0).history["pseudo_labels"] == [1.0]

    seen = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(batch)

    batches = ((x[i : i + 16],) for i in range(0, 48, 16))
    distiller.fit(batches, steps_per_epoch=3, epochs=1, verbose=0, callbacks=[Count()])
    assert seen == [0, 1, 2]  # the batch read for the checks is not lost


@pytest.mark.parametrize("source", ["arrays", "dataset"])
def test_missing_labels_with_alpha_raise_our_error_before_keras(source, data):
    x, _ = data
    distiller = distiller_for()
    distiller.compile("sgd", alpha=0.1, metrics=["accuracy"])
    if source == "dataset":
        tf = pytest.importorskip("tensorflow")
        x = tf.data.Dataset.from_tensor_slices(x).batch(16)
    message = r"has no labels, and the Distiller needs labels when alpha > 0 \(got alpha=0.1\)"
    with pytest.raises(ValueError, match=message):
        distiller.fit(x, verbose=0)
    with pytest.raises(ValueError, match=message):
        distiller.evaluate(x, verbose=0)
    assert not distiller.optimizer.built  # raised before Keras's own set-up


def test_unlabelled_validation_data_with_alpha_is_refused(data):
    x, y = data
    distiller = distiller_for()
    distiller.compile("sgd", alpha=0.1)
    with pytest.raises(ValueError, match="`validation_data` has no labels"):
        distiller.fit(x, y, validation_data=(x,), verbose=0)


def test_compiled_metrics_skip_unlabelled_batches(data):
    x, y = data
    distiller = distiller_for()
    distiller.compile("sgd", alpha=0.0, metrics=["accuracy"])
    with pytest.warns(UserWarning, match="compiled `metrics=`"):
        history = distiller.fit(
            x, validation_data=(x, y), batch_size=16, epochs=2, verbose=0
        ).history
    assert "accuracy" not in history and "pseudo_labels" in history
    expected = np.mean(np.argmax(to_numpy(distiller.student(x)), axis=1) == y)
    assert history["val_accuracy"][-1] == pytest.approx(expected, abs=1e-6)
    assert history["val_pseudo_labels"] == [0.0, 0.0]


# ------------------------------------------------ 5. adapt takes what fit takes
def test_fgcr_adapt_accepts_what_fit_accepts(data):
    tf = pytest.importorskip("tensorflow")
    x, y = data
    y[:CLASSES] = np.arange(CLASSES)  # every class present
    teacher = mlp(16, seed=1)
    expected = ref.class_mean_relations(to_numpy(teacher(x)), y, 3.0, CLASSES)

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, index):
            return x[16 * index : 16 * (index + 1)], y[16 * index : 16 * (index + 1)]

    sources = {
        "arrays": (x, y),
        "dataset": tf.data.Dataset.from_tensor_slices((x, y)).batch(10),
        "pydataset": Batches(),
        "pairs": [(x[:20], y[:20]), (x[20:], y[20:])],
        "one_hot": (x, np.eye(CLASSES, dtype=np.float32)[y]),
    }
    for name, source in sources.items():
        policy = FGCR(weight=0.4, temperature=3.0)
        policy.adapt(teacher, source, batch_size=7)
        assert_close(f"fgcr.adapt[{name}]", policy.relations, expected, rtol=1e-5)


def test_fgcr_adapt_without_labels_uses_the_teachers_class(data):
    x, _ = data
    # a linear teacher whose top class is the largest of the first C features: all C occur
    teacher = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(CLASSES)])
    teacher.layers[-1].kernel.assign(2.0 * np.eye(FEATURES, CLASSES, dtype=np.float32))
    f = to_numpy(teacher(x))
    stand_in = ref.teacher_stand_in_labels(f)
    assert len(np.unique(stand_in)) == CLASSES
    policy = FGCR(weight=0.4, temperature=3.0)
    policy.adapt(teacher, [x[:24], x[24:]])
    expected = ref.class_mean_relations(f, stand_in, 3.0, CLASSES)
    assert_close("fgcr.adapt[unlabelled]", policy.relations, expected)
