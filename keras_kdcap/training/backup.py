"""`VerifiedBackupAndRestore`: epoch backups that survive a kill at any point.

Keras's `BackupAndRestore` writes its weights file in place and its epoch
number in a second file afterwards. A process killed while it writes leaves
a half-written weights file, or the weights of epoch e + 1 beside the number
e (the epoch is then trained twice). This callback writes each epoch's weights
to a new verified file (`keras_kdcap.files`) and then, atomically, a small
`state.json` naming that file and the epoch: the commit point. Older weights
files are removed after it. A restart restores the last committed epoch,
whatever moment the previous process was killed at.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import keras

from keras_kdcap import files

STATE_NAME = "state.json"
#: what Keras's own `BackupAndRestore` writes (read when no state.json exists).
KERAS_WEIGHTS = "latest.weights.h5"
KERAS_METADATA = "training_metadata.json"
STATE_FORMAT = 1


def weights_name(epoch: int) -> str:
    """The backup's weights file after `epoch` completed epochs."""
    return f"epoch{epoch:04d}.weights.h5"


def backup_epoch(backup_dir: str | os.PathLike) -> int:
    """The number of completed epochs a backup folder holds (0 when none).

    Args:
        backup_dir: a `VerifiedBackupAndRestore` (or Keras `BackupAndRestore`) folder.

    Returns:
        The committed epoch count.
    """
    import json

    folder = Path(backup_dir)
    for name in (STATE_NAME, KERAS_METADATA):
        try:
            with open(folder / name) as handle:
                return int(json.load(handle)["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return 0


class VerifiedBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` with atomic, verified epoch backups.

    Saves after every epoch; restores at the start of `fit` (the model must be
    built, as for Keras's callback). A weights file that does not match its
    record raises `keras_kdcap.files.CorruptFileError` naming it. A folder
    written by Keras's own callback is restored as Keras would.

    Args:
        backup_dir: the backup folder.
        delete_checkpoint: remove the folder when training ends. False keeps
            it until the caller has saved its final model (then remove it with
            `shutil.rmtree`): a kill between the end of `fit` and that save
            then resumes with no epoch left to run instead of from scratch.

    Example:
        >>> backup = VerifiedBackupAndRestore("runs/x/backup")  # doctest: +SKIP
        >>> model.fit(data, epochs=240, callbacks=[backup])  # doctest: +SKIP
    """

    def __init__(self, backup_dir: str | os.PathLike, delete_checkpoint: bool = False):
        super().__init__(
            os.fspath(backup_dir), save_freq="epoch", delete_checkpoint=delete_checkpoint
        )
        self.folder = Path(backup_dir)

    def on_train_begin(self, logs=None):
        state_path = self.folder / STATE_NAME
        if state_path.exists():
            state = files.load_json(state_path)
            try:
                weights, epoch = self.folder / str(state["weights"]), int(state["epoch"])
            except (KeyError, TypeError, ValueError):
                raise files.CorruptFileError(
                    f"{state_path} cannot be trusted: it lacks `epoch` or `weights`. Delete "
                    f"{self.folder} to start the training over."
                ) from None
            files.check_file(weights)
        elif (self.folder / KERAS_WEIGHTS).exists():
            weights, epoch = self.folder / KERAS_WEIGHTS, backup_epoch(self.folder)
        else:
            return
        if not self.model.built:
            raise ValueError(
                f"{self.folder} holds a backup, but the model is not built: build it (call "
                "it on one batch) before fit so the backup can be restored."
            )
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        self.model.load_weights(weights)
        self.model._initial_epoch = epoch  # how Keras's fit learns where to resume

    def on_epoch_end(self, epoch, logs=None):
        completed = epoch + 1
        weights = self.folder / weights_name(completed)
        files.save_weights_verified(self.model, weights)
        state = {"format": STATE_FORMAT, "epoch": completed, "weights": weights.name}
        files.atomic_write_json(self.folder / STATE_NAME, state)  # the commit point
        for old in self.folder.glob("epoch*.weights.h5"):
            if old.name != weights.name:
                files.remove_verified(old)
        for name in (KERAS_WEIGHTS, KERAS_METADATA):
            (self.folder / name).unlink(missing_ok=True)

    def on_train_batch_end(self, batch, logs=None):
        pass

    def on_train_end(self, logs=None):
        if self.delete_checkpoint:
            shutil.rmtree(self.folder, ignore_errors=True)
