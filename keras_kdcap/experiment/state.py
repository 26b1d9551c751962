"""What a previous run left in the output folder: reuse, resume, or refuse to overwrite.

Every model this package writes has a JSON record of the settings it was trained
with (its fingerprint, see `ExperimentConfig`). A rerun with the same settings
reuses a finished teacher or student and resumes an interrupted one; a rerun
with other settings stops with a `UsageError` instead of mixing two runs,
unless `--restart` is given.

A run may be killed at any point (SIGKILL included). Every file is written
atomically (`keras_kdcap.files`); a phase writes its JSON record first, then its
model with a size and SHA-256 record, and removes its backup last. A model that
does not match its record is rebuilt (resumed from its backup when there is
one), with a warning naming it; one with no record and nothing to resume from
(an older version's) is refused with a `UsageError` instead of overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from keras_kdcap import files
from keras_kdcap.experiment.config import ExperimentConfig, UsageError

TEACHER_FILE = "teacher.keras"
TEACHER_RECORD = "teacher.json"
TEACHER_WORK_DIR = "teacher"  # train_teacher's checkpoint_dir: history.csv and backup/
FINAL_NAME = "teacher.keras"  # what train_teacher saves in its checkpoint_dir at the end
STUDENT_FILE = "student.keras"
STUDENT_RECORD = "student.json"
BACKUP_DIR = "backup"  # the student's keras.callbacks.BackupAndRestore folder
RUN_RECORD = "run.json"  # fingerprint of the run a backup folder belongs to
STUDENT_LOG = "student_log.csv"
METRICS_FILE = "metrics.json"

#: everything a run writes, removed by `--restart`.
OUTPUTS = (
    TEACHER_FILE,
    TEACHER_FILE + files.RECORD_SUFFIX,
    TEACHER_RECORD,
    TEACHER_WORK_DIR,
    STUDENT_FILE,
    STUDENT_FILE + files.RECORD_SUFFIX,
    STUDENT_RECORD,
    BACKUP_DIR,
    STUDENT_LOG,
    METRICS_FILE,
    "tensorboard",
    "plots",
)


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What each phase does.

    Args:
        teacher: "train", "resume" (an interrupted training), "reuse" (a finished
            teacher in the output folder) or "load" (from `--teacher <file>`).
        student: "train", "resume" or "reuse".
    """

    teacher: str
    student: str


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


#: writes JSON atomically, strict (NaN and infinities as null).
write_json = files.write_json
#: `value` as it reads back from JSON (tuples become lists, paths strings, ...).
normalise = files.jsonable


def settings_difference(old: Any, new: Any, prefix: str = "") -> str:
    """The first three settings that differ between two runs, for messages.

    Args:
        old: the earlier run's settings by name.
        new: this run's settings by name.
        prefix: put before each name (`"--"` where the names are flags).

    Returns:
        `"name: old -> new, ..."`, or "unknown settings" when one is not a dict.
    """
    if not isinstance(old, dict) or not isinstance(new, dict):
        return "unknown settings"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    parts = [f"{prefix}{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:3]]
    return ", ".join(parts) + (", ..." if len(keys) > 3 else "")


def _fingerprint_of(record: Any) -> Any:
    return record.get("fingerprint") if isinstance(record, dict) else None


def _mismatch(config: ExperimentConfig, what: str, old: Any, new: Any) -> UsageError:
    hint = ""
    if what == "student":
        hint = f" (--teacher={Path(config.output_dir) / TEACHER_FILE} reuses its teacher)"
    return UsageError(
        f"--output_dir={config.output_dir} holds a {what} trained with other settings "
        f"({settings_difference(old, new)}); pass --restart to replace it, or choose another "
        f"--output_dir{hint}"
    )


def _refuse_other_settings(
    config: ExperimentConfig, what: str, record: Path, work: Path, started: bool, fingerprint: Any
) -> None:
    """Raises a `UsageError` when the published model or the started run has other settings.

    Args:
        config: the configuration.
        what: "teacher" or "student".
        record: the published model's JSON record (`teacher.json`, `student.json`).
        work: the started run's folder, holding its `run.json`.
        started: whether a run was started in `work`.
        fingerprint: the settings of this run (`normalise`d).
    """
    saved = record.with_name(TEACHER_FILE if what == "teacher" else STUDENT_FILE)
    found = read_json(record)
    if (saved.exists() and found is None) or (
        found is not None and _fingerprint_of(found) != fingerprint
    ):
        raise _mismatch(config, what, _fingerprint_of(found), fingerprint)
    old = _fingerprint_of(read_json(work / RUN_RECORD)) if started else fingerprint
    if old != fingerprint:
        raise _mismatch(config, what, old, fingerprint)


def _has_backup(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def _reusable(config: ExperimentConfig, path: Path, what: str, rebuildable: bool) -> bool:
    """Whether the model a run published at `path` is there and matches its record.

    Args:
        config: the configuration.
        path: `teacher.keras` or `student.keras`.
        what: "teacher" or "student", for messages.
        rebuildable: a backup (or the source file) can rebuild it.

    Returns:
        True to reuse it; False to rebuild it (a damaged one with a warning).

    Raises:
        UsageError: it has no record and nothing can rebuild it.
    """
    problem = files.verification_problem(path)
    if problem is None:
        return True
    if not path.exists():
        return False
    if not files.record_path(path).exists() and not rebuildable:
        use = f"pass --teacher={path} to use it as it is, or " if what == "teacher" else ""
        raise UsageError(
            f"--output_dir={config.output_dir} holds a {what} {path.name} that cannot be "
            f"verified ({problem}): {use}delete it to train the {what} again"
        )
    print(f"warning: {path} is rebuilt: {problem}", file=sys.stderr, flush=True)
    return False


def plan_teacher(config: ExperimentConfig) -> str:
    """The teacher phase of `config` (see `RunPlan`): "train", "resume", "reuse" or "load".

    Raises:
        UsageError: the output folder holds a teacher with other settings.
    """
    out = Path(config.output_dir)
    fingerprint = normalise(config.teacher_fingerprint())
    saved = out / TEACHER_FILE
    if config.teacher_is_file and saved.exists() and saved.samefile(config.teacher):
        return "load"
    work = out / TEACHER_WORK_DIR
    # train_teacher's finished teacher.keras or its epoch backups, of these settings
    started = _has_backup(work / BACKUP_DIR) or files.verify_file(work / FINAL_NAME)
    _refuse_other_settings(config, "teacher", out / TEACHER_RECORD, work, started, fingerprint)
    if saved.exists() and _reusable(config, saved, "teacher", started or config.teacher_is_file):
        return "reuse"
    if config.teacher_is_file:
        return "load"
    return "resume" if started else "train"


def plan_student(config: ExperimentConfig) -> str:
    """The student phase of `config` (see `RunPlan`): "train", "resume" or "reuse".

    Raises:
        UsageError: the output folder holds a student run with other settings.
    """
    out = Path(config.output_dir)
    fingerprint = normalise(config.student_fingerprint())
    saved = out / STUDENT_FILE
    backup = out / BACKUP_DIR
    started = _has_backup(backup)
    _refuse_other_settings(config, "student", out / STUDENT_RECORD, backup, started, fingerprint)
    if saved.exists() and _reusable(config, saved, "student", started):
        return "reuse"
    return "resume" if started else "train"


def plan_run(config: ExperimentConfig) -> RunPlan:
    """The `RunPlan` of `config`; with `config.restart`, first clears the previous run.

    Raises:
        UsageError: a previous run with other settings is in the way.
    """
    if config.restart:
        own = Path(config.output_dir) / TEACHER_FILE
        keep = config.teacher_is_file and own.exists() and own.samefile(config.teacher)
        clear_outputs(config.output_dir, keep_teacher=keep)
    return RunPlan(teacher=plan_teacher(config), student=plan_student(config))


def clear_outputs(output_dir: str | os.PathLike, keep_teacher: bool = False) -> None:
    """Removes what a run wrote to `output_dir` (nothing else).

    Args:
        output_dir: the run's folder.
        keep_teacher: keep `teacher.keras` (when it is the `--teacher` file itself).
    """
    out = Path(output_dir)
    for name in OUTPUTS:
        if keep_teacher and name in (TEACHER_FILE, TEACHER_FILE + files.RECORD_SUFFIX):
            continue
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
