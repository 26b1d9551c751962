"""Preemption: runs resumed after a kill end where uninterrupted runs end (issue 17).

- A Distiller of built models takes `keras.callbacks.BackupAndRestore` as it is.
- Policy state restored by a backup (FGCR's relations, CTKD's temperature and
  epoch) counts as ready.
- Files (teachers, checkpoints, caches, backups) are written atomically and
  verified on load: a truncated or corrupted file is refused, naming it.
- The example script, killed with SIGKILL mid-epoch and started again, writes
  the metrics of an uninterrupted run.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
from helpers import to_numpy

from keras_kdcap import CTKD, FGCR, ISATS, CorruptFileError, Distiller, files
from keras_kdcap.training.backup import STATE_NAME, VerifiedBackupAndRestore, weights_name

CLASSES = 3
FEATURES = 5
EPOCHS = 3


class PreemptedError(RuntimeError):
    """The simulated interruption."""


class PreemptAfterEpoch(keras.callbacks.Callback):
    """Raises `PreemptedError` at the end of `epoch`, after the callbacks before it."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise PreemptedError(f"simulated preemption after epoch {epoch}")


@pytest.fixture
def data(rng):
    x = rng.normal(size=(24, FEATURES)).astype(np.float32)
    y = np.argmax(x[:, :CLASSES] + 0.5 * rng.normal(size=(24, CLASSES)), axis=-1)
    return x, y.astype(np.int32)


def _models(built: bool = True) -> tuple[keras.Model, keras.Model]:
    """The same teacher and student every time; `built=False` leaves the student unbuilt."""
    teacher = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(CLASSES, kernel_initializer=keras.initializers.GlorotUniform(3)),
        ]
    )
    layers = [
        keras.layers.Dense(6, kernel_initializer=keras.initializers.GlorotUniform(4)),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.Dense(CLASSES, kernel_initializer=keras.initializers.GlorotUniform(5)),
    ]
    student = keras.Sequential(([keras.Input((FEATURES,))] if built else []) + layers)
    return teacher, student


def _policy(name: str, data=None):
    """The policy; FGCR is adapted when `data` is given, else left for the backup to fill."""
    if name == "fgcr":
        policy = FGCR(weight=0.5, temperature=2.0, num_classes=CLASSES)
        if data is not None:
            policy.adapt(_models()[0], [data])
        return policy
    if name == "ctkd":
        return CTKD(initial_temperature=4.0, curriculum_epochs=2)
    return ISATS(num_candidates=8)


def _distiller(name: str, data=None, built: bool = True) -> Distiller:
    """A Distiller that is never built by hand (no `build`, no call on a batch)."""
    teacher, student = _models(built)
    distiller = Distiller(teacher, student)
    distiller.compile(keras.optimizers.Adam(0.01), policy=_policy(name, data))
    return distiller


def _fit(distiller: Distiller, data, callbacks) -> keras.callbacks.History:
    x, y = data
    return distiller.fit(
        x,
        y,
        batch_size=8,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )


def _state(distiller: Distiller) -> dict[str, np.ndarray]:
    groups = {
        "student": distiller.student.weights,
        "optimizer": distiller.optimizer.variables,
        "policy": distiller.policy.weights,
    }
    return {
        f"{group}/{i}": to_numpy(v)
        for group, variables in groups.items()
        for i, v in enumerate(variables)
    }


def _assert_same_state(actual: Distiller, expected: Distiller) -> None:
    got, want = _state(actual), _state(expected)
    assert got.keys() == want.keys()
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


BACKUPS = {"keras": keras.callbacks.BackupAndRestore, "verified": VerifiedBackupAndRestore}


# ----------------------------------------------------- items 1 and 2: the Distiller
@pytest.mark.parametrize("backup_kind", list(BACKUPS))
@pytest.mark.parametrize("name", ["isats", "fgcr", "ctkd"])
def test_restarted_job_resumes_with_no_build_and_no_adapt(name, backup_kind, data, tmp_path):
    reference = _distiller(name, data)
    _fit(reference, data, [])

    make_backup = BACKUPS[backup_kind]
    backup = tmp_path / "backup"
    interrupted = _distiller(name, data)
    with pytest.raises(PreemptedError):
        _fit(interrupted, data, [make_backup(backup), PreemptAfterEpoch(0)])

    # A restarted job: new objects, never built; FGCR's relations are left to the backup.
    resumed = _distiller(name, data=None)
    assert not resumed.built
    history = _fit(resumed, data, [make_backup(backup)])

    assert history.epoch == [1, 2]
    assert to_numpy(resumed.optimizer.iterations) == to_numpy(reference.optimizer.iterations)
    _assert_same_state(resumed, reference)
    if name == "ctkd":
        assert to_numpy(resumed.policy.epoch) == EPOCHS - 1
    for mine, theirs in zip(resumed.teacher.weights, reference.teacher.weights, strict=True):
        np.testing.assert_array_equal(to_numpy(mine), to_numpy(theirs))


@pytest.mark.parametrize("unbuilt", ["student", "teacher"])
def test_unbuilt_models_with_a_backup_get_our_error(unbuilt, data, tmp_path):
    teacher, student = _models(built=unbuilt != "student")
    if unbuilt == "teacher":
        teacher = keras.Sequential([keras.layers.Dense(CLASSES)])
    distiller = Distiller(teacher, student)
    distiller.compile("sgd", policy=ISATS(num_candidates=8))
    with pytest.raises(ValueError, match=rf"the {unbuilt} is not built.*distiller\.build"):
        _fit(distiller, data, [keras.callbacks.BackupAndRestore(tmp_path / "backup")])
    # Without a backup nothing needs building first.
    distiller.fit(*data, epochs=1, verbose=0)


def test_fgcr_readiness_is_read_from_its_variable(data, tmp_path):
    policy = FGCR(num_classes=CLASSES)
    with pytest.raises(ValueError, match="no class relations"):
        policy.check_ready()  # zeros: not a row-stochastic matrix
    relations = np.full((CLASSES, CLASSES), 1.0 / CLASSES, dtype=np.float32)
    policy.relations.assign(relations)  # as a backup or a weights file restores it
    policy.check_ready()
    policy.relations.assign(2 * relations)  # rows summing to 2
    with pytest.raises(ValueError, match="no class relations"):
        policy.check_ready()
    with pytest.raises(ValueError, match="pass `num_classes=`"):
        FGCR().check_ready()


def test_unready_fgcr_with_an_empty_backup_names_the_fix(data, tmp_path):
    distiller = _distiller("fgcr", data=None)
    before = [to_numpy(w) for w in distiller.teacher.weights]
    with pytest.raises(ValueError, match=r"FGCR has no class relations yet: call `policy\.adapt"):
        _fit(distiller, data, [keras.callbacks.BackupAndRestore(tmp_path / "backup")])
    for mine, theirs in zip(distiller.teacher.weights, before, strict=True):
        np.testing.assert_array_equal(to_numpy(mine), theirs)
    # Without `num_classes` a backup has nowhere to restore relations: refused up front.
    teacher, student = _models()
    distiller = Distiller(teacher, student)
    distiller.compile("sgd", policy=FGCR())
    with pytest.raises(ValueError, match="pass `num_classes=`"):
        _fit(distiller, data, [keras.callbacks.BackupAndRestore(tmp_path / "backup")])


# ------------------------------------------- the verified backup: kills while writing
def _interrupted_verified_run(name, data, backup) -> None:
    interrupted = _distiller(name, data)
    with pytest.raises(PreemptedError):
        _fit(interrupted, data, [VerifiedBackupAndRestore(backup), PreemptAfterEpoch(0)])


def test_kill_while_writing_a_backup_resumes_from_the_last_committed_epoch(data, tmp_path):
    reference = _distiller("isats", data)
    _fit(reference, data, [])
    backup = tmp_path / "backup"
    _interrupted_verified_run("isats", data, backup)
    assert json.loads((backup / STATE_NAME).read_text())["epoch"] == 1
    # Killed while epoch 2's weights were written: a half file, no record, no commit.
    committed = backup / weights_name(1)
    (backup / weights_name(2)).write_bytes(committed.read_bytes()[:100])
    (backup / f".{weights_name(2)}.x1y2.weights.h5").write_bytes(b"partial")

    resumed = _distiller("isats")
    history = _fit(resumed, data, [VerifiedBackupAndRestore(backup)])
    assert history.epoch == [1, 2]
    _assert_same_state(resumed, reference)
    assert json.loads((backup / STATE_NAME).read_text())["epoch"] == EPOCHS
    assert sorted(p.name for p in backup.glob("epoch*.weights.h5")) == [weights_name(EPOCHS)]


def test_corrupted_backup_is_refused_with_its_path(data, tmp_path):
    backup = tmp_path / "backup"
    _interrupted_verified_run("isats", data, backup)
    committed = backup / weights_name(1)
    content = bytearray(committed.read_bytes())
    content[len(content) // 2] ^= 0xFF  # same size, one byte changed
    committed.write_bytes(bytes(content))
    with pytest.raises(CorruptFileError, match=rf"{committed}.*SHA-256 differs.*Delete it"):
        _fit(_distiller("isats"), data, [VerifiedBackupAndRestore(backup)])
    (backup / STATE_NAME).write_text('{"epoch": 1, "weig')  # a torn commit file
    with pytest.raises(CorruptFileError, match=f"{backup / STATE_NAME}.*not valid JSON"):
        _fit(_distiller("isats"), data, [VerifiedBackupAndRestore(backup)])


def test_finished_backup_runs_no_epoch_and_keeps_the_folder(data, tmp_path):
    backup = tmp_path / "backup"
    distiller = _distiller("isats", data)
    _fit(distiller, data, [VerifiedBackupAndRestore(backup)])
    assert (backup / STATE_NAME).is_file()  # kept until the caller saved its model
    expected = _state(distiller)
    again = _distiller("isats")
    history = _fit(again, data, [VerifiedBackupAndRestore(backup)])
    assert history.epoch == []
    for key, value in _state(again).items():
        np.testing.assert_allclose(value, expected[key], rtol=1e-6, err_msg=key)


# --------------------------------------------------------------------- item 4: files
def _model() -> keras.Model:
    return _models()[1]


def test_verified_model_round_trip_and_every_kind_of_damage(tmp_path):
    model = _model()
    path = tmp_path / "sub" / "model.keras"
    files.save_model_verified(model, path)
    assert files.verify_file(path) and files.record_path(path).is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp left
    loaded = files.load_model_verified(path, compile=False)
    x = np.ones((2, FEATURES), dtype=np.float32)
    np.testing.assert_allclose(to_numpy(loaded(x)), to_numpy(model(x)), rtol=1e-6)

    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated
    assert not files.verify_file(path)
    with pytest.raises(CorruptFileError, match=rf"{path} cannot be trusted: it has \d+ bytes"):
        files.load_model_verified(path)
    assert issubclass(CorruptFileError, ValueError)

    changed = bytearray(good)
    changed[len(changed) // 3] ^= 0x01
    path.write_bytes(bytes(changed))
    with pytest.raises(CorruptFileError, match="SHA-256 differs.*Delete it"):
        files.load_model_verified(path)

    path.write_bytes(good)
    files.record_path(path).unlink()  # the writer was killed before its record
    with pytest.raises(CorruptFileError, match="has no record"):
        files.load_model_verified(path)
    files.record_path(path).write_text("{")
    with pytest.raises(CorruptFileError, match="record .* is unreadable"):
        files.check_file(path)


def test_an_interrupted_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    files.atomic_write_json(path, {"epoch": 1})
    files.write_record(path)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write_json(path, {"epoch": 2})
    monkeypatch.undo()
    assert files.load_json(path) == {"epoch": 1} and files.verify_file(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.json.record.json"]


def test_verified_arrays(tmp_path):
    path = tmp_path / "arrays.npz"
    files.save_arrays_verified(path, a=np.arange(5), b=np.eye(2))
    stored = files.load_arrays_verified(path)
    np.testing.assert_array_equal(stored["a"], np.arange(5))
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(CorruptFileError, match=str(path)):
        files.load_arrays_verified(path)


def test_teacher_cache_refuses_a_truncated_or_unrecorded_file(data, tmp_path):
    from keras_kdcap.cache import TeacherCache

    x, y = data
    teacher = _models()[0]
    path = tmp_path / "logits.npz"
    built = TeacherCache(teacher).build(x, y, path=path)
    assert files.verify_file(path)
    again = TeacherCache(teacher).build(x, y, path=path)
    assert again.loaded_from_file
    np.testing.assert_array_equal(again.logits, built.logits)

    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) - 40])
    with pytest.raises(CorruptFileError, match=rf"{path}.*truncated.*Delete it"):
        TeacherCache(teacher).build(x, y, path=path)
    path.write_bytes(whole)
    files.record_path(path).unlink()
    with pytest.raises(CorruptFileError, match=rf"{path}.*no record"):
        TeacherCache(teacher).build(x, y, path=path)


def test_train_teacher_writes_verified_files_and_resumes_a_finished_backup(data, tmp_path):
    from keras_kdcap.training import train_teacher

    x, y = data
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, len(x), 8)]

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return len(batches)

        def __getitem__(self, index):
            return batches[index]

    model = _models()[0]
    model, history = train_teacher(
        model, Batches(), 2, lr=0.1, checkpoint_dir=tmp_path, checkpoint_epochs=(1,), verbose=0
    )
    for name in ("teacher.keras", "teacher_epoch001.keras"):
        assert files.verify_file(tmp_path / name), name
    assert not (tmp_path / "backup").exists() and history["epoch"] == [0, 1]

    # Killed after the last epoch's backup, before teacher.keras was saved.
    class KilledAtTheEnd(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            raise PreemptedError("killed before teacher.keras was written")

    folder = tmp_path / "killed"
    killed = _models()[0]
    with pytest.raises(PreemptedError):
        train_teacher(
            killed,
            Batches(),
            2,
            lr=0.1,
            checkpoint_dir=folder,
            verbose=0,
            callbacks=[KilledAtTheEnd()],
        )
    assert not (folder / "teacher.keras").exists() and (folder / "backup").is_dir()
    rows = (folder / "history.csv").read_text()
    model, resumed = train_teacher(
        _models()[0], Batches(), 2, lr=0.1, checkpoint_dir=folder, verbose=0
    )
    assert resumed["epoch"] == [0, 1]
    assert (folder / "history.csv").read_text() == rows  # no epoch was run again
    assert files.verify_file(folder / "teacher.keras") and not (folder / "backup").exists()
    saved = files.load_model_verified(folder / "teacher.keras", compile=False)
    for mine, theirs, trained in zip(model.weights, saved.weights, killed.weights, strict=True):
        np.testing.assert_array_equal(to_numpy(mine), to_numpy(trained))
        np.testing.assert_array_equal(to_numpy(theirs), to_numpy(trained))
