"""KerasHub task models (tiny, random weights, built from configs) as teacher and student.

No presets and no network: every model is built here. Skipped only when keras-hub is
not installed (the `hub` extra; CI installs it).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")
tf = pytest.importorskip("tensorflow")

from keras_kdcap import Distiller, hub  # noqa: E402
from keras_kdcap.models import get_model  # noqa: E402
from keras_kdcap.policies import FixedTemperature  # noqa: E402

NUM_CLASSES = 4
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(20)]


def image_teacher() -> keras.Model:
    """A tiny ResNet image classifier whose converter rescales 0-255 images to [0, 1]."""
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64],
        stackwise_num_blocks=[1],
        stackwise_num_strides=[1],
        block_type="basic_block",
        use_pre_activation=False,
        image_shape=(32, 32, 3),
    )
    converter = keras_hub.layers.ResNetImageConverter(image_size=(32, 32), scale=1 / 255.0)
    preprocessor = keras_hub.models.ResNetImageClassifierPreprocessor(image_converter=converter)
    return keras_hub.models.ResNetImageClassifier(
        backbone=backbone, num_classes=NUM_CLASSES, preprocessor=preprocessor
    )


def text_classifier(hidden_dim: int) -> keras.Model:
    """A tiny BERT text classifier (logits) with its own tokenizer and preprocessor."""
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=VOCAB)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer=tokenizer, sequence_length=8
    )
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(VOCAB),
        num_layers=1,
        num_heads=2,
        hidden_dim=hidden_dim,
        intermediate_dim=2 * hidden_dim,
        max_sequence_length=8,
    )
    return keras_hub.models.BertTextClassifier(
        backbone=backbone, num_classes=NUM_CLASSES, preprocessor=preprocessor
    )


def raw_images(n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32, 3)).astype("float32")
    return images, (np.arange(n) % NUM_CLASSES).astype("int32")


def texts(n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    words = [" ".join(f"w{i}" for i in rng.integers(0, 20, 1 + k % 5)) for k in range(n)]
    return np.asarray(words), (np.arange(n) % NUM_CLASSES).astype("int32")


def compiled(teacher: keras.Model, student: keras.Model) -> Distiller:
    distiller = Distiller(teacher, student)
    # jit_compile=False: two steps per test, not worth a compilation of these models
    distiller.compile(keras.optimizers.SGD(0.01), policy=FixedTemperature(4.0), jit_compile=False)
    return distiller


def weights(model: keras.Model) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(w)) for w in model.weights]


def test_image_teacher_with_raw_images_is_refused_with_the_fix():
    teacher, student = image_teacher(), get_model("resnet8", NUM_CLASSES)
    x, y = raw_images()
    distiller = compiled(teacher, student)
    with pytest.raises(ValueError, match=r"keras_kdcap\.hub\.preprocessed\(x, teacher\)") as err:
        distiller.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert "ResNetImageClassifierPreprocessor" in str(err.value)
    with pytest.raises(ValueError, match="preprocessor"):
        distiller.evaluate(x, y, verbose=0)


def test_image_teacher_preprocessed_pipeline_matches_predict_and_distils():
    teacher, student = image_teacher(), get_model("resnet8", NUM_CLASSES)
    x, y = raw_images()
    train = hub.preprocessed((x, y), teacher, batch_size=4)
    converted, labels = next(iter(train))
    np.testing.assert_array_equal(labels.numpy(), y[:4])
    # what the Distiller feeds the teacher now gives what `teacher.predict(raw)` gives
    via_pipeline = keras.ops.convert_to_numpy(teacher(converted.numpy(), training=False))
    np.testing.assert_allclose(
        via_pipeline, teacher.predict(x[:4], verbose=0), rtol=1e-4, atol=1e-4
    )
    # and differs from calling the teacher on the raw images (the silent failure)
    raw_call = keras.ops.convert_to_numpy(teacher(x[:4], training=False))
    assert np.abs(raw_call - via_pipeline).max() > 1e-3
    before = weights(teacher)
    distiller = compiled(teacher, student)
    history = distiller.fit(train, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    for old, new in zip(before, weights(teacher), strict=True):
        np.testing.assert_array_equal(old, new)


def test_detached_preprocessor_is_accepted():
    teacher, student = image_teacher(), get_model("resnet8", NUM_CLASSES)
    x, y = raw_images()
    teacher.preprocessor = None  # KerasHub's way of saying: the inputs are preprocessed
    distiller = compiled(teacher, student)
    history = distiller.fit(x / 255.0, y, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


def test_preprocessed_without_a_preprocessor_is_an_error():
    x, y = raw_images()
    with pytest.raises(ValueError, match="has no `preprocessor`"):
        hub.preprocessed((x, y), get_model("resnet8", NUM_CLASSES))


def test_text_pair_with_raw_strings_is_refused():
    teacher, student = text_classifier(16), text_classifier(8)
    x, y = texts()
    distiller = compiled(teacher, student)
    with pytest.raises(ValueError, match=r"The teacher \(BertTextClassifier"):
        distiller.fit(x, y, epochs=1, batch_size=4, verbose=0)
    # the teacher's preprocessor alone does not cover the student's
    train = hub.preprocessed((x, y), teacher, batch_size=4)
    with pytest.raises(ValueError, match=r"(?s)not the student's \(BertTextClassifier.*also_for"):
        distiller.fit(train, epochs=1, verbose=0)


def test_text_pair_distils_on_dict_inputs():
    teacher, student = text_classifier(16), text_classifier(8)
    x, y = texts()
    train = hub.preprocessed((x, y), teacher, also_for=[student], batch_size=4)
    inputs, _ = next(iter(train))
    assert set(inputs) == {"token_ids", "padding_mask", "segment_ids"}
    via_pipeline = keras.ops.convert_to_numpy(
        teacher({k: v.numpy() for k, v in inputs.items()}, training=False)
    )
    np.testing.assert_allclose(
        via_pipeline, teacher.predict(x[:4], verbose=0), rtol=1e-4, atol=1e-4
    )
    before = weights(teacher)
    distiller = compiled(teacher, student)
    history = distiller.fit(train, epochs=1, verbose=0, validation_data=train)
    assert np.isfinite(history.history["loss"][-1])
    for old, new in zip(before, weights(teacher), strict=True):
        np.testing.assert_array_equal(old, new)


def test_unpreprocessed_validation_data_is_refused():
    teacher, student = text_classifier(16), text_classifier(8)
    x, y = texts()
    train = hub.preprocessed((x, y), teacher, also_for=[student], batch_size=4)
    distiller = compiled(teacher, student)
    with pytest.raises(ValueError, match=r"preprocessed\(validation_data, teacher\)"):
        distiller.fit(train, epochs=1, verbose=0, validation_data=(x, y))


@pytest.mark.parametrize("library", ["keras", "keras_cv"])
def test_augmentation_layers_in_the_pipeline(library):
    """An augmentation, then MixUp, from Keras core or keras-cv: one soft batch for both models."""
    from keras_kdcap.data import mix_batches

    layers = pytest.importorskip("keras_cv").layers if library == "keras_cv" else keras.layers
    teacher, student = image_teacher(), get_model("resnet8", NUM_CLASSES)
    x, y = raw_images()
    if library == "keras":
        augment = layers.RandAugment(value_range=(0, 255), seed=1)
    else:  # keras-cv's RandAugment takes over a minute to trace on a CPU
        augment = layers.RandomFlip("horizontal", seed=1)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    ds = ds.map(lambda images, labels: (augment(images), labels))
    ds = mix_batches(ds, "mixup", NUM_CLASSES, layer=layers.MixUp(seed=2))
    train = hub.preprocessed(ds, teacher)
    images, labels = next(iter(train))
    assert images.shape == (4, 32, 32, 3)
    assert labels.shape == (4, NUM_CLASSES)
    np.testing.assert_allclose(labels.numpy().sum(axis=1), 1.0, rtol=1e-5)
    assert float(images.numpy().max()) <= 1.0 + 1e-5  # rescaled by the teacher's converter
    distiller = compiled(teacher, student)
    history = distiller.fit(train, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
