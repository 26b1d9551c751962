"""Interrupted training resumed with BackupAndRestore ends where an uninterrupted run ends.

A callback raises at the end of epoch 1 of 3 (a simulated preemption);
`fit` is then run again with the same `keras.callbacks.BackupAndRestore`,
either on a freshly built Distiller (a restarted job) or on the same one (a
notebook). The resumed run must start at epoch 2 with the saved optimizer
state (Adam's moments and step count), BatchNorm statistics and policy
state (FGCR's relations), and end with the weights of the uninterrupted run.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from helpers import to_numpy
from interrupt import PreemptAfterEpoch, PreemptedError
from interrupt import training_state as state

from keras_kdcap import FGCR, ISATS, Distiller

CLASSES = 4
FEATURES = 6
EPOCHS = 3
INTERRUPT_AFTER = 1  # the 0-based epoch at whose end the run is stopped


@pytest.fixture
def data(rng):
    x = rng.normal(size=(32, FEATURES)).astype(np.float32)
    y = np.argmax(x[:, :CLASSES] + 0.5 * rng.normal(size=(32, CLASSES)), axis=-1)
    return x, y.astype(np.int32)


def build(name: str, data, relations=None) -> Distiller:
    """The same Distiller every time: fixed initial weights, a fresh optimizer."""
    x, y = data
    init = keras.initializers.GlorotUniform(seed=3)
    teacher = keras.Sequential(
        [keras.Input((FEATURES,)), keras.layers.Dense(CLASSES, kernel_initializer=init)]
    )
    student = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(8, kernel_initializer=keras.initializers.GlorotUniform(seed=4)),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dense(CLASSES, kernel_initializer=keras.initializers.GlorotUniform(5)),
        ]
    )
    if name == "fgcr":
        policy = FGCR(weight=0.5, temperature=2.0)
        if relations is None:
            policy.adapt(teacher, [(x, y)])
        else:
            policy.set_relations(relations)
    else:
        policy = ISATS(num_candidates=8)
    distiller = Distiller(teacher, student)
    distiller.compile(keras.optimizers.Adam(0.01), policy=policy)
    distiller.build((None, FEATURES))  # BackupAndRestore needs a built model
    return distiller


def fit(distiller: Distiller, data, callbacks) -> keras.callbacks.History:
    x, y = data
    return distiller.fit(
        x, y, batch_size=8, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=callbacks
    )


@pytest.mark.parametrize(
    "name, restart",
    [("isats", "fresh"), ("isats", "same"), ("fgcr", "fresh")],
)
def test_resumed_fit_matches_uninterrupted_fit(name, restart, data, tmp_path):
    reference = build(name, data)
    fit(reference, data, [])
    expected = state(reference)

    backup = str(tmp_path / "backup")
    interrupted = build(name, data)
    with pytest.raises(PreemptedError):
        fit(interrupted, data, [keras.callbacks.BackupAndRestore(backup), PreemptAfterEpoch(1)])

    if restart == "fresh":
        # A restarted job; FGCR is given other relations, which the backup must replace.
        uniform = np.full((CLASSES, CLASSES), 1.0 / CLASSES)
        resumed = build(name, data, relations=uniform if name == "fgcr" else None)
    else:
        resumed = interrupted
    history = fit(resumed, data, [keras.callbacks.BackupAndRestore(backup)])

    assert history.epoch == [INTERRUPT_AFTER + 1], history.epoch
    assert to_numpy(resumed.optimizer.iterations) == to_numpy(reference.optimizer.iterations)
    actual = state(resumed)
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_allclose(actual[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    # The teacher is untouched by the interruption.
    for mine, theirs in zip(resumed.teacher.weights, reference.teacher.weights, strict=True):
        np.testing.assert_array_equal(to_numpy(mine), to_numpy(theirs))


def test_fgcr_relations_travel_in_the_weights_file(data, tmp_path):
    distiller = build("fgcr", data)
    path = str(tmp_path / "distiller.weights.h5")
    distiller.save_weights(path)
    uniform = np.full((CLASSES, CLASSES), 1.0 / CLASSES)
    fresh = build("fgcr", data, relations=uniform)
    fresh.load_weights(path)
    np.testing.assert_allclose(
        to_numpy(fresh.policy.relations), to_numpy(distiller.policy.relations), rtol=1e-6
    )
