"""Teacher training with the CRD recipe and checkpoints; a store of teachers keyed by settings."""

from keras_kdcap.training.backup import VerifiedBackupAndRestore
from keras_kdcap.training.schedules import (
    CRD_MILESTONES,
    CRDSchedule,
    crd_schedule,
    default_lr,
    milestone_epochs,
)
from keras_kdcap.training.store import TeacherStore
from keras_kdcap.training.teacher import (
    EpochCheckpoint,
    LearningRateLogger,
    build_teacher,
    checkpoint_name,
    train_teacher,
)
from keras_kdcap.training.weight_decay import apply_weight_decay

__all__ = [
    "CRD_MILESTONES",
    "CRDSchedule",
    "EpochCheckpoint",
    "LearningRateLogger",
    "apply_weight_decay",
    "build_teacher",
    "checkpoint_name",
    "crd_schedule",
    "default_lr",
    "milestone_epochs",
    "TeacherStore",
    "train_teacher",
    "VerifiedBackupAndRestore",
]
