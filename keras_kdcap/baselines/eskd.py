"""ESKD: distil from an early-stopped teacher (Cho & Hariharan, ICCV 2019).

The recipe: train the teacher with checkpoints at the candidate epochs
(`keras_kdcap.training.train_teacher(..., checkpoint_dir=d,
checkpoint_epochs=[...])` writes `teacher_epoch{E:03d}.keras` after `E`
completed epochs, and `history.csv`), pick an early one with
`select_checkpoint`, load it and distil as usual::

    path = select_checkpoint("runs/resnet110", fraction=0.25)
    teacher = keras_kdcap.files.load_model_verified(path)  # refuses a file cut short
    distiller = Distiller(teacher, student)

docs/policies/eskd_takd.md discusses which epoch to pick.
"""

from __future__ import annotations

import csv
import os
import re

from keras_kdcap.validation import check_int_at_least, check_positive

#: the teacher trainer's checkpoint names; the number is the count of completed epochs.
CHECKPOINT_PATTERN = re.compile(r"^teacher_epoch(\d+)\.keras$")
#: the teacher trainer's per-epoch log (Keras CSVLogger), one row per epoch.
HISTORY_NAME = "history.csv"


def list_checkpoints(checkpoint_dir) -> dict[int, str]:
    """The teacher checkpoints of a directory, by epoch.

    Args:
        checkpoint_dir: the directory holding `teacher_epoch{E:03d}.keras` files.

    Returns:
        `{epoch: path}`, sorted by epoch (other files are ignored).

    Raises:
        FileNotFoundError: `checkpoint_dir` is not a directory.
    """
    checkpoint_dir = os.fspath(checkpoint_dir)
    if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(f"`checkpoint_dir` {checkpoint_dir!r} is not a directory.")
    found = {}
    for entry in os.listdir(checkpoint_dir):
        match = CHECKPOINT_PATTERN.match(entry)
        if match:
            found[int(match.group(1))] = os.path.join(checkpoint_dir, entry)
    return dict(sorted(found.items()))


def _logged_epochs(checkpoint_dir) -> int:
    """The number of epochs in the teacher trainer's `history.csv`."""
    path = os.path.join(os.fspath(checkpoint_dir), HISTORY_NAME)
    if not os.path.isfile(path):
        raise ValueError(
            f"`fraction` needs the length of the teacher's training: pass `total_epochs` "
            f"(there is no {HISTORY_NAME} in {os.fspath(checkpoint_dir)!r} to read it from)."
        )
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    epochs = [int(row["epoch"]) for row in rows if row.get("epoch") not in (None, "", "NA")]
    return max(epochs) + 1 if epochs else len(rows)


def select_checkpoint(
    checkpoint_dir,
    epoch: int | None = None,
    fraction: float | None = None,
    total_epochs: int | None = None,
) -> str:
    """The path of the last teacher checkpoint at or before an epoch.

    Give exactly one of `epoch` or `fraction`. A fraction selects epoch
    `fraction * total_epochs`; `total_epochs` defaults to the number of
    epochs logged in the directory's `history.csv` (the teacher trainer's
    log), since checkpoints are usually kept only at a few epochs. Epochs
    count completed epochs, as in the file names.

    Args:
        checkpoint_dir: the directory holding `teacher_epoch{E:03d}.keras` files.
        epoch: the epoch to stop at, >= 0.
        fraction: the fraction of training to stop at, in (0, 1].
        total_epochs: the length of the teacher's training, for `fraction`;
            read from `history.csv` when None.

    Returns:
        The checkpoint's path.

    Raises:
        ValueError: both or neither of `epoch` and `fraction`, a bad value, or
            no checkpoint at or before the requested epoch.
        FileNotFoundError: no such directory, or no checkpoints in it.

    Example:
        >>> select_checkpoint("runs/teacher", epoch=60)  # doctest: +SKIP
        'runs/teacher/teacher_epoch060.keras'
    """
    if (epoch is None) == (fraction is None):
        raise ValueError("Give exactly one of `epoch` or `fraction` to select a checkpoint.")
    checkpoints = list_checkpoints(checkpoint_dir)
    if not checkpoints:
        raise FileNotFoundError(
            f"No teacher checkpoints (teacher_epochNNN.keras) in {os.fspath(checkpoint_dir)!r}: "
            "train the teacher with per-epoch checkpoints first."
        )
    if epoch is not None:
        target = float(check_int_at_least("epoch", epoch, 0))
        argument = f"`epoch` {epoch}"
    else:
        fraction = check_positive("fraction", fraction)
        if fraction > 1:
            raise ValueError(f"`fraction` must lie in (0, 1]; got {fraction}.")
        total = _logged_epochs(checkpoint_dir) if total_epochs is None else total_epochs
        total = check_int_at_least("total_epochs", total, 1)
        target = fraction * total
        argument = f"`fraction` {fraction} (epoch {target:g} of {total})"
    eligible = [e for e in checkpoints if e <= target + 1e-9]
    if not eligible:
        raise ValueError(
            f"No checkpoint at or before {argument}: the first one is epoch {min(checkpoints)}."
        )
    return checkpoints[max(eligible)]
