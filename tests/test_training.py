"""Tests of keras_kdcap.training: CRD schedule, coupled weight decay, teacher training."""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_kdcap import training

CIFAR_DIR = Path(
    os.environ.get("KDCAP_CIFAR100_DIR")
    or Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar100"
)


def _schedule_reference(step, base, boundaries, gamma=0.1, warmup=0):
    lr = base * gamma ** np.sum(step >= np.asarray(boundaries))
    return lr * min(1.0, (step + 1) / warmup) if warmup else lr


def _lr(schedule, step):
    return float(keras.ops.convert_to_numpy(schedule(step)))


# --- schedule and defaults ---------------------------------------------------------------


def test_crd_schedule_milestones():
    spe = 7
    schedule = training.crd_schedule(0.05, 240, spe)
    assert training.milestone_epochs(240) == [150, 180, 210]
    boundaries = [150 * spe, 180 * spe, 210 * spe]
    steps = [0, 1, 240 * spe - 1] + [b + d for b in boundaries for d in (-1, 0, 1)]
    for step in steps:
        expected = _schedule_reference(step, 0.05, boundaries)
        np.testing.assert_allclose(_lr(schedule, step), expected, rtol=1e-6)
    # Serialisable: a saved optimizer rebuilds the same schedule.
    restored = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(schedule)
    )
    assert isinstance(restored, training.CRDSchedule)
    assert [_lr(restored, s) for s in steps] == [_lr(schedule, s) for s in steps]


def test_crd_schedule_warmup_and_short_runs():
    schedule = training.crd_schedule(0.1, 8, 10, warmup_epochs=2)
    boundaries = [e * 10 for e in training.milestone_epochs(8)]
    assert boundaries == [50, 60, 70]
    for step in (0, 5, 19, 20, 49, 50, 65, 79):
        expected = _schedule_reference(step, 0.1, boundaries, warmup=20)
        np.testing.assert_allclose(_lr(schedule, step), expected, rtol=1e-6)
    with pytest.raises(ValueError):
        training.crd_schedule(0.1, 0, 10)


def test_default_lr():
    assert training.default_lr("resnet32x4") == 0.05
    assert training.default_lr("wrn_40_2") == 0.05
    for name in ("mobilenetv2", "MobileNetV2", "shufflenetv1", "shufflenetv2", "ShuffleV2"):
        assert training.default_lr(name) == 0.01


# --- weight decay ------------------------------------------------------------------------


def _tiny_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(8, 3, strides=2),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(100),
        ],
        name="tiny",
    )


def _penalty(model):
    return float(sum(keras.ops.convert_to_numpy(loss) for loss in model.losses))


def test_coupled_weight_decay_penalty():
    model = _tiny_model()
    weights = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    expected = 5e-4 / 2 * sum(float(np.sum(w.astype(np.float64) ** 2)) for w in weights)
    assert training.apply_weight_decay(model, 5e-4) == len(weights)  # biases, BN too
    np.testing.assert_allclose(_penalty(model), expected, rtol=1e-5)
    training.apply_weight_decay(model, 5e-4)  # replaces, does not add up
    np.testing.assert_allclose(_penalty(model), expected, rtol=1e-5)
    assert training.apply_weight_decay(model, 1e-3, scope="kernels") == 2
    training.apply_weight_decay(model, 0.0)
    assert model.losses == []


def test_build_teacher_decays_zoo_model():
    models = pytest.importorskip("keras_kdcap.models", reason="model zoo not available")
    model = training.build_teacher("resnet8", num_classes=10, weight_decay=5e-4)
    assert model.output.shape[-1] == 10
    assert all(v.regularizer is not None for v in model.trainable_variables)
    assert models.count_params(model) > 0


# --- teacher training --------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar_256():
    data = pytest.importorskip("keras_kdcap.data", reason="needs TensorFlow for tf.data")
    if not data.has_cifar100_npz(CIFAR_DIR):
        pytest.skip(f"offline CIFAR-100 not found in {CIFAR_DIR}; set KDCAP_CIFAR100_DIR")
    (x_train, y_train), (x_test, y_test) = data.load_cifar100_arrays(CIFAR_DIR)
    return data.cifar100_datasets_from_arrays(
        (x_train[:256], y_train[:256]), (x_test[:128], y_test[:128]), batch_size=64
    )


def test_train_teacher_one_epoch_with_checkpoints(cifar_256, tmp_path):
    train_ds, test_ds = cifar_256
    model, history = training.train_teacher(
        _tiny_model(),
        train_ds,
        1,
        val_ds=test_ds,
        checkpoint_dir=tmp_path,
        checkpoint_epochs=(1,),
        verbose=0,
    )
    assert history["epoch"] == [0]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"} <= set(history)
    assert np.isfinite(history["loss"][0]) and 0.0 <= history["accuracy"][0] <= 1.0
    assert history["learning_rate"] == pytest.approx([0.05])
    assert (tmp_path / "teacher_epoch001.keras").is_file()
    assert (tmp_path / "teacher.keras").is_file()
    assert not (tmp_path / "backup").exists()  # removed after a completed run
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.SGD) and not optimizer.nesterov
    assert optimizer.momentum == pytest.approx(0.9) and int(optimizer.iterations) == 4
    assert isinstance(model.loss, keras.losses.SparseCategoricalCrossentropy)
    reloaded = keras.saving.load_model(tmp_path / "teacher.keras")
    images = next(iter(test_ds))[0]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reloaded(images)),
        keras.ops.convert_to_numpy(model(images)),
        atol=1e-5,
    )


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated preemption")


def test_resume_continues_at_the_right_epoch(cifar_256, tmp_path):
    from keras_kdcap.data import get_epoch_counter

    train_ds, _ = cifar_256
    kwargs = dict(checkpoint_dir=tmp_path, checkpoint_epochs=(1, 2), verbose=0)
    with pytest.raises(KeyboardInterrupt):
        training.train_teacher(_tiny_model(), train_ds, 2, callbacks=[_Interrupt()], **kwargs)
    assert (tmp_path / "teacher_epoch001.keras").is_file()
    assert not (tmp_path / "teacher.keras").exists()

    started = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            started.append((epoch, int(self.model.optimizer.iterations)))

        def on_epoch_end(self, epoch, logs=None):
            started.append(int(get_epoch_counter(train_ds).numpy()))

    model, history = training.train_teacher(
        _tiny_model(seed=1), train_ds, 2, callbacks=[Record()], **kwargs
    )
    # Only epoch 1 ran, from the restored optimizer step, on the data of epoch 1.
    assert started == [(1, 4), 2]
    assert int(model.optimizer.iterations) == 8
    assert history["epoch"] == [0, 1]  # history.csv covers the interrupted run
    assert (tmp_path / "teacher_epoch002.keras").is_file()
    assert (tmp_path / "teacher.keras").is_file()


def test_regt_switches_the_loss(cifar_256):
    from keras_kdcap import losses
    from keras_kdcap.training.teacher import _make_loss

    train_ds, _ = cifar_256
    model, history = training.train_teacher(
        _tiny_model(), train_ds, 1, regt={"gamma": 0.5, "temperature": 2.0}, verbose=0
    )
    assert isinstance(model.loss, losses.RegTLoss)
    assert model.loss.gamma == 0.5 and model.loss.temperature == 2.0
    assert np.isfinite(history["loss"][0])
    instance = losses.RegTLoss(gamma=0.2)
    assert _make_loss(instance, None) is instance
    with pytest.raises(TypeError):
        _make_loss(0.1, None)


def test_loss_argument(cifar_256):
    from keras_kdcap import SmoothedCrossEntropy

    train_ds, _ = cifar_256
    smoothed = SmoothedCrossEntropy(0.2)
    model, _ = training.train_teacher(_tiny_model(), train_ds, 1, loss=smoothed, verbose=0)
    assert model.loss is smoothed
    with pytest.raises(ValueError, match="either `regt` or `loss`"):
        training.train_teacher(_tiny_model(), train_ds, 1, regt={}, loss=smoothed, verbose=0)
