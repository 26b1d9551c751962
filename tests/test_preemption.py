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
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import to_numpy
from interrupt import PreemptAfterEpoch, PreemptedError
from interrupt import training_state as _state

from keras_kdcap import CTKD, FGCR, ISATS, CorruptFileError, Distiller, files
from keras_kdcap.training.backup import STATE_NAME, VerifiedBackupAndRestore, weights_name

CLASSES = 3
FEATURES = 5
EPOCHS = 3


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


# ------------------------------------------------ item 3: the example killed with SIGKILL
REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "cifar100_isats.py"
#: fields of metrics.json that say how the run went, not what it found.
HOW_IT_RAN = {"time_s", "source", "resumed_from_epoch", "output_dir"}


def _example_argv(data_dir: Path, output_dir: Path) -> list[str]:
    """The smoke preset (10 classes), shrunk: the student on 2 images per class (one batch
    per epoch), the teacher on 10 per class (two batches per epoch, not the preset's 100
    batches of all 500: its epochs dominated the run time)."""
    return [
        sys.executable,
        str(SCRIPT),
        "--preset=smoke",
        f"--data_dir={data_dir}",
        f"--output_dir={output_dir}",
        "--teacher=resnet8",
        "--student=resnet8",
        "--per_class=2",
        "--test_per_class=2",
        "--teacher_per_class=10",
        "--teacher_epochs=2",
        "--epochs=3",
        "--batch_size=50",
        "--noanalysis",
        "--nobaseline",
        "--notensorboard",
        "--verbose=2",
    ]


def _env() -> dict[str, str]:
    """The subprocesses run on the backend under test (`one_backend`: torch, the quickest to
    start; the resumed numbers on every backend are checked in-process above)."""
    return {**os.environ, "KERAS_BACKEND": keras.backend.backend(), "TF_CPP_MIN_LOG_LEVEL": "2"}


def _committed_epoch(backup: Path) -> int:
    try:
        return int(json.loads((backup / STATE_NAME).read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def _run_until_killed(argv: list[str], backup: Path, epochs: int, log: Path) -> None:
    """Starts the script, SIGKILLs it as soon as `backup` has committed `epochs` epochs."""
    with open(log, "w") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=_env())
        try:
            while _committed_epoch(backup) < epochs:  # the marker: the epoch's commit
                if process.poll() is not None:
                    pytest.fail(f"the run ended before the kill:\n{log.read_text()[-3000:]}")
                time.sleep(0.02)
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL


def _assert_same_results(actual, expected, where: str = "metrics") -> None:
    """Same keys everywhere, and the same values except `HOW_IT_RAN`."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key, value in expected.items():
            if key not in HOW_IT_RAN:
                _assert_same_results(actual[key], value, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for i, (mine, theirs) in enumerate(zip(actual, expected, strict=True)):
            _assert_same_results(mine, theirs, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-5, abs=1e-7), where
    else:
        assert actual == expected, where


@pytest.mark.slow
@pytest.mark.one_backend
def test_example_killed_mid_epoch_twice_ends_as_an_uninterrupted_run(tmp_path):
    from conftest import cifar100_dir

    data_dir = cifar100_dir()
    if not (data_dir / "train.npz").exists():
        pytest.skip(f"offline CIFAR-100 not found at {data_dir} (set KDCAP_CIFAR100_DIR)")
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    finished = subprocess.run(
        _example_argv(data_dir, reference), capture_output=True, text=True, env=_env()
    )
    assert finished.returncode == 0, finished.stdout[-3000:]

    argv = _example_argv(data_dir, killed)
    # 1. Killed in the teacher's second epoch: its first is kept in the backup.
    _run_until_killed(argv, killed / "teacher" / "backup", 1, tmp_path / "run1.log")
    assert _committed_epoch(killed / "teacher" / "backup") == 1
    assert not (killed / "teacher.keras").exists()
    # 2. The teacher resumes at epoch 2; killed in the student's second epoch.
    _run_until_killed(argv, killed / "backup", 1, tmp_path / "run2.log")
    run2 = (tmp_path / "run2.log").read_text()
    assert "teacher: resuming" in run2 and files.verify_file(killed / "teacher.keras")
    assert _committed_epoch(killed / "backup") == 1 and not (killed / "metrics.json").exists()
    # 3. The student resumes at epoch 2 and the run ends.
    last = subprocess.run(argv, capture_output=True, text=True, env=_env())
    assert last.returncode == 0, last.stdout[-3000:]
    assert "teacher: reused" in last.stdout and "resuming after epoch 1" in last.stdout

    expected = json.loads((reference / "metrics.json").read_text())
    actual = json.loads((killed / "metrics.json").read_text())
    _assert_same_results(actual, expected)
    assert actual["teacher"]["source"] == "reused" and actual["student"]["source"] == "resumed"
    assert actual["student"]["resumed_from_epoch"] == 1
    assert actual["student"]["history"]["epoch"] == [0, 1, 2]
    assert actual["teacher"]["history"]["epoch"] == [0, 1]
    assert not (killed / "backup").exists() and not (killed / "teacher" / "backup").exists()
    for name in ("teacher.keras", "student.keras"):
        assert files.verify_file(killed / name), name


# ------------------------------------- item 4 in the example: damaged outputs are rebuilt
def _plan_config(tmp_path):
    from keras_kdcap.experiment.config import ExperimentConfig

    return ExperimentConfig(teacher="resnet8", student="resnet8", output_dir=str(tmp_path))


def _write_verified(path: Path, content: bytes = b"a complete model file") -> None:
    files.atomic_write_bytes(path, content)
    files.write_record(path)


def _record(config, what: str) -> dict:
    from keras_kdcap.experiment import state

    fingerprint = (
        config.teacher_fingerprint() if what == "teacher" else config.student_fingerprint()
    )
    return {"fingerprint": state.normalise(fingerprint)}


def test_damaged_outputs_are_rebuilt_or_refused_never_reused(tmp_path, capsys):
    from keras_kdcap.experiment import state
    from keras_kdcap.experiment.config import UsageError

    config = _plan_config(tmp_path)
    teacher, student = tmp_path / state.TEACHER_FILE, tmp_path / state.STUDENT_FILE
    state.write_json(tmp_path / state.TEACHER_RECORD, _record(config, "teacher"))
    state.write_json(tmp_path / state.STUDENT_RECORD, _record(config, "student"))
    _write_verified(teacher)
    _write_verified(student)
    assert state.plan_run(config) == state.RunPlan(teacher="reuse", student="reuse")

    teacher.write_bytes(b"a complete")  # truncated since it was written
    assert state.plan_teacher(config) == "train"
    assert f"warning: {teacher} is rebuilt: it has 10 bytes" in capsys.readouterr().err
    # An interrupted teacher training of the same settings: resumed.
    work = tmp_path / state.TEACHER_WORK_DIR
    state.write_json(work / state.RUN_RECORD, _record(config, "teacher"))
    state.write_json(work / state.BACKUP_DIR / STATE_NAME, {"epoch": 1, "weights": "x"})
    assert state.plan_teacher(config) == "resume"
    # Killed after the training ended, before teacher.keras was published: resumed too.
    shutil.rmtree(work / state.BACKUP_DIR)
    _write_verified(work / state.FINAL_NAME)
    teacher.unlink()
    assert state.plan_teacher(config) == "resume"

    # The student: damaged, with its backup there -> resumed (no epoch lost).
    student.write_bytes(b"a complete model filE")
    state.write_json(tmp_path / state.BACKUP_DIR / state.RUN_RECORD, _record(config, "student"))
    assert state.plan_student(config) == "resume"
    assert f"{student} is rebuilt: its SHA-256 differs" in capsys.readouterr().err

    # No record and nothing to rebuild it from (an older version's file): refused.
    shutil.rmtree(tmp_path / state.BACKUP_DIR)
    files.record_path(student).unlink()
    with pytest.raises(UsageError, match=f"{student.name} that cannot be verified.*delete it"):
        state.plan_student(config)
    files.remove_verified(work / state.FINAL_NAME)
    files.atomic_write_bytes(teacher, b"an older version's teacher")
    files.record_path(teacher).unlink()
    with pytest.raises(UsageError, match=rf"--teacher={teacher} to use it as it is"):
        state.plan_teacher(config)
