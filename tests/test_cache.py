"""TeacherCache: the teacher's logits computed once, and refused where they would be wrong."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import classification_data, mlp, to_numpy

from keras_kdcap import ISATS, Distiller
from keras_kdcap.cache import TeacherCache, data_fingerprint, teacher_fingerprint


@pytest.fixture
def data(rng):  # 40 rows, not conftest's 64: batches of 16 leave a padded last one
    return classification_data(rng, 40)


def test_logits_are_the_teachers_in_inference_mode(teacher, data):
    x, y = data
    cache = TeacherCache(teacher, batch_size=16).build(x, y)  # 40 = 16 + 16 + 8 (padded)
    assert len(cache) == len(x)
    assert cache.logits.dtype == np.float32
    np.testing.assert_allclose(cache.logits, to_numpy(teacher(x, training=False)), atol=1e-5)
    inputs, labels, weights = cache.arrays()
    assert inputs["inputs"] is cache.inputs and inputs["teacher_logits"] is cache.logits
    np.testing.assert_array_equal(labels, y)
    assert weights is None


def test_cached_fit_equals_uncached_fit(teacher, data):
    x, y = data

    def train(cached: bool):
        student = mlp(0, seed=2)
        distiller = Distiller(teacher, student)
        distiller.compile(keras.optimizers.SGD(0.1), policy=ISATS(num_candidates=8))
        if cached:
            inputs, labels, _ = TeacherCache(teacher).build(x, y).arrays()
        else:
            inputs, labels = x, y
        history = distiller.fit(inputs, labels, batch_size=8, epochs=2, shuffle=False, verbose=0)
        return history.history["loss"], [to_numpy(v) for v in student.weights]

    (cached_loss, cached_weights), (loss, weights) = train(True), train(False)
    np.testing.assert_allclose(cached_loss, loss, rtol=1e-5)
    for cached_value, value in zip(cached_weights, weights, strict=True):
        np.testing.assert_allclose(cached_value, value, atol=1e-5)


def test_cached_training_never_runs_the_teacher(teacher, data):
    x, y = data
    cache = TeacherCache(teacher).build(x, y)
    for variable in teacher.weights:  # a teacher run now would give NaN logits, and fit stop
        variable.assign(np.full(variable.shape, np.nan, dtype="float32"))
    distiller = Distiller(teacher, mlp(0, seed=2))
    distiller.compile("sgd", policy=ISATS(num_candidates=8))
    history = distiller.fit(cache.dataset(batch_size=8, seed=0), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert history.history["nonfinite_teacher"][0] == 0


def test_dataset_keeps_each_input_with_its_logits(teacher, data):
    x, y = data
    cache = TeacherCache(teacher).build(x, y, sample_weight=np.arange(len(y), dtype="float32"))
    seen = 0
    for batch_x, batch_y, batch_w in cache.dataset(batch_size=16, seed=3).as_numpy_iterator():
        expected = to_numpy(teacher(batch_x["inputs"], training=False))
        np.testing.assert_allclose(batch_x["teacher_logits"], expected, atol=1e-5)
        np.testing.assert_array_equal(batch_y, y[batch_w.astype(int)])
        seen += len(batch_y)
    assert seen == len(x)


_GENERATOR = tf.random.Generator.from_seed(1)


def _augment(image):
    # A stateful draw, like Keras's random preprocessing layers: it advances
    # from pass to pass. (A plain `tf.random.uniform` under a global seed
    # repeats itself on every pass, so a cache of it would be right.)
    return image + _GENERATOR.uniform(tf.shape(image))


def _seeded_augment(index, image):
    return image + tf.random.stateless_uniform(tf.shape(image), seed=tf.stack([index, 7]))


@pytest.mark.parametrize(
    "make, accepted",
    [
        (lambda d: d.batch(16), True),
        (lambda d: d.shuffle(40, seed=1, reshuffle_each_iteration=False).batch(16), True),
        (lambda d: d.enumerate().map(lambda i, e: (_seeded_augment(i, e[0]), e[1])).batch(8), True),
        (lambda d: d.shuffle(40).batch(16), False),
        (lambda d: d.map(lambda a, b: (_augment(a), b)).batch(16), False),
    ],
    ids=["plain", "shuffled-once", "seeded-augment", "reshuffled", "random-augment"],
)
def test_tf_data_must_repeat_its_batches(teacher, data, make, accepted):
    x, y = data
    dataset = make(tf.data.Dataset.from_tensor_slices((x, y)))
    if not accepted:
        with pytest.raises(ValueError, match="`x` yields a different first batch"):
            TeacherCache(teacher).build(dataset)
        return
    cache = TeacherCache(teacher).build(dataset)
    assert len(cache) == len(x)
    np.testing.assert_allclose(
        cache.logits, to_numpy(teacher(cache.inputs, training=False)), atol=1e-5
    )
    np.testing.assert_array_equal(np.sort(cache.labels), np.sort(y))


def test_file_is_reused_only_for_its_teacher_and_data(teacher, data, tmp_path):
    x, y = data
    path = tmp_path / "sub" / "teacher_logits.npz"
    first = TeacherCache(teacher).build(x, y, path=path)
    assert path.exists() and not first.loaded_from_file
    again = TeacherCache(teacher).build(x, y, path=path)
    assert again.loaded_from_file
    np.testing.assert_array_equal(again.logits, first.logits)

    with pytest.raises(ValueError, match="`path`=.*another teacher"):
        TeacherCache(mlp(16, seed=5)).build(x, y, path=path)
    with pytest.raises(ValueError, match="`path`=.*other inputs"):
        TeacherCache(teacher).build(x[:-1], y[:-1], path=path)
    changed = x.copy()
    changed[0, 0] += 1.0  # index 0 is always in the hashed sample
    with pytest.raises(ValueError, match="`path`=.*other inputs"):
        TeacherCache(teacher).build(changed, y, path=path)

    other = tmp_path / "other.npz"
    np.savez(other, logits=first.logits)
    with pytest.raises(ValueError, match="not a TeacherCache file"):
        TeacherCache(teacher).build(x, y, path=other)


def test_fingerprints_follow_weights_and_data(teacher, data):
    x, _ = data
    before = teacher_fingerprint(teacher)
    assert before == teacher_fingerprint(teacher)
    teacher.weights[0].assign(teacher.weights[0] + 1e-3)
    assert teacher_fingerprint(teacher) != before
    assert data_fingerprint(x) == data_fingerprint(x.copy())
    assert data_fingerprint(x) != data_fingerprint(x[:-1])
    assert data_fingerprint({"a": x}) != data_fingerprint(x + 1.0)


def test_teacher_nan_logits_are_refused(data):
    x, y = data
    teacher = mlp(0, seed=1)
    teacher.weights[0].assign(np.full(teacher.weights[0].shape, np.nan, dtype="float32"))
    with pytest.raises(ValueError, match="NaN or inf logits"):
        TeacherCache(teacher).build(x, y)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda t, x, y: TeacherCache(t, batch_size=0), ValueError, "`batch_size`"),
        (lambda t, x, y: TeacherCache("model"), TypeError, "`teacher`"),
        (lambda t, x, y: TeacherCache(t).build(x, y[:-1]), ValueError, "`y`"),
        (lambda t, x, y: TeacherCache(t).build(iter([x]), None), TypeError, "`x`"),
        (lambda t, x, y: TeacherCache(t).build(x[:0]), ValueError, "`x` is empty"),
        (lambda t, x, y: TeacherCache(t).build(x, sample_weight=y), ValueError, "`y`"),
        (
            lambda t, x, y: TeacherCache(t).build(tf.data.Dataset.from_tensor_slices(x), y),
            ValueError,
            "`y`",
        ),
        (lambda t, x, y: TeacherCache(t).arrays(), ValueError, "build"),
    ],
)
def test_bad_arguments_are_named(teacher, data, call, error, match):
    x, y = data
    with pytest.raises(error, match=match):
        call(teacher, x, y)
