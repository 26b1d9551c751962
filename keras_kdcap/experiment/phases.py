"""The phases of a run: teacher (train, resume, reuse or load), teacher statistics, student."""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from keras_kdcap import files
from keras_kdcap.experiment import state
from keras_kdcap.experiment.callbacks import TestAccuracy, tensorboard_callback
from keras_kdcap.experiment.config import ExperimentConfig, UsageError, make_policy, one_line
from keras_kdcap.experiment.data import ExperimentData, student_train_data
from keras_kdcap.experiment.report import read_csv_log

Log = Callable[[str], None]

#: temperatures of the teacher's non-target statistics.
STAT_TEMPERATURES = (1.0, 2.0, 4.0, 8.0)


def _resolve_lr(config: ExperimentConfig, model_name: str) -> float:
    from keras_kdcap.training import default_lr

    return float(config.lr) if config.lr is not None else default_lr(model_name)


def accuracy(model: keras.Model, dataset: Any) -> tuple[float, Any]:
    """Top-1 accuracy of a logits model over a dataset.

    Args:
        model: the model.
        dataset: `(x, y)` batches.

    Returns:
        `(accuracy as a fraction, collect_outputs result)`.
    """
    from keras_kdcap.analysis import collect_outputs

    outputs = collect_outputs(model, dataset)
    correct = np.argmax(outputs.logits, axis=-1) == outputs.labels
    return float(np.mean(correct)), outputs


def _load_teacher(path: str | os.PathLike, num_classes: int) -> keras.Model:
    try:
        if files.record_path(path).exists():  # written by a run: checked against its record
            files.check_file(path)
        model = keras.saving.load_model(path, compile=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a usage error here
        message = " ".join(str(err).split())[:300]
        raise UsageError(f"--teacher={path}: cannot load it ({message})") from None
    classes = model.output_shape[-1] if isinstance(model.output_shape, tuple) else None
    if classes != num_classes:
        raise UsageError(
            f"--teacher={path}: it gives {classes} outputs, the run needs {num_classes} logits "
            "(--num_classes)"
        )
    return model


def teacher_phase(
    config: ExperimentConfig, plan: str, data: ExperimentData, log: Log = print
) -> tuple[keras.Model, dict[str, Any]]:
    """Trains, resumes, reuses or loads the teacher, saved as `output_dir/teacher.keras`.

    Args:
        config: the configuration.
        plan: `RunPlan.teacher`.
        data: the pipelines.
        log: prints one progress line.

    Returns:
        `(teacher, record)`: the model and a dict with `model`, `source`, `epochs`,
        `lr`, `time_s` and the per-epoch `history` when it was trained here.
    """
    out = Path(config.output_dir)
    saved = out / state.TEACHER_FILE
    fingerprint = state.normalise(config.teacher_fingerprint())
    if plan == "reuse":
        log(f"[2/5] teacher: reused {saved} (trained earlier with the same settings)")
        record = state.read_json(out / state.TEACHER_RECORD)
        return _load_teacher(saved, config.num_classes), {**record, "source": "reused"}
    if plan == "load":
        log(f"[2/5] teacher: loaded {config.teacher}")
        teacher = _load_teacher(config.teacher, config.num_classes)
        record = {
            "model": teacher.name,
            "file": str(Path(config.teacher).resolve()),
            "fingerprint": fingerprint,
        }
        state.write_json(out / state.TEACHER_RECORD, record)  # the record first, the model last
        if not (saved.exists() and saved.samefile(config.teacher)):
            files.atomic_copy(config.teacher, saved)
            files.write_record(saved)
        elif not files.record_path(saved).exists():
            files.write_record(saved)  # the user's file, loaded as given
        return teacher, {**record, "source": "loaded"}

    from keras_kdcap.models import get_model

    lr = _resolve_lr(config, config.teacher)
    work = out / state.TEACHER_WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    state.write_json(work / state.RUN_RECORD, {"fingerprint": fingerprint})
    loss = "CE"
    if config.regt:
        loss = f"RegT (gamma {config.regt_gamma:g}, T {config.regt_temperature:g})"
    verb = "resuming" if plan == "resume" else "training"
    log(
        f"[2/5] teacher: {verb} {config.teacher} for {config.teacher_epochs} epochs "
        f"({loss}, SGD lr {lr:g}, batch {config.batch_size}) -> {saved}"
    )
    keras.utils.set_random_seed(config.seed)
    teacher = get_model(config.teacher, config.num_classes)
    board = tensorboard_callback(out / "tensorboard" / "teacher") if config.tensorboard else None
    callbacks = [board] if board is not None else []
    callbacks = data.teacher_epoch_callbacks() + callbacks
    regt = (
        {"gamma": config.regt_gamma, "temperature": config.regt_temperature}
        if config.regt
        else None
    )
    start = time.perf_counter()
    finished = work / state.FINAL_NAME
    if files.verify_file(finished):  # trained to the end, then killed before it was published
        teacher, history = files.load_model_verified(finished, compile=False), {}
    else:
        teacher, history = _train_teacher(config, teacher, data, lr, regt, work, callbacks)
    elapsed = time.perf_counter() - start
    record = {
        "model": config.teacher,
        "epochs": config.teacher_epochs,
        "lr": lr,
        "loss": loss,
        "time_s": elapsed,
        "history": read_csv_log(work / "history.csv") or history,
        "tensorboard": tensorboard_status(config, board),
        "fingerprint": fingerprint,
    }
    state.write_json(out / state.TEACHER_RECORD, record)  # the record first, the model last
    files.save_model_verified(teacher, saved)
    files.remove_verified(finished)
    return teacher, {**record, "source": "resumed" if plan == "resume" else "trained"}


def _train_teacher(
    config: ExperimentConfig,
    teacher: keras.Model,
    data: ExperimentData,
    lr: float,
    regt: dict | None,
    work: Path,
    callbacks: list,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """`train_teacher` with the run's settings, checkpointed and resumable in `work`."""
    from keras_kdcap.training import train_teacher

    with warnings.catch_warnings():
        # fit's default shuffle=True is meaningless for tf.data (ours shuffles itself).
        warnings.filterwarnings("ignore", message=r".*shuffle=True.*", category=UserWarning)
        return train_teacher(
            teacher,
            data.teacher_batches,
            config.teacher_epochs,
            val_ds=data.test,
            lr=lr,
            weight_decay=config.weight_decay,
            regt=regt,
            checkpoint_dir=work,
            resume=True,
            callbacks=callbacks,
            verbose=config.verbose,
        )


def tensorboard_status(config: ExperimentConfig, board: Any) -> str:
    """ "written", "off" (--notensorboard) or why TensorBoard was skipped.

    Args:
        config: the configuration.
        board: the guarded TensorBoard callback, or None if it could not be created.

    Returns:
        The status text.
    """
    if not config.tensorboard:
        return "off"
    if board is None:
        return "skipped: tensorboard not installed or the callback failed to start"
    return "written" if board.failed is None else f"skipped: {board.failed[:200]}"


def isats_search_settings(config: ExperimentConfig) -> dict[str, Any]:
    """The tau* search of the ISATS policy as configured (its defaults otherwise).

    Args:
        config: the configuration.

    Returns:
        `min_temperature`, `max_temperature`, `num_candidates` and `refine`.
    """
    from keras_kdcap.policies import ISATS

    args = config.policy_args if "isats" in (config.policy, config.base_policy) else {}
    kwargs = {
        k: args[k]
        for k in ("min_temperature", "max_temperature", "num_candidates", "refine")
        if args.get(k) is not None
    }
    policy = ISATS(**kwargs)
    return {
        "min_temperature": policy.min_temperature,
        "max_temperature": policy.max_temperature,
        "num_candidates": policy.num_candidates,
        "refine": policy.refine,
    }


def teacher_statistics(
    config: ExperimentConfig, teacher: keras.Model, data: ExperimentData, log: Log = print
) -> dict[str, Any]:
    """The teacher's dark-knowledge statistics over the training set (no augmentation).

    Non-target distinctness (`keras_kdcap.analysis.non_target_stats`) at a few
    temperatures, and the distribution of the ISATS temperature tau*
    (`keras_kdcap.policies.isats.isats_temperature`, through `analysis.tau_star_stats`).

    Args:
        config: the configuration.
        teacher: the teacher.
        data: the pipelines.
        log: prints one progress line.

    Returns:
        Dict with `train_accuracy`, `non_target` (one `non_target_stats` dict per
        temperature), `tau_star` (summary), and for the histogram (not written to
        JSON) `tau_star_values` (float64 `[N]`) and `teacher_correct` (bool `[N]`).
    """
    from keras_kdcap.analysis import non_target_stats, tau_star_stats

    log(f"[3/5] analysis: teacher non-target variance and tau* on {data.num_train} train images")
    train_accuracy, outputs = accuracy(teacher, data.train_eval)
    search = isats_search_settings(config)
    tau = tau_star_stats(outputs.logits, outputs.labels, **search)
    summary = {k: v for k, v in tau.items() if k not in ("tau_star", "correct") and np.isscalar(v)}
    return {
        "train_accuracy": train_accuracy,
        "non_target": [
            non_target_stats(outputs.logits, outputs.labels, t) for t in STAT_TEMPERATURES
        ],
        "tau_star": {**summary, **search},
        "tau_star_values": np.asarray(tau["tau_star"], dtype=np.float64),
        "teacher_correct": np.asarray(tau["correct"], dtype=bool),
    }


def prepare_policy(config: ExperimentConfig, teacher: keras.Model, data: ExperimentData) -> Any:
    """Builds the policy and prepares it for the teacher (`policy.prepare`).

    Args:
        config: the configuration.
        teacher: the teacher.
        data: the pipelines (the un-augmented training set is what `prepare` sees).

    Returns:
        The ready policy.

    Raises:
        UsageError: the policy cannot be prepared (e.g. FGCR's classifier relations
            on a teacher without a classifier layer).
    """
    policy = make_policy(config)
    try:
        policy.prepare(teacher, data.train_eval)
    except ValueError as err:
        raise UsageError(f"--policy {config.policy}: {one_line(err)}") from None
    return policy


def student_phase(
    config: ExperimentConfig,
    plan: str,
    teacher: keras.Model,
    data: ExperimentData,
    log: Log = print,
) -> tuple[keras.Model, dict[str, Any]]:
    """Distils the student (or resumes or reuses it), saved as `output_dir/student.keras`.

    Args:
        config: the configuration.
        plan: `RunPlan.student`.
        teacher: the teacher.
        data: the pipelines.
        log: prints one progress line.

    Returns:
        `(student, record)`: the model and a dict with `model`, `source`, `epochs`,
        `lr`, `time_s`, `resumed_from_epoch` and the per-epoch `history` (from the CSV
        log, so resumed epochs are included).
    """
    out = Path(config.output_dir)
    saved = out / state.STUDENT_FILE
    csv_path = out / state.STUDENT_LOG
    backup = out / state.BACKUP_DIR
    fingerprint = state.normalise(config.student_fingerprint())
    if plan == "reuse":
        log(f"[4/5] student: reused {saved} (trained earlier with the same settings)")
        record = state.read_json(out / state.STUDENT_RECORD)
        student = files.load_model_verified(saved, compile=False)
        return student, {**record, "source": "reused", "history": read_csv_log(csv_path)}

    from keras_kdcap import Distiller
    from keras_kdcap.models import get_model
    from keras_kdcap.training import apply_weight_decay, crd_schedule
    from keras_kdcap.training.backup import VerifiedBackupAndRestore, backup_epoch

    resumed_from = 0
    if plan == "resume":
        resumed_from = backup_epoch(backup)
    else:
        for path in (backup, out / "tensorboard" / "student"):
            shutil.rmtree(path, ignore_errors=True)
        csv_path.unlink(missing_ok=True)
    backup.mkdir(parents=True, exist_ok=True)
    state.write_json(backup / state.RUN_RECORD, {"fingerprint": fingerprint})

    lr = _resolve_lr(config, config.student)
    policy_name = config.policy + (f"+{config.base_policy}" if config.base_policy else "")
    verb = f"resuming after epoch {resumed_from} of" if plan == "resume" else "distilling"
    log(
        f"[4/5] student: {verb} {config.student} from {teacher.name} for {config.epochs} epochs "
        f"({policy_name}, alpha {config.alpha:g}, beta {config.beta:g}, SGD lr {lr:g}, "
        f"batch {config.batch_size}) -> {saved}"
    )
    keras.utils.set_random_seed(config.seed)
    student = get_model(config.student, config.num_classes)
    apply_weight_decay(student, config.weight_decay)
    policy = prepare_policy(config, teacher, data)
    distiller = Distiller(teacher, student)
    steps = data.steps_per_epoch
    distiller.compile(
        optimizer=keras.optimizers.SGD(
            learning_rate=crd_schedule(lr, config.epochs, steps), momentum=0.9, nesterov=False
        ),
        policy=policy,
        alpha=config.alpha,
        beta=config.beta,
        temperature_scaling=config.temperature_scaling,
        metrics=[_accuracy_metric(config)],
    )
    # Order matters: the CSV row is written before the backup, so an epoch is never
    # missing from the log (a repeated one is de-duplicated when reading it).
    callbacks = [
        *data.epoch_callbacks(),
        TestAccuracy(student, data.test, verbose=config.verbose > 0),
        keras.callbacks.CSVLogger(str(csv_path), append=True),
        VerifiedBackupAndRestore(backup),  # kept until student.keras is saved
    ]
    board = tensorboard_callback(out / "tensorboard" / "student") if config.tensorboard else None
    callbacks += [board] if board is not None else []
    start = time.perf_counter()
    distiller.fit(
        student_train_data(config, data),
        epochs=config.epochs,
        callbacks=callbacks,
        shuffle=False,
        verbose=config.verbose,
    )
    elapsed = time.perf_counter() - start
    record = {
        "model": config.student,
        "policy": policy_name,
        "metric_names": list(policy.metric_names),
        "epochs": config.epochs,
        "lr": lr,
        "time_s": elapsed,
        "resumed_from_epoch": resumed_from,
        "tensorboard": tensorboard_status(config, board),
        "fingerprint": fingerprint,
    }
    state.write_json(out / state.STUDENT_RECORD, record)  # the record first, the model last
    files.save_model_verified(student, saved)
    shutil.rmtree(backup, ignore_errors=True)
    source = "resumed" if plan == "resume" else "trained"
    return student, {**record, "source": source, "history": read_csv_log(csv_path)}


def _accuracy_metric(config: ExperimentConfig) -> keras.metrics.Metric:
    """Training accuracy: of int labels, or of the mixed soft labels' top class (`--mix`)."""
    if config.mix == "none":
        return keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    return keras.metrics.CategoricalAccuracy(name="accuracy")


def baseline_phase(
    config: ExperimentConfig, data: ExperimentData, log: Log = print
) -> tuple[keras.Model, dict[str, Any]]:
    """The student trained without a teacher: CE only, same data, seed, optimizer and epochs.

    The same initial weights as the distilled student (same seed), the same batches
    (mixed too under `--mix`), the same SGD schedule and weight decay: only the
    teacher is missing. Not saved or resumed (it is the yardstick of a short run).

    Args:
        config: the configuration.
        data: the pipelines.
        log: prints one progress line.

    Returns:
        `(student, record)`: the model and a dict with `model`, `epochs`, `lr`, `time_s`.
    """
    from keras_kdcap.models import get_model
    from keras_kdcap.training import apply_weight_decay, crd_schedule

    lr = _resolve_lr(config, config.student)
    log(
        f"[4/5] baseline: {config.student} without a teacher for {config.epochs} epochs "
        f"(CE only, SGD lr {lr:g}, batch {config.batch_size}, same data and seed)"
    )
    keras.utils.set_random_seed(config.seed)
    student = get_model(config.student, config.num_classes)
    apply_weight_decay(student, config.weight_decay)
    if config.mix == "none":
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    student.compile(
        optimizer=keras.optimizers.SGD(
            learning_rate=crd_schedule(lr, config.epochs, data.steps_per_epoch), momentum=0.9
        ),
        loss=loss,
        metrics=[_accuracy_metric(config)],
    )
    start = time.perf_counter()
    student.fit(
        student_train_data(config, data),
        epochs=config.epochs,
        callbacks=data.epoch_callbacks(),
        shuffle=False,
        verbose=config.verbose,
    )
    record = {
        "model": config.student,
        "policy": "CE only (no teacher)",
        "epochs": config.epochs,
        "lr": lr,
        "time_s": time.perf_counter() - start,
        "source": "trained",
    }
    return student, record
