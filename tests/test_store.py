"""TeacherStore: a teacher trained once per key, loaded verified, retrained when damaged."""

from __future__ import annotations

import hashlib
import json
import os

import keras
import numpy as np

from keras_kdcap import files
from keras_kdcap.training import TeacherStore

KEY = {"model": "tiny", "loss": "ce", "epochs": 1, "seed": 0, "weight_decay": 5e-5}


class Trainer:
    """A `train(folder)` callable that builds a tiny model and counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, folder):
        self.calls += 1
        keras.utils.set_random_seed(self.calls)
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(3, name="classifier")(inputs))
        return model, {"loss": [2.0, 1.5], "accuracy": [0.25, 0.5]}


def _weights(model):
    return [np.asarray(w) for w in model.get_weights()]


def test_trains_once_then_loads_the_verified_teacher(tmp_path):
    store, train = TeacherStore(tmp_path / "teachers", relative_to=tmp_path), Trainer()
    model, info = store.get(KEY, train, label="teacher small")
    digest = hashlib.sha1(json.dumps(KEY, sort_keys=True).encode()).hexdigest()[:10]
    folder = tmp_path / "teachers" / f"tiny-{digest}"
    assert store.folder_of(KEY) == folder
    assert info["cached"] is False and info["path"] == os.path.join("teachers", folder.name)
    assert (info["final_loss"], info["final_augmented_train_accuracy"]) == (1.5, 0.5)
    assert files.verify_file(folder / "teacher.keras")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["key"] == KEY and meta["training"]["final_loss"] == 1.5

    again, info = store.get(KEY, train)
    assert train.calls == 1 and info["cached"] is True
    assert info["train_seconds"] == meta["training"]["train_seconds"]
    for a, b in zip(_weights(model), _weights(again), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_damaged_teacher_is_retrained_never_loaded(tmp_path, capsys):
    store, train = TeacherStore(tmp_path), Trainer()
    store.get(KEY, train)
    path = store.folder_of(KEY) / "teacher.keras"
    path.write_bytes(path.read_bytes()[:-100])  # cut short by a kill, say
    _, info = store.get(KEY, train)
    assert train.calls == 2 and info["cached"] is False
    assert "Retraining it." in capsys.readouterr().out
    assert files.verify_file(path)
    (store.folder_of(KEY) / "meta.json").write_text('{"key": ')  # a cut meta.json
    _, info = store.get(KEY, train)
    assert train.calls == 3 and info["cached"] is False


def test_another_key_trains_another_teacher(tmp_path):
    store, train = TeacherStore(tmp_path), Trainer()
    store.get(KEY, train)
    other = {**KEY, "epochs": 2}
    assert store.folder_of(other) != store.folder_of(KEY)
    store.get(other, train)
    assert train.calls == 2
    # a meta.json whose key is not the asked one (another version's) is not trusted
    meta = store.folder_of(KEY) / "meta.json"
    meta.write_text(json.dumps({"key": {**KEY, "seed": 1}, "training": {}}))
    _, info = store.get(KEY, train)
    assert train.calls == 3 and info["cached"] is False
    assert json.loads(meta.read_text())["key"] == KEY


def test_folders_written_by_capacity_mismatch_before_the_store_still_load(tmp_path):
    # benchmarks/capacity_mismatch.py's cache as it was written before TeacherStore:
    # <cache>/teachers/<model>-<loss>-<sha1 of the sorted key>[:10]/{teacher.keras, meta.json}
    model, _ = Trainer()(None)
    digest = hashlib.sha1(json.dumps(KEY, sort_keys=True).encode()).hexdigest()[:10]
    folder = tmp_path / "teachers" / f"tiny-ce-{digest}"
    files.save_model_verified(model, folder / "teacher.keras")
    training = {"train_seconds": 12.5, "final_loss": 1.0, "final_augmented_train_accuracy": 0.5}
    files.atomic_write_json(folder / "meta.json", {"key": KEY, "training": training})
    store = TeacherStore(tmp_path / "teachers", prefix=lambda key: f"{key['model']}-{key['loss']}")
    train = Trainer()
    loaded, info = store.get(KEY, train)
    assert train.calls == 0 and info == {**training, "cached": True, "path": info["path"]}
    assert os.path.realpath(info["path"]) == os.path.realpath(folder)
    for a, b in zip(_weights(model), _weights(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
