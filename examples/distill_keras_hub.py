"""A KerasHub image classifier as teacher, distilled into a compact zoo student on CIFAR-100.

    python examples/distill_keras_hub.py --preset smoke
    python examples/distill_keras_hub.py --hub_preset resnet_18_imagenet --image_size 64

The recipe for your own models (docs/own_models.md):
1. The teacher is a KerasHub task model. Its `preprocessor` (resize, rescale) runs in
   `teacher.fit/predict`, but the Distiller calls `teacher(x)`: apply it in the input
   pipeline with `keras_kdcap.hub.preprocessed(ds, teacher)`. The student gets the same
   converted images.
2. The teacher gives logits (KerasHub classifiers do, `activation=None`).
3. Distil with `Distiller(teacher, student)` and a temperature policy (ISATS here).

Without `--hub_preset` the teacher is a KerasHub ResNet built from a config (random
weights, no network) and trained here first; with it, `ImageClassifier.from_preset`
loads pretrained weights (network or a local KerasHub/Kaggle cache needed) and
fine-tunes them here. Presets: `smoke` (10 classes, 50 images each, minutes on a
2-core CPU) and `full` (100 classes, every image).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _startup import quiet_native_startup  # noqa: E402

with quiet_native_startup():
    import keras
    import numpy as np
    from absl import flags

    from keras_kdcap import Distiller, files, hub
    from keras_kdcap.data import (
        CIFAR100_MEAN,
        CIFAR100_STD,
        EpochSync,
        cifar_augment,
        load_cifar100_arrays,
        stratified_indices,
    )
    from keras_kdcap.data._deps import import_tensorflow
    from keras_kdcap.data.pipeline import array_loader, eval_dataset, indexed_train_dataset
    from keras_kdcap.experiment.cli import preset_then_flags
    from keras_kdcap.models import get_model
    from keras_kdcap.policies import ISATS

#: the CIFAR-100 copy beside the checkout (the project's convention).
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar100"

PRESETS = {
    "smoke": {
        "num_classes": 10,
        "per_class": 50,
        "test_per_class": 50,
        "teacher_epochs": 8,
        "epochs": 8,
        "batch_size": 32,
    },
    "full": {
        "num_classes": 100,
        "per_class": 0,
        "test_per_class": 0,
        "teacher_epochs": 60,
        "epochs": 60,
        "batch_size": 64,
    },
}


def define_flags(fv: flags.FlagValues) -> None:
    """The script's flags (preset-controlled ones default to None)."""
    flags.DEFINE_enum("preset", "smoke", list(PRESETS), "Run size.", flag_values=fv)
    flags.DEFINE_string(
        "hub_preset",
        None,
        "A KerasHub ImageClassifier preset (e.g. resnet_18_imagenet) to fine-tune as the "
        "teacher; default: a small KerasHub ResNet built from a config and trained here.",
        flag_values=fv,
    )
    flags.DEFINE_string("student", "resnet8", "Student: a zoo model name.", flag_values=fv)
    flags.DEFINE_integer(
        "image_size", 32, "Side of the images the teacher's converter resizes to.", flag_values=fv
    )
    for name, help_text in (
        ("num_classes", "First N classes of CIFAR-100."),
        ("per_class", "Training images per class (0: all)."),
        ("test_per_class", "Test images per class (0: all)."),
        ("teacher_epochs", "Teacher epochs."),
        ("epochs", "Student epochs."),
        ("batch_size", "Batch size."),
    ):
        flags.DEFINE_integer(name, None, help_text + " Default: from --preset.", flag_values=fv)
    flags.DEFINE_string(
        "data_dir",
        str(DEFAULT_DATA_DIR),
        "Folder of the offline CIFAR-100 copy (train.npz, test.npz).",
        flag_values=fv,
    )
    flags.DEFINE_string("output_dir", "runs/keras_hub", "Where the models go.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of weights, shuffling and augmentation.", flag_values=fv)
    flags.DEFINE_integer("verbose", 2, "Keras fit verbosity.", flag_values=fv)


def settings(argv: Sequence[str]) -> dict:
    """Parses the command line: the preset's values, then the flags given."""
    fv = flags.FlagValues()
    define_flags(fv)
    fv(list(argv))
    values = preset_then_flags(fv, PRESETS[fv.preset])
    if not 2 <= values["num_classes"] <= 100:
        raise SystemExit(f"error: --num_classes={values['num_classes']}: choose 2 to 100")
    if not (Path(values["data_dir"]) / "train.npz").is_file():
        raise SystemExit(
            f"error: --data_dir={values['data_dir']}: no train.npz/test.npz there "
            "(the offline CIFAR-100 copy)"
        )
    return values


def load_split(images: np.ndarray, labels: np.ndarray, classes: int, per_class: int):
    """The first `per_class` images of each of the first `classes` classes."""
    keep = np.flatnonzero(labels < classes)
    images, labels = images[keep], labels[keep]
    if per_class:
        keep = stratified_indices(labels, per_class)
        images, labels = images[keep], labels[keep]
    return images, labels


def raw_datasets(s: dict):
    """Training (cropped, flipped) and test batches of raw 0-255 float32 images."""
    tf = import_tensorflow()
    train, test = load_cifar100_arrays(s["data_dir"])
    x_train, y_train = load_split(*train, s["num_classes"], s["per_class"])
    x_test, y_test = load_split(*test, s["num_classes"], s["test_per_class"])
    train_ds = indexed_train_dataset(
        len(y_train),
        array_loader(x_train, y_train),
        lambda image, seed: tf.cast(cifar_augment(image, seed), tf.float32),
        batch_size=s["batch_size"],
        seed=s["seed"],
        drop_remainder=len(y_train) >= s["batch_size"],
    )
    test_ds = eval_dataset(
        len(y_test),
        array_loader(x_test, y_test),
        lambda image: tf.cast(image, tf.float32),
        batch_size=128,
    )
    return train_ds, test_ds, len(y_train), len(y_test)


def build_teacher(s: dict) -> keras.Model:
    """The KerasHub teacher: from a preset, or a small ResNet built from a config."""
    import keras_hub

    size = (s["image_size"], s["image_size"])
    if s["hub_preset"]:
        # The real path: pretrained weights, a new head for our classes.
        teacher = keras_hub.models.ImageClassifier.from_preset(
            s["hub_preset"], num_classes=s["num_classes"], activation=None
        )
        teacher.preprocessor.image_converter.image_size = size
        return teacher
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 128],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        use_pre_activation=False,
        image_shape=(None, None, 3),
    )
    # The converter resizes and standardises raw 0-255 images with CIFAR-100's statistics:
    # the zoo student, fed the same converted images, gets what it is built for.
    converter = keras_hub.layers.ResNetImageConverter(
        image_size=size,
        scale=[1 / (255.0 * sd) for sd in CIFAR100_STD],
        offset=[-m / sd for m, sd in zip(CIFAR100_MEAN, CIFAR100_STD, strict=True)],
    )
    preprocessor = keras_hub.models.ResNetImageClassifierPreprocessor(image_converter=converter)
    return keras_hub.models.ResNetImageClassifier(
        backbone=backbone, num_classes=s["num_classes"], preprocessor=preprocessor
    )


def sgd(lr: float, epochs: int, steps: int) -> keras.optimizers.Optimizer:
    """SGD with momentum and a cosine decay over the run."""
    schedule = keras.optimizers.schedules.CosineDecay(lr, max(1, epochs * steps))
    return keras.optimizers.SGD(schedule, momentum=0.9)


def run(argv: Sequence[str]) -> dict:
    """Trains (or fine-tunes) the teacher, distils the student, prints and writes the results."""
    s = settings(argv)
    keras.utils.set_random_seed(s["seed"])
    out = Path(s["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    train, test, num_train, num_test = raw_datasets(s)
    steps = int(train.cardinality())
    print(
        f"data: {num_train} train / {num_test} test images, classes 0-{s['num_classes'] - 1} "
        f"of CIFAR-100 from {s['data_dir']}",
        flush=True,
    )
    start = time.perf_counter()
    teacher = build_teacher(s)
    # KerasHub's own fit applies the teacher's preprocessor to the raw batches.
    teacher.compile(
        optimizer=sgd(0.05, s["teacher_epochs"], steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    print(f"teacher: {type(teacher).__name__}, {teacher.count_params():,} parameters", flush=True)
    teacher.fit(
        train,
        epochs=s["teacher_epochs"],
        callbacks=[EpochSync(train)],
        shuffle=False,
        verbose=s["verbose"],
    )
    teacher_accuracy = float(teacher.evaluate(test, verbose=0, return_dict=True)["accuracy"])
    teacher_time = time.perf_counter() - start

    # The Distiller calls teacher(x): the preprocessor runs in the pipeline instead.
    train_pre = hub.preprocessed(train, teacher)
    test_pre = hub.preprocessed(test, teacher)
    student = get_model(s["student"], s["num_classes"], input_shape=(*[s["image_size"]] * 2, 3))
    distiller = Distiller(teacher, student)
    distiller.compile(
        sgd(0.05, s["epochs"], steps),
        policy=ISATS(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    start = time.perf_counter()
    history = distiller.fit(
        train_pre,
        epochs=s["epochs"],
        callbacks=[EpochSync(train)],
        shuffle=False,
        verbose=s["verbose"],
    )
    student.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    student_accuracy = float(student.evaluate(test_pre, verbose=0, return_dict=True)["accuracy"])
    student_time = time.perf_counter() - start

    student.save(out / "student.keras")
    teacher.save(out / "teacher.keras")
    results = {
        "teacher": type(teacher).__name__,
        "hub_preset": s["hub_preset"],
        "teacher_params": int(teacher.count_params()),
        "teacher_test_accuracy": teacher_accuracy,
        "student": s["student"],
        "student_params": int(student.count_params()),
        "student_test_accuracy": student_accuracy,
        "fallback_rate": float(history.history["fallback_rate"][-1]),
        "num_train": num_train,
        "num_test": num_test,
        "num_classes": s["num_classes"],
        "time_s": {"teacher": teacher_time, "student": student_time},
        "backend": keras.backend.backend(),
    }
    files.write_json(out / "results.json", results)  # atomic, strict
    print(
        f"teacher {results['teacher']} ({results['teacher_params']:,} params): "
        f"{100 * teacher_accuracy:.2f}% test, {teacher_time:.0f} s\n"
        f"student {s['student']} ({results['student_params']:,} params), ISATS: "
        f"{100 * student_accuracy:.2f}% test, {student_time:.0f} s "
        f"(ISATS fallback rate {results['fallback_rate']:.2f})\n"
        f"outputs in {out}{os.sep}",
        flush=True,
    )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """The entry point: returns the exit status."""
    run(sys.argv if argv is None else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
