"""CIFAR-100 for an experiment: the offline npz copy or tensorflow-datasets, sliced per class."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import keras

from keras_kdcap.data.arrays import take
from keras_kdcap.data.splits import (
    EVAL_BATCH_SIZE,
    first_classes,
    per_class_indices,
    resolve_pipeline,
)
from keras_kdcap.experiment.config import ExperimentConfig, UsageError, one_line

NUM_CLASSES = 100


def check_npz_source(data_dir: str | None) -> None:
    """The NumPy pipeline reads the offline npz copy only: fails when there is none.

    Args:
        data_dir: the `--data_dir` value (None: $KDCAP_CIFAR100_DIR).

    Raises:
        UsageError: no `train.npz`/`test.npz` copy to read.
    """
    from keras_kdcap.data.cifar import resolve_cifar100_source

    if resolve_cifar100_source(data_dir)[0] != "npz":
        raise UsageError(
            "the NumPy pipeline (--pipeline=numpy, or auto without TensorFlow) reads the "
            "offline npz copy only: give --data_dir=<folder with train.npz and test.npz>, "
            "or install tensorflow for tensorflow-datasets"
        )


class ArrayEpochSync(keras.callbacks.Callback):
    """Sets a `keras_kdcap.data.ArrayImageDataset`'s epoch from Keras's, so resumed runs
    see the same shuffles and augmentations as uninterrupted ones.

    Args:
        dataset: the training `ArrayImageDataset`.
    """

    def __init__(self, dataset: Any) -> None:
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        # on_epoch_end() moves to the next epoch and draws its order: land on `epoch`.
        self.dataset.epoch = epoch - 1
        self.dataset.on_epoch_end()


@dataclasses.dataclass
class ExperimentData:
    """The pipelines of one run.

    Args:
        train: shuffled, augmented, epoch-aware training batches.
        train_eval: the same training images, in order, without augmentation.
        test: test batches, in order.
        num_train: training images.
        num_test: test images.
        source: where the images came from, in words.
        pipeline: "tfdata" or "numpy".
    """

    train: Any
    train_eval: Any
    test: Any
    num_train: int
    num_test: int
    source: str
    pipeline: str = "tfdata"
    teacher_train: Any = None
    num_teacher_train: int | None = None

    @property
    def teacher_batches(self) -> Any:
        """The teacher's training batches: its own (`--teacher_per_class`) or `train`."""
        return self.train if self.teacher_train is None else self.teacher_train

    @property
    def steps_per_epoch(self) -> int:
        """Training batches per epoch."""
        if self.pipeline == "numpy":
            return len(self.train)
        return int(self.train.cardinality())

    def epoch_callbacks(self) -> list[keras.callbacks.Callback]:
        """Callbacks that tie the training set's shuffle and augmentation to Keras's epoch."""
        if self.pipeline == "numpy":
            return [ArrayEpochSync(self.train)]
        from keras_kdcap.data import EpochSync

        return [EpochSync(self.train)]

    def teacher_epoch_callbacks(self) -> list[keras.callbacks.Callback]:
        """`epoch_callbacks` of the teacher's training batches (NumPy pipeline only)."""
        if self.pipeline == "numpy":
            return [ArrayEpochSync(self.teacher_batches)]
        return []  # train_teacher syncs tf.data pipelines itself


@functools.lru_cache(maxsize=2)
def _arrays(source: str, folder: str | None) -> tuple[Any, Any]:
    from keras_kdcap.data import load_cifar100_arrays, tfds_cifar100_arrays

    if source == "npz":
        return load_cifar100_arrays(folder)
    return tfds_cifar100_arrays(folder, download=True)


def load_arrays(data_dir: str | None) -> tuple[tuple[Any, Any], tuple[Any, Any], str]:
    """Reads CIFAR-100 once per process (comparisons reuse the arrays).

    Args:
        data_dir: the npz folder, a tfds data dir, or None.

    Returns:
        `(train, test, source)`: `(images, labels)` pairs and a description.

    Raises:
        UsageError: the data cannot be found or read (offline without a copy, ...).
    """
    from keras_kdcap.data.cifar import resolve_cifar100_source

    source, folder = resolve_cifar100_source(data_dir)
    try:
        train, test = _arrays(source, folder)
    except (OSError, ImportError, ValueError) as err:
        # OfflineDataError is a FileNotFoundError: no copy and no network.
        raise UsageError(f"cannot read CIFAR-100: {one_line(err)}") from None
    where = f"npz {folder}" if source == "npz" else f"tfds {folder or '(default data dir)'}"
    return train, test, where


def student_train_data(config: ExperimentConfig, data: ExperimentData) -> Any:
    """The student's training batches: `data.train`, mixed when `config.mix` asks for it.

    Args:
        config: the configuration (`mix`, `mix_layers`, `num_classes`, `seed`).
        data: the pipelines.

    Returns:
        `data.train`, or its MixUp / CutMix version with soft `[B, C]` labels.
    """
    if config.mix == "none":
        return data.train
    if data.pipeline == "numpy":
        if config.mix_layers != "kdcap":
            raise UsageError("--pipeline=numpy mixes with --mix_layers=kdcap only")
        from keras_kdcap.data.mix import MixedBatches

        return MixedBatches(data.train, config.mix, config.num_classes, seed=config.seed)
    from keras_kdcap.data.mix import mix_batches

    layer = None
    if config.mix_layers == "keras":
        layer = {"mixup": keras.layers.MixUp, "cutmix": keras.layers.CutMix}[config.mix](
            seed=config.seed
        )
    elif config.mix_layers == "keras_cv":
        import keras_cv

        layer = {"mixup": keras_cv.layers.MixUp, "cutmix": keras_cv.layers.CutMix}[config.mix](
            seed=config.seed
        )
    return mix_batches(data.train, config.mix, config.num_classes, seed=config.seed, layer=layer)


def load_data(config: ExperimentConfig, seed: int | None = None) -> ExperimentData:
    """Builds the training and evaluation pipelines of a run.

    Args:
        config: the configuration (`data_dir`, `per_class`, `test_per_class`,
            `batch_size`, `seed`).
        seed: shuffle and augmentation seed (default: `config.seed`).

    Returns:
        The `ExperimentData`.
    """
    pipeline = resolve_pipeline(config.pipeline)
    if pipeline == "numpy":
        check_npz_source(config.data_dir)
    train, test, where = load_arrays(config.data_dir)
    if config.num_classes < NUM_CLASSES:
        train, test = (
            first_classes(train, config.num_classes),
            first_classes(test, config.num_classes),
        )
        where += f", classes 0-{config.num_classes - 1} of {NUM_CLASSES}"
    teacher_arrays = None
    if config.teacher_per_class is not None and config.teacher_per_class != config.per_class:
        teacher_arrays = take(train, per_class_indices(train[1], config.teacher_per_class))
    train = take(train, per_class_indices(train[1], config.per_class))
    test = take(test, per_class_indices(test[1], config.test_per_class))
    (x_train, y_train), (x_test, y_test) = train, test
    seed = config.seed if seed is None else seed
    if pipeline == "numpy":
        from keras_kdcap.data.arrays import ArrayImageDataset

        def batches(images: Any, labels: Any) -> Any:
            return ArrayImageDataset(
                images, labels, config.batch_size, augment=True, shuffle=True, seed=seed
            )

        return ExperimentData(
            train=batches(x_train, y_train),
            teacher_train=None if teacher_arrays is None else batches(*teacher_arrays),
            num_teacher_train=None if teacher_arrays is None else len(teacher_arrays[1]),
            train_eval=ArrayImageDataset(x_train, y_train, EVAL_BATCH_SIZE),
            test=ArrayImageDataset(x_test, y_test, EVAL_BATCH_SIZE),
            num_train=len(y_train),
            num_test=len(y_test),
            source=where,
            pipeline=pipeline,
        )
    from keras_kdcap.data import cifar100_datasets_from_arrays

    # Whole batches only (one shape for XLA, no tiny BatchNorm batch), unless the
    # training set is smaller than one batch.
    def batches(arrays: Any) -> tuple[Any, Any]:
        return cifar100_datasets_from_arrays(
            arrays,
            test,
            batch_size=config.batch_size,
            seed=seed,
            augment=True,
            shuffle=True,
            drop_remainder=len(arrays[1]) >= config.batch_size,
            eval_batch_size=EVAL_BATCH_SIZE,
        )

    train_ds, test_ds = batches(train)
    train_eval, _ = cifar100_datasets_from_arrays(
        train,
        test,
        batch_size=EVAL_BATCH_SIZE,
        seed=seed,
        augment=False,
        shuffle=False,
        epoch=0,
    )
    return ExperimentData(
        train=train_ds,
        teacher_train=None if teacher_arrays is None else batches(teacher_arrays)[0],
        num_teacher_train=None if teacher_arrays is None else len(teacher_arrays[1]),
        train_eval=train_eval,
        test=test_ds,
        num_train=len(y_train),
        num_test=len(y_test),
        source=where,
        pipeline=pipeline,
    )
