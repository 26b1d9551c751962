"""Teacher training with the CRD recipe on plain ``compile``/``fit``.

Recipe: SGD with momentum 0.9 (no Nesterov), coupled weight decay 5e-4 (see
:mod:`keras_kdcap.training.weight_decay`), step decays x0.1 at 150/180/210 of 240
epochs, sparse cross-entropy on logits (or the RegT loss), accuracy as metric.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras

from keras_kdcap import files
from keras_kdcap.training.backup import VerifiedBackupAndRestore
from keras_kdcap.training.schedules import CRD_MILESTONES, crd_schedule, default_lr
from keras_kdcap.training.weight_decay import apply_weight_decay

FINAL_NAME = "teacher.keras"
HISTORY_NAME = "history.csv"
BACKUP_NAME = "backup"


def checkpoint_name(epoch: int) -> str:
    """File name of the teacher saved after ``epoch`` epochs (``teacher_epoch{E:03d}.keras``).

    Args:
        epoch: number of completed epochs (1-based).

    Returns:
        The file name.
    """
    return f"teacher_epoch{epoch:03d}.keras"


class EpochCheckpoint(keras.callbacks.Callback):
    """Save the whole model as ``.keras`` after chosen epochs (ESKD needs early teachers).

    Each file is written atomically with a record beside it
    (:func:`keras_kdcap.files.save_model_verified`).

    Args:
        directory: where to write ``teacher_epoch{E:03d}.keras``.
        epochs: numbers of completed epochs (1-based) after which to save.
    """

    def __init__(self, directory: str | os.PathLike, epochs: Sequence[int]) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.epochs = {int(e) for e in epochs}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch + 1 in self.epochs:
            files.save_model_verified(self.model, self.directory / checkpoint_name(epoch + 1))


class LearningRateLogger(keras.callbacks.Callback):
    """Add the learning rate used during each epoch (its first step's) to the logs."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["learning_rate"] = self._lr


def build_teacher(
    name: str,
    num_classes: int = 100,
    weight_decay: float = 5e-4,
    input_shape: Sequence[int] = (32, 32, 3),
    scope: str = "all",
) -> keras.Model:
    """Build a zoo model with the recipe's coupled weight decay attached to its variables.

    Args:
        name: a ``keras_kdcap.models.get_model`` name.
        num_classes: number of classes.
        weight_decay: PyTorch-style weight decay (see :func:`apply_weight_decay`).
        input_shape: image shape, channels last.
        scope: ``"all"`` variables (PyTorch's behaviour) or only ``"kernels"``.

    Returns:
        The model, outputting logits.
    """
    from keras_kdcap.models import get_model

    model = get_model(name, num_classes=num_classes, input_shape=tuple(input_shape))
    apply_weight_decay(model, weight_decay, scope)
    return model


def _steps_per_epoch(train_ds: Any) -> int:
    cardinality = getattr(train_ds, "cardinality", None)
    if cardinality is not None:
        steps = int(cardinality())
        if steps > 0:
            return steps
    try:
        return len(train_ds)
    except TypeError:
        pass
    raise ValueError(
        "cannot tell the number of batches of train_ds (infinite or unknown cardinality): "
        "pass steps_per_epoch"
    )


def _make_loss(regt: Any, loss: keras.losses.Loss | None) -> keras.losses.Loss:
    if loss is not None:
        if regt is not None:
            raise ValueError("pass either `regt` or `loss`, not both (RegTLoss is a loss too)")
        return loss
    if regt is None:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    from keras_kdcap.losses import RegTLoss

    if isinstance(regt, RegTLoss):
        return regt
    if isinstance(regt, dict):
        return RegTLoss(**regt)
    raise TypeError(f"regt must be None, a dict of RegTLoss arguments or a RegTLoss, got {regt!r}")


def _read_history(path: Path) -> dict[str, list[float]]:
    """The CSV log's columns; of an epoch logged twice (killed before its backup), the last."""
    with open(path, newline="") as f:
        rows = {int(row["epoch"]): row for row in csv.DictReader(f) if row.get("epoch")}
    history: dict[str, list[float]] = {}
    for _, row in sorted(rows.items()):
        for key, value in row.items():
            if value not in (None, "", "NA"):  # CSVLogger writes NA for absent values
                history.setdefault(key, []).append(int(value) if key == "epoch" else float(value))
    return history


def train_teacher(
    model: keras.Model,
    train_ds: Any,
    epochs: int,
    *,
    val_ds: Any = None,
    lr: float | None = None,
    momentum: float = 0.9,
    weight_decay: float | None = 5e-4,
    regt: Any = None,
    loss: keras.losses.Loss | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_epochs: Sequence[int] = (),
    resume: bool = True,
    milestones: Sequence[float] = CRD_MILESTONES,
    warmup_epochs: float = 0,
    steps_per_epoch: int | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = 1,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train a teacher with the CRD recipe; checkpoint, save and resume it.

    Args:
        model: a built model whose output is the logits ``[B, C]``.
        train_ds: training batches ``(image, int label)``: a tf.data dataset (an
            epoch-aware one from ``keras_kdcap.data`` is kept in step with the epochs,
            also across a resume), a ``keras.utils.PyDataset`` or anything ``fit`` takes.
        epochs: total number of epochs (a resumed run continues up to it).
        val_ds: optional validation batches, evaluated after every epoch.
        lr: initial learning rate (default: :func:`default_lr` of ``model.name``).
        momentum: SGD momentum (Nesterov off).
        weight_decay: PyTorch-style coupled decay on every trainable variable (an L2
            penalty ``weight_decay / 2 * w ** 2``); None keeps the model's own regularizers.
        regt: None for cross-entropy, else ``RegTLoss`` arguments (a dict such as
            ``{"gamma": 0.1, "temperature": 4.0}``) or a ``RegTLoss`` instance.
        loss: another loss on ``(int label, logits)``, e.g.
            ``keras_kdcap.SmoothedCrossEntropy(0.1)``; not with ``regt``.
        checkpoint_dir: where to write ``teacher_epoch{E:03d}.keras``, ``teacher.keras``
            (each with a ``.record.json``, see :mod:`keras_kdcap.files`), ``history.csv``
            and the ``backup/`` of :class:`VerifiedBackupAndRestore`, removed once
            ``teacher.keras`` is saved.
        checkpoint_epochs: numbers of completed epochs after which to save the teacher.
        resume: continue from ``checkpoint_dir/backup`` when a previous run was interrupted
            (also killed, at any point).
        milestones: decay points as fractions of ``epochs`` (see :func:`crd_schedule`).
        warmup_epochs: linear warm-up length.
        steps_per_epoch: batches per epoch (default: the dataset's length).
        callbacks: further Keras callbacks.
        verbose: ``fit``'s verbosity.

    Returns:
        ``(model, history)``: the trained model and ``{metric: [value per epoch]}`` with an
        ``"epoch"`` list (0-based) and the ``"learning_rate"`` of each epoch; with
        ``checkpoint_dir`` it covers the epochs of interrupted runs too.
    """
    if not model.built:
        raise ValueError("build the model (give it an Input or call it once) before training")
    try:
        output = model.output
    except (AttributeError, ValueError):  # subclassed models: not checked
        output = None
    if isinstance(output, dict | list | tuple):
        raise ValueError(
            "train_teacher needs a model with a single logits output; build zoo teachers "
            "with with_features=False"
        )
    steps = steps_per_epoch or _steps_per_epoch(train_ds)
    schedule = crd_schedule(
        default_lr(model.name) if lr is None else lr,
        epochs,
        steps,
        milestones=milestones,
        warmup_epochs=warmup_epochs,
    )
    if weight_decay is not None:
        apply_weight_decay(model, weight_decay)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=schedule, momentum=momentum, nesterov=False),
        loss=_make_loss(regt, loss),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )

    all_callbacks = [LearningRateLogger(), *callbacks]
    from keras_kdcap.data.pipeline import EpochSync, get_epoch_counter

    if get_epoch_counter(train_ds) is not None:
        all_callbacks.insert(0, EpochSync(train_ds))
    history_path = None
    if checkpoint_dir is not None:
        directory = Path(checkpoint_dir)
        directory.mkdir(parents=True, exist_ok=True)
        backup, history_path = directory / BACKUP_NAME, directory / HISTORY_NAME
        resuming = resume and backup.is_dir() and any(backup.iterdir())
        if not resuming:
            shutil.rmtree(backup, ignore_errors=True)
            history_path.unlink(missing_ok=True)
        # The epoch's CSV row and checkpoint first, its backup (the commit point) last:
        # a kill in between repeats the epoch, whose second row wins (`_read_history`).
        all_callbacks.append(keras.callbacks.CSVLogger(str(history_path), append=True))
        if checkpoint_epochs:
            all_callbacks.append(EpochCheckpoint(directory, checkpoint_epochs))
        all_callbacks.append(VerifiedBackupAndRestore(backup))

    fit_history = model.fit(
        train_ds,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=val_ds,
        callbacks=all_callbacks,
        verbose=verbose,
    )
    if checkpoint_dir is not None:
        files.save_model_verified(model, Path(checkpoint_dir) / FINAL_NAME)
        shutil.rmtree(Path(checkpoint_dir) / BACKUP_NAME, ignore_errors=True)
    if history_path is not None and history_path.exists():
        history = _read_history(history_path)
    else:
        history = {"epoch": list(fit_history.epoch), **fit_history.history}
    return model, history
