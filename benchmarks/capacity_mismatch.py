"""Student accuracy under teacher-student capacity mismatch, per method (the paper's main table).

A scaled version of the paper's CIFAR-100 experiment on the real data copy:
a small and a large teacher (the large one more accurate), a student distilled
from each with every method, several seeds, and a table of test accuracy.

Protocol:
1. Data: `--per_class` training images per class; a validation split of
   `--val_per_class` further *training* images per class (never the test
   split) for `--tune`; the test split (`--test_per_class`, 0 = all).
2. Teachers (cached under `--cache_dir`, keyed by their settings):
   `--small_teacher`, `--large_teacher`, and `--large_teacher` trained with
   the RegT loss (for `regt_kd`). Trained with `keras_kdcap.training`
   (SGD 0.9, PyTorch-style weight decay `--teacher_weight_decay`, CRD step
   schedule). Reported per teacher: params, train/val/test accuracy, mean
   non-target variance at T=4 and the fraction of training targets whose
   label is ranked first.
3. Students (`--student`), per seed, plain Keras `fit` (one call per epoch),
   SGD 0.9, weight decay `--weight_decay`, CRD step schedule:
   `ce` (no teacher), `kd` (T=4, alpha 0.1, beta 0.9), `ats` (official:
   tau1 4, tau2 2, student T 1, alpha = beta = 0.5, no s^2), `fgcr`
   (class-mean relations from the training set, w 0.5, T 4), `isats`
   (the paper's method, settings from flags or `--tune`) for the small and
   the large teacher, and `regt_kd` (KD from the RegT-trained large teacher).
   Tuned per teacher on the validation split: `kd_tuned` (by default),
   `ats_tuned` and `isats_margin` (ISATS with `target_margin=kappa`; both on
   request), from `--tune_kd_temperatures`, `--tune_ats`, `--tune_isats_margins`.
   Teacher logits of every augmented epoch are computed once per
   (teacher, seed) and reused by all methods (`--teacher_logits`).
4. `--tune`: ISATS settings (target_ratio, fallback, search grid, student
   temperature; by default the `--isats_*` settings and each factor moved
   alone), distilled from the large teacher, scored by validation accuracy;
   the choice is recorded and used for the main runs.

    python benchmarks/capacity_mismatch.py --smoke            # ~2 minutes on a CPU
    python benchmarks/capacity_mismatch.py                    # CPU scale, ~70 minutes
    python benchmarks/capacity_mismatch.py --tune --tag=cpu   # tune ISATS first (~80 minutes)
    python benchmarks/capacity_mismatch.py --flat_label_smoothing=0.1 \
        --teacher_roles=small,large_flat                      # a flat large teacher

Writes `benchmarks/results/capacity_mismatch_<tag>.json` and prints markdown
tables. Runs on every Keras backend (KERAS_BACKEND); data pipelines use tf.data.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

from keras_kdcap import (  # noqa: E402
    ATS,
    FGCR,
    ISATS,
    Distiller,
    FixedTemperature,
    SmoothedCrossEntropy,
    files,  # noqa: E402
)
from keras_kdcap.analysis import non_target_stats, rank_agreement, tau_star_stats  # noqa: E402
from keras_kdcap.data import CifarSplits, resolve_pipeline  # noqa: E402
from keras_kdcap.distiller import with_teacher_logits  # noqa: E402
from keras_kdcap.experiment.cli import define_flag_table  # noqa: E402
from keras_kdcap.experiment.state import settings_difference  # noqa: E402
from keras_kdcap.models import count_params  # noqa: E402
from keras_kdcap.ops import label_ranked_first  # noqa: E402
from keras_kdcap.policies import get_policy, get_policy_names  # noqa: E402
from keras_kdcap.training import (  # noqa: E402
    TeacherStore,
    build_teacher,
    crd_schedule,
    train_teacher,
)

NUM_CLASSES = 100
DEFAULT_DATA_DIR = os.environ.get("KDCAP_CIFAR100_DIR") or str(
    _common.REPO.parent / "shared" / "data" / "cifar100"
)
DEFAULT_CACHE_DIR = str(_common.REPO / "runs" / "capacity_mismatch")
#: the policies of keras_kdcap.policies.get_policy_names() beyond these run by name too
#: (dkd, ls, ctkd, sckd: their defaults, alpha 0.1 / beta 0.9, DKD alpha = beta = 1).
METHODS = (
    "ce",
    "kd",
    "kd_tuned",
    "ats",
    "ats_tuned",
    "fgcr",
    "isats",
    "isats_margin",
    "regt_kd",
)
#: the default `--methods` (ats_tuned and isats_margin on request).
DEFAULT_METHODS = ("ce", "kd", "kd_tuned", "ats", "fgcr", "isats", "regt_kd")
EXTRA_METHODS = tuple(n for n in get_policy_names() if n not in METHODS)
#: methods distilled from both the small and the large teacher.
TEACHER_METHODS = ("kd", "kd_tuned", "ats", "ats_tuned", "fgcr", "isats", "isats_margin")
#: methods whose settings are chosen per teacher on the validation split.
TUNED_METHODS = ("kd_tuned", "ats_tuned", "isats_margin")
#: the key of each tuned method's choice in a teacher's tuned settings.
TUNED_KEYS = {"kd_tuned": "kd_temperature", "ats_tuned": "ats", "isats_margin": "target_margin"}
#: the smallest Spearman rank agreement with the small teacher that counts as
#: "ranks the non-target classes alike" (the paper reports mostly > 0.85).
SPEARMAN_MIN = 0.75
#: settings that do not change a finished run's numbers: a run restarted with
#: other values of these resumes from the results file.
RESUME_IGNORED = (
    "argv",
    "threads",
    "verbose",
    "seeds",
    "methods",
    "small_methods",
    "teacher_roles",
    "teachers_only",
    "tune_only",
    "tag",
    "output",
    "cache_dir",
    "data_dir",
    "resume",
)
#: settings added after results files were written: left out of the resume key
#: (and of `student_folder`'s) while at these defaults, so that those files
#: still resume and their students' folders keep their names.
RESUME_NEW_DEFAULTS = {"tune_isats_margins": [0.0, 0.25, 0.5]}
# `large_regt` and `large_flat` are the large model trained with RegT / label smoothing
ROLE_SEEDS = {"small": 1, "large": 2, "large_regt": 3, "large_flat": 4}
TEACHER_ROLES = ("small", "large", "large_flat")
LARGE_ROLES = ("large", "large_flat")
#: the ISATS settings tuning chooses.
TUNED = ("target_ratio", "fallback", "grid", "student_temperature")
#: how tuning breaks a tie of validation accuracy: a key (smaller wins, then the
#: earlier candidate) and its description; other methods: the earlier candidate.
TIE_BREAKS = {"isats": (lambda settings: settings["target_ratio"], "smaller ratio")}
#: what a tuning trial records of its run (besides its settings and seed).
TRIAL_FIELDS = {"isats": ("val_last", "val_best", "seconds", "last_epoch_metrics")}
#: settings `--smoke` imposes (a couple of minutes on a CPU).
SMOKE = {
    "student": "resnet8",
    "small_teacher": "resnet8",
    "large_teacher": "resnet14",
    "per_class": 4,
    "val_per_class": 2,
    "test_per_class": 4,
    "teacher_epochs": 2,
    "epochs": 2,
    "batch_size": 50,
    "seeds": [0],
    "eval_every": 1,
    "tune_target_ratios": [1.5, 2.0],
    "tune_fallbacks": [4.0],
    "tune_grids": ["0.5:20:32"],
    "tune_student_temperatures": ["tau"],
}

FLAGS = flags.FlagValues()
define_flag_table(
    FLAGS,
    {
        "data_dir": (DEFAULT_DATA_DIR, "Folder with train.npz/test.npz."),
        "cache_dir": (DEFAULT_CACHE_DIR, "Where trained teachers are cached."),
        "tag": (None, "Result name: capacity_mismatch_<tag>.json."),
        "output": (None, "JSON path (overrides --tag)."),
        "student": ("resnet8", "Student zoo model."),
        "small_teacher": ("resnet14", "Small teacher zoo model."),
        "large_teacher": (
            "wrn_16_2",
            "Large teacher zoo model (wrn_16_2: more accurate than resnet14 at the CPU scale;"
            " resnet32 was not).",
        ),
        "per_class": (20, "Training images per class (500 = all)."),
        "classes": (
            100,
            "Use the first N classes of CIFAR-100 (labels 0..N-1; 100 = all). A class subset "
            "gives each class more images for the same cost.",
        ),
        "val_per_class": (10, "Validation images per class, from the training split."),
        "test_per_class": (0, "Test images per class (0 = all 100)."),
        "teacher_epochs": (80, "Teacher training epochs."),
        "teacher_lr": (0.05, "Teacher initial learning rate."),
        "teacher_weight_decay": (
            5e-5,
            "Teacher PyTorch-style weight decay (weak: over-confident teachers).",
        ),
        "teacher_augment": (True, "Crop and flip for teachers."),
        "teacher_dtype_policy": (
            "float32",
            "Keras dtype policy of teacher training and inference, e.g. mixed_bfloat16 on a "
            "GPU (on the 2-core TensorFlow CPU it measured 0.7x the speed of float32).",
        ),
        "student_dtype_policy": (
            "float32",
            "Keras dtype policy of the students (logits and losses stay float32).",
        ),
        "regt_gamma": (0.1, "RegT teacher: gamma."),
        "flat_label_smoothing": (
            0.0,
            "> 0: also train `large_flat`, the large teacher with this label smoothing (flat "
            "non-target probabilities, the property the paper finds in large teachers).",
        ),
        "teacher_roles": (
            "small,large",
            "Teachers the distillation methods run for: small, large, large_flat.",
        ),
        "regt_temperature": (4.0, "RegT teacher: tau_r."),
        "epochs": (30, "Student epochs."),
        "lr": (0.05, "Student initial learning rate."),
        "weight_decay": (5e-4, "Student PyTorch-style weight decay."),
        "batch_size": (64, "Batch size (teachers and students)."),
        "seeds": ("0,1", "Comma list of student seeds."),
        "teacher_seed": (0, "Seed of the teachers."),
        "methods": (",".join(DEFAULT_METHODS), "Comma list of methods."),
        "resume": (
            True,
            "Keep the finished tuning and student runs of an unfinished results file with the"
            " same settings (a run killed part-way goes on where it stopped); --noresume "
            "starts over.",
        ),
        "small_methods": (
            None,
            "Comma list of the methods run for the small teacher (default: those of --methods).",
        ),
        "eval_every": (5, "Evaluate students every N epochs (and at the last)."),
        "temperature": (4.0, "KD/FGCR temperature and the analysis T."),
        "fgcr_weight": (0.5, "FGCR: weight w of the class relations."),
        "isats_target_ratio": (2.0, "ISATS: tau1 = ratio * tau*."),
        "isats_fallback": (4.0, "ISATS: misclassified samples' T."),
        "isats_grid": ("0.5:20:32", "ISATS search grid min:max:candidates."),
        "isats_student_temperature": (
            "tau",
            "ISATS: the student's temperature, `tau` (tau2 = tau* per sample) or a number.",
        ),
        "tune": (False, "Tune ISATS on the validation split first."),
        "tune_only": (False, "Stop after tuning."),
        "teachers_only": (
            False,
            "Train (or load) the teachers, print their table and the checks, and stop: check "
            "that the teachers show the regime before spending the students' time.",
        ),
        "tune_target_ratios": ("1,2,3", "Tuning grid: target_ratio."),
        "tune_fallbacks": ("2,4", "Tuning grid: fallback T."),
        "tune_grids": ("0.5:20:32,1:10:16", "Tuning grid: search grids min:max:K."),
        "tune_student_temperatures": (
            "tau,4",
            "Tuning grid: student temperature (`tau` or numbers).",
        ),
        "tune_mode": (
            "sweep",
            "sweep: the --isats_* settings plus one factor changed at a time to each of its "
            "tuning values (1 + sum of (values - 1) runs); grid: every combination.",
            ["sweep", "grid"],
        ),
        "tune_seeds": ("0", "Seeds of the tuning runs."),
        "tune_kd_temperatures": (
            "1,2,3,4,6,8",
            "kd_tuned: the KD temperatures tried on the validation split (per teacher).",
        ),
        "tune_ats": (
            "4:2,3:2,2:1,6:4,8:4,2:2",
            "ats_tuned: the (tau1:tau2) pairs tried on the validation split (per teacher).",
        ),
        "tune_isats_margins": (
            "0,0.25,0.5",
            "isats_margin: the ISATS target margins kappa in [0, 1] tried on the validation "
            "split (per teacher; ISATS(target_margin=kappa) with the run's ISATS settings).",
        ),
        "pipeline": (
            "auto",
            "Input pipeline: tf.data, or NumPy augmentation in a PyDataset (no TensorFlow "
            "needed). auto: tf.data when TensorFlow is installed.",
            ["auto", "tfdata", "numpy"],
        ),
        "teacher_logits": (
            "auto",
            "cached: compute each augmented epoch's teacher logits once per (teacher, seed) "
            "and reuse them for every method; online: the Distiller runs the teacher each "
            "step; auto: cached when the cache fits --logits_cache_mb.",
            ["auto", "cached", "online"],
        ),
        "logits_cache_mb": (2048, "Memory bound of cached logits."),
        "jit_compile": (
            "auto",
            "jit_compile of the student steps (auto: Keras's choice, XLA off on a CPU-only "
            "TensorFlow).",
            ["auto", "true", "false"],
        ),
        "verbose": (0, "Keras fit verbosity."),
        "smoke": (
            False,
            "Tiny run (resnet14/resnet8 -> resnet8, 4 images/class, 2 epochs, 1 seed; output "
            "tag smoke_<backend>, cache under <cache_dir>/smoke).",
        ),
    },
)
_common.define_threads_flag(FLAGS)


# --------------------------------------------------------------------- teachers
class DtypePolicyScope:
    """Sets the global Keras dtype policy inside a `with` block.

    Args:
        name: a dtype policy name, e.g. `mixed_bfloat16`.
    """

    def __init__(self, name: str):
        self.name = name

    def __enter__(self) -> None:
        self.previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.name)

    def __exit__(self, *exc: Any) -> None:
        keras.config.set_dtype_policy(self.previous)


def teacher_key(role: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The settings a trained teacher depends on (its cache key).

    Args:
        role: `small`, `large`, `large_regt` or `large_flat`.
        cfg: the configuration.

    Returns:
        A JSON-ready dict.
    """
    model = cfg["small_teacher"] if role == "small" else cfg["large_teacher"]
    key = {
        "model": model,
        "per_class": cfg["per_class"],
        "epochs": cfg["teacher_epochs"],
        "lr": cfg["teacher_lr"],
        "weight_decay": cfg["teacher_weight_decay"],
        "augment": cfg["teacher_augment"],
        "batch_size": cfg["batch_size"],
        "seed": cfg["teacher_seed"],
        "dtype_policy": cfg["teacher_dtype_policy"],
        "loss": "ce",
    }
    if cfg["classes"] != NUM_CLASSES:  # keys of full-CIFAR-100 teachers stay as they were
        key["classes"] = cfg["classes"]
    if role == "large_regt":
        key.update(
            loss="regt", regt_gamma=cfg["regt_gamma"], regt_temperature=cfg["regt_temperature"]
        )
    if role == "large_flat":
        key.update(loss="smoothed", label_smoothing=cfg["flat_label_smoothing"])
    return key


def get_teacher(
    role: str, data: CifarSplits, cfg: dict[str, Any]
) -> tuple[keras.Model, dict[str, Any]]:
    """Loads a cached teacher or trains and caches it.

    Args:
        role: `small`, `large` or `large_regt`.
        data: the data.
        cfg: the configuration.

    Returns:
        `(model, info)` with the training time, whether it was cached, and
        the last epoch's training metrics.
    """
    key = teacher_key(role, cfg)
    seed = cfg["teacher_seed"] * 1000 + ROLE_SEEDS[role]

    def train(folder: Path) -> tuple[keras.Model, dict[str, list[float]]]:
        print(
            f"[teacher {role}] training {key['model']} for {key['epochs']} epochs on "
            f"{data.sizes()['train']} images ({key['loss']})",
            flush=True,
        )
        keras.utils.set_random_seed(seed)
        with DtypePolicyScope(key["dtype_policy"]):
            model = build_teacher(key["model"], data.num_classes, weight_decay=key["weight_decay"])
            regt, loss = None, None
            if key["loss"] == "regt":
                regt = {"gamma": key["regt_gamma"], "temperature": key["regt_temperature"]}
            if key["loss"] == "smoothed":
                loss = SmoothedCrossEntropy(key["label_smoothing"])
            return train_teacher(
                model,
                data.train_epochs(seed, augment=key["augment"]),
                key["epochs"],
                lr=key["lr"],
                weight_decay=key["weight_decay"],
                regt=regt,
                loss=loss,
                checkpoint_dir=folder,
                verbose=cfg["verbose"],
            )

    return teacher_store(cfg).get(key, train, label=f"teacher {role}")


def teacher_store(cfg: dict[str, Any]) -> TeacherStore:
    """The teachers' cache: `<cache_dir>/teachers/<model>-<loss>-<digest of the key>/`."""
    return TeacherStore(
        Path(cfg["cache_dir"]) / "teachers",
        prefix=lambda key: f"{key['model']}-{key['loss']}",
        relative_to=_common.REPO,
    )


def teacher_report(
    model: keras.Model,
    data: CifarSplits,
    cfg: dict[str, Any],
    small_logits: np.ndarray | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Accuracies, params and the dark-knowledge statistics of one teacher.

    Args:
        model: the teacher.
        data: the data.
        cfg: the configuration.
        small_logits: the small teacher's logits on the clean training images,
            to measure how alike the two rank the non-target classes.

    Returns:
        `(report, train_logits)`: the report has `params`, the accuracies,
        `non_target_variance_T`, `non_target_std_T`, `target_first`, the
        median ISATS temperature `tau_star_median` (default grid) and, with
        `small_logits`, `spearman_vs_small` and `overlap5_vs_small`
        (statistics on the clean training images).
    """
    train_acc, train_logits = data.accuracy(model, "train")
    val_acc, _ = data.accuracy(model, "val")
    test_acc, test_logits = data.accuracy(model, "test")
    labels = data.train[1]
    stats = non_target_stats(train_logits, labels, cfg["temperature"])
    test_stats = non_target_stats(test_logits, data.test[1], cfg["temperature"])
    first = np.asarray(
        keras.ops.convert_to_numpy(label_ranked_first(train_logits, labels.astype("int32")))
    )
    report = {
        "params": count_params(model),
        "train_accuracy": train_acc,
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "non_target_variance_T": stats["variance"],
        "non_target_std_T": stats["std"],
        "test_non_target_variance_T": test_stats["variance"],
        "target_probability_T": stats["target_probability"],
        "target_first": float(first.mean()),
        "temperature": cfg["temperature"],
        "tau_star_median": float(tau_star_stats(train_logits, labels)["median"]),
    }
    if small_logits is not None:
        agreement = rank_agreement(small_logits, train_logits, labels, k=5)
        report["spearman_vs_small"] = agreement["spearman"]
        report["overlap5_vs_small"] = agreement["overlap@5"]
    return report, train_logits


# --------------------------------------------------------------------- students
def parse_grid(text: str) -> dict[str, Any]:
    """`"0.5:20:32"` -> ISATS search arguments.

    Args:
        text: `min:max:candidates`.

    Returns:
        `{"min_temperature", "max_temperature", "num_candidates"}`.
    """
    try:
        low, high, count = text.split(":")
        return {
            "min_temperature": float(low),
            "max_temperature": float(high),
            "num_candidates": int(count),
        }
    except ValueError:
        raise app.UsageError(f"ISATS grid {text!r} is not min:max:candidates.") from None


def method_setup(
    method: str,
    cfg: dict[str, Any],
    isats: dict[str, Any],
    tuned: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Policy and loss weights of a distillation method.

    Args:
        method: one of `METHODS` except `ce`.
        cfg: the configuration.
        isats: ISATS settings (`target_ratio`, `fallback`, `grid`).
        tuned: the validation-chosen settings of this teacher's tuned methods:
            `kd_temperature` (kd_tuned), `ats` (`[tau1, tau2]`, ats_tuned) and
            `target_margin` (kappa, isats_margin).

    Returns:
        `{"policy", "alpha", "beta", "temperature_scaling", "description"}`.
    """
    t = cfg["temperature"]
    if method in TUNED_METHODS and not (tuned and TUNED_KEYS[method] in tuned):
        raise ValueError(f"{method} runs after its tuning; no tuned setting was given.")
    if method in ("kd", "regt_kd", "kd_tuned"):
        tuned_t = method == "kd_tuned"
        t = tuned["kd_temperature"] if tuned_t else t
        return {
            "policy": FixedTemperature(t),
            "alpha": 0.1,
            "beta": 0.9,
            "temperature_scaling": True,
            "description": f"T={t:g}{' (tuned on validation)' if tuned_t else ''}, "
            "alpha 0.1, beta 0.9",
        }
    if method in ("ats", "ats_tuned"):
        tau1, tau2 = tuned["ats"] if method == "ats_tuned" else (4.0, 2.0)
        origin = "tuned on validation" if method == "ats_tuned" else "official"
        return {
            "policy": ATS(tau1, tau2, 1.0),
            "alpha": 0.5,
            "beta": 0.5,
            "temperature_scaling": False,
            "description": f"tau1 {tau1:g}, tau2 {tau2:g}, student T 1, alpha=beta=0.5, "
            f"no s^2 ({origin})",
        }
    if method == "fgcr":
        return {
            "policy": FGCR(weight=cfg["fgcr_weight"], temperature=t),
            "alpha": 0.1,
            "beta": 0.9,
            "temperature_scaling": True,
            "description": f"w {cfg['fgcr_weight']}, T={t}, class-mean relations",
        }
    if method in ("isats", "isats_margin"):
        student_t = isats.get("student_temperature", "tau")
        if method == "isats":
            target = {"target_ratio": isats["target_ratio"]}
            how = f"ratio {isats['target_ratio']}"
        else:
            target = {"target_margin": tuned["target_margin"]}
            how = f"target margin kappa {tuned['target_margin']:g} (tuned on validation)"
        return {
            "policy": ISATS(
                **target,
                fallback_temperature=isats["fallback"],
                student_temperature=None if student_t == "tau" else student_t,
                **parse_grid(isats["grid"]),
            ),
            "alpha": 0.1,
            "beta": 0.9,
            "temperature_scaling": True,
            "description": f"{how}, fallback {isats['fallback']}, grid {isats['grid']}, "
            f"student T = {'tau*' if student_t == 'tau' else student_t}, alpha 0.1, beta 0.9",
        }
    if method in EXTRA_METHODS:
        weights = (1.0, 1.0) if method == "dkd" else (0.1, 0.9)
        return {
            "policy": get_policy(method),
            "alpha": weights[0],
            "beta": weights[1],
            "temperature_scaling": True,
            "description": f"{method} with its defaults, alpha {weights[0]}, beta {weights[1]}",
        }
    raise ValueError(f"unknown method {method!r}")


class TeacherLogits:
    """Teacher logits of every augmented training epoch of one seed, computed once.

    Args:
        teacher: the teacher.
        data: the data.
        seed: the data seed of the student runs.
        epochs: number of epochs.
    """

    def __init__(self, teacher: keras.Model, data: CifarSplits, seed: int, epochs: int):
        start = time.perf_counter()
        self.logits = [
            np.asarray(teacher.predict(data.train_epoch(seed, e), verbose=0), np.float32)
            for e in range(epochs)
        ]
        self.seconds = time.perf_counter() - start

    def dataset(self, data: CifarSplits, seed: int, epoch: int) -> Any:
        """The epoch's batches as `({"inputs": x, "teacher_logits": f}, y)`.

        Args:
            data: the data.
            seed: the data seed (the same as at construction).
            epoch: the epoch.

        Returns:
            A tf.data dataset.
        """
        import tensorflow as tf

        images = data.train_epoch(seed, epoch)
        logits = tf.data.Dataset.from_tensor_slices(self.logits[epoch]).batch(data.batch_size)
        return tf.data.Dataset.zip((images, logits)).map(_with_teacher_logits)


def _with_teacher_logits(batch: tuple, logits: Any) -> tuple:
    """`((x, y), f)` -> `({"inputs": x, "teacher_logits": f}, y)` (a named function:
    AutoGraph cannot read the source of a lambda here and warns on every epoch)."""
    x, y = batch
    return with_teacher_logits(x, logits), y


def cache_fits(data: CifarSplits, cfg: dict[str, Any]) -> bool:
    """Whether `--teacher_logits` resolves to the cache."""
    if cfg["pipeline"] == "numpy":
        return False  # the cached batches are assembled with tf.data
    if cfg["teacher_logits"] != "auto":
        return cfg["teacher_logits"] == "cached"
    size = data.steps_per_epoch * data.batch_size * cfg["epochs"] * data.num_classes * 4
    return size <= cfg["logits_cache_mb"] * 2**20


class StudentProgress:
    """A student run's finished epochs on disk, committed after each epoch.

    Each epoch's weights (student, optimizer, policy state) go to a new verified
    file; then `progress.json`, written atomically, names it with the epoch,
    the accuracy curves and the time spent: the commit point. A run killed at
    any moment resumes after its last committed epoch.

    Args:
        folder: the run's folder, or None to keep nothing.
    """

    STATE = "progress.json"

    def __init__(self, folder: Path | None):
        self.folder = folder

    def restore(self, model: keras.Model, sample: Callable[[], Any]) -> dict[str, Any] | None:
        """Loads the last committed epoch into `model`; None when there is none.

        Args:
            model: the compiled model of the run.
            sample: gives one batch of inputs, to build the model and its optimizer.

        Returns:
            The committed state (`epoch`, `curves`, `last_logs`, `seconds`).
        """
        if self.folder is None or not (self.folder / self.STATE).is_file():
            return None
        try:
            state = files.load_json(self.folder / self.STATE)
            files.check_file(self.folder / state["weights"])
        except (files.CorruptFileError, KeyError, TypeError, FileNotFoundError) as error:
            print(f"[resume] {self.folder}: {error}; the student starts over", flush=True)
            return None
        model(sample(), training=False)  # builds the model, then its optimizer
        model.optimizer.build(model.trainable_variables)
        model.load_weights(self.folder / state["weights"])
        print(f"[resume] student continues after epoch {state['epoch']}", flush=True)
        return state

    def commit(self, model: keras.Model, state: dict[str, Any]) -> None:
        """Saves the model after `state["epoch"]` epochs, then the state naming it."""
        if self.folder is None:
            return
        name = f"epoch{state['epoch']:04d}.weights.h5"
        files.save_weights_verified(model, self.folder / name)
        files.atomic_write_json(self.folder / self.STATE, {**state, "weights": name})
        for old in self.folder.glob("epoch*.weights.h5"):
            if old.name != name:
                files.remove_verified(old)

    def clear(self) -> None:
        """Removes the folder (the run's record is in the results file)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def train_student(
    method: str,
    teacher: keras.Model | None,
    cached: TeacherLogits | None,
    data: CifarSplits,
    seed: int,
    cfg: dict[str, Any],
    isats: dict[str, Any],
    eval_splits: Sequence[str] = ("val", "test"),
    tuned: dict[str, Any] | None = None,
    progress: StudentProgress | None = None,
) -> dict[str, Any]:
    """Trains one student and evaluates it along the way.

    Args:
        method: one of `METHODS`.
        teacher: the teacher (None for `ce`).
        cached: the teacher's cached logits for this seed, or None (online).
        data: the data.
        seed: initialisation and data seed.
        cfg: the configuration.
        isats: ISATS settings.
        eval_splits: splits evaluated at each evaluation epoch.
        tuned: this teacher's tuned settings (see `method_setup`).
        progress: where finished epochs are committed (resumed from when present).

    Returns:
        The run record: accuracies per evaluated epoch, last/best, the
        Distiller's last-epoch metrics (`target_first`, ...) and the time.
    """
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    with DtypePolicyScope(cfg["student_dtype_policy"]):
        student = build_teacher(cfg["student"], data.num_classes, weight_decay=cfg["weight_decay"])
    schedule = crd_schedule(cfg["lr"], cfg["epochs"], data.steps_per_epoch)
    optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)
    record: dict[str, Any] = {"method": method, "seed": seed}
    if method == "ce":
        model = student
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=cfg["jit_compile"],
        )
        record["description"] = "cross-entropy only, no teacher"
    else:
        setup = method_setup(method, cfg, isats, tuned)
        policy = setup.pop("policy")
        policy.prepare(teacher, data.eval("train"))
        model = Distiller(teacher, student)
        model.compile(
            optimizer=optimizer,
            policy=policy,
            alpha=setup["alpha"],
            beta=setup["beta"],
            temperature_scaling=setup["temperature_scaling"],
            jit_compile=cfg["jit_compile"],
        )
        record["description"] = setup["description"]
    eval_epochs = {e for e in range(1, cfg["epochs"] + 1) if e % cfg["eval_every"] == 0} | {
        cfg["epochs"]
    }
    curves: dict[str, list[float]] = {split: [] for split in eval_splits}
    record["eval_epochs"] = sorted(eval_epochs)
    last_logs: dict[str, float] = {}
    progress = progress or StudentProgress(None)

    def epoch_data(epoch: int) -> Any:
        if cached is not None and method != "ce":
            return cached.dataset(data, seed, epoch)
        return data.train_epoch(seed, epoch)

    first, spent = 0, 0.0
    state = progress.restore(model, lambda: next(iter(epoch_data(0)))[0])
    if state is not None:
        first, curves, last_logs, spent = (
            state["epoch"],
            state["curves"],
            state["last_logs"],
            state["seconds"],
        )
        record["resumed_after_epoch"] = first
    for epoch in range(first, cfg["epochs"]):
        history = model.fit(
            epoch_data(epoch),
            initial_epoch=epoch,
            epochs=epoch + 1,
            verbose=cfg["verbose"],
        )
        last_logs = {k: float(v[-1]) for k, v in history.history.items()}
        if epoch + 1 in eval_epochs:
            for split in eval_splits:
                curves[split].append(data.accuracy(student, split)[0])
        progress.commit(
            model,
            {
                "epoch": epoch + 1,
                "curves": curves,
                "last_logs": last_logs,
                "seconds": spent + time.perf_counter() - start,
            },
        )
    record["accuracy"] = curves
    for split in eval_splits:
        values = curves[split]
        record[f"{split}_last"] = values[-1]
        record[f"{split}_best"] = max(values)
    if "val" in eval_splits and "test" in eval_splits:
        best_val = int(np.argmax(curves["val"]))
        record["test_at_best_val"] = curves["test"][best_val]
    record["last_epoch_metrics"] = last_logs
    record["seconds"] = spent + time.perf_counter() - start
    record["teacher_logits"] = (
        "cached"
        if cached is not None and method != "ce"
        else ("online" if method != "ce" else None)
    )
    return record


# ------------------------------------------------------------------------- runs
def run_tuning(data: CifarSplits, store: LogitsStore, cfg: dict[str, Any]) -> dict[str, Any]:
    """ISATS from the large teacher over a small grid, scored on the validation split.

    Args:
        data: the data (its validation split must not be empty).
        store: the teachers and their cached logits.
        cfg: the configuration.

    Returns:
        `{"criterion", "mode", "teacher", "trials", "choice"}`; the choice holds
        the settings and their `val_last_mean`.
    """
    record = tune_method("isats", "large", data, store, cfg, isats_from_flags(cfg))
    return {
        "criterion": record["criterion"],
        "mode": cfg["tune_mode"],
        "teacher": "large",
        "trials": record["trials"],
        "choice": {**record["choice"], "val_last_mean": record["val_last_mean"]},
    }


def isats_from_flags(cfg: dict[str, Any]) -> dict[str, Any]:
    """The ISATS settings of the `--isats_*` flags, keyed as `TUNED`."""
    return {key: cfg[f"isats_{key}"] for key in TUNED}


def tuning_trials(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The ISATS settings tried by `--tune`.

    Args:
        cfg: the configuration.

    Returns:
        `sweep`: the `--isats_*` settings, then each factor moved alone to each
        of its other tuning values; `grid`: every combination of the values.
    """
    values = {
        "target_ratio": cfg["tune_target_ratios"],
        "fallback": cfg["tune_fallbacks"],
        "grid": cfg["tune_grids"],
        "student_temperature": cfg["tune_student_temperatures"],
    }
    if cfg["tune_mode"] == "grid":
        return [
            dict(zip(TUNED, combo, strict=True)) for combo in itertools.product(*values.values())
        ]
    base = isats_from_flags(cfg)
    trials = [base]
    for key in TUNED:
        trials += [{**base, key: v} for v in values[key] if v != base[key]]
    return trials


def tuning_candidates(method: str, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The settings a tuned method tries: `method_setup`'s `tuned` dict, or ISATS's settings.

    Args:
        method: `isats` (`--tune`), `kd_tuned`, `ats_tuned` or `isats_margin`.
        cfg: the configuration.

    Returns:
        One dict per candidate, in the order that breaks ties (first wins; ISATS:
        the smaller target ratio first).
    """
    if method == "isats":
        return tuning_trials(cfg)
    if method == "kd_tuned":
        return [{"kd_temperature": t} for t in cfg["tune_kd_temperatures"]]
    if method == "isats_margin":
        return [{"target_margin": kappa} for kappa in cfg["tune_isats_margins"]]
    return [{"ats": list(pair)} for pair in cfg["tune_ats"]]


class LogitsStore:
    """The cached teacher logits of one (teacher role, seed) at a time, computed on demand.

    Args:
        teachers: role -> teacher.
        data: the data.
        cfg: the configuration (`epochs`, and whether the cache fits).
    """

    def __init__(self, teachers: dict[str, keras.Model], data: CifarSplits, cfg: dict[str, Any]):
        self.teachers, self.data, self.epochs = teachers, data, cfg["epochs"]
        self.enabled = cache_fits(data, cfg)
        self.key: tuple[str, int] | None = None
        self.logits: TeacherLogits | None = None

    def get(self, role: str | None, seed: int) -> tuple[TeacherLogits | None, float]:
        """`(cached logits or None, seconds spent computing them now)`."""
        if role is None or not self.enabled:
            return None, 0.0
        if self.key != (role, seed):
            self.logits = TeacherLogits(self.teachers[role], self.data, seed, self.epochs)
            self.key = (role, seed)
            return self.logits, self.logits.seconds
        return self.logits, 0.0


def tune_method(
    method: str,
    role: str,
    data: CifarSplits,
    store: LogitsStore,
    cfg: dict[str, Any],
    isats: dict[str, Any],
) -> dict[str, Any]:
    """Chooses a method's settings for one teacher on the validation split.

    Every candidate of `tuning_candidates` is trained on each tuning seed; the
    one with the best mean last-epoch validation accuracy wins (ties: see
    `TIE_BREAKS`).

    Args:
        method: `isats` (its settings, `--tune`), `kd_tuned`, `ats_tuned` or
            `isats_margin`.
        role: the teacher's role.
        data: the data (its validation split must not be empty).
        store: cached teacher logits.
        cfg: the configuration (`tune_seeds`, the candidates).
        isats: the run's ISATS settings (isats_margin's search, fallback and
            student temperature; unused by the others).

    Returns:
        `{"method", "teacher", "criterion", "trials", "choice", "val_last_mean"}`.
    """
    if data.sizes()["val"] == 0:
        what = "--tune" if method == "isats" else method
        raise app.UsageError(f"{what} needs a validation split: set --val_per_class > 0.")
    candidates = tuning_candidates(method, cfg)
    fields = TRIAL_FIELDS.get(method, ("val_last", "seconds"))
    trials = []
    for seed in cfg["tune_seeds"]:
        cached, _ = store.get(role, seed)
        for candidate in candidates:
            print(f"[tune {method} <- {role}] seed {seed} {candidate}", flush=True)
            settings = candidate if method == "isats" else isats
            run = train_student(
                method, store.teachers[role], cached, data, seed, cfg, settings, ("val",), candidate
            )
            trials.append({**candidate, "seed": seed, **{k: run[k] for k in fields}})
    means = [
        statistics.mean(t["val_last"] for t in trials if _same_setting(t, c)) for c in candidates
    ]
    tie_break, rule = TIE_BREAKS.get(method, (lambda c: 0.0, "the earlier candidate"))
    best = min(range(len(candidates)), key=lambda i: (-means[i], tie_break(candidates[i]), i))
    print(f"[tune {method} <- {role}] choice {candidates[best]}", flush=True)
    return {
        "method": method,
        "teacher": role,
        "criterion": f"mean last-epoch validation accuracy (ties: {rule})",
        "trials": trials,
        "choice": candidates[best],
        "val_last_mean": means[best],
    }


def _same_setting(trial: dict[str, Any], candidate: dict[str, Any]) -> bool:
    return all(trial[k] == v for k, v in candidate.items())


def t_quantile(confidence: float, dof: int) -> float:
    """The two-sided Student-t critical value (SciPy, a `dev` dependency)."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, dof))


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict[str, Any] | None:
    """Mean of `a - b` over the seeds both have, with its 95% t-interval.

    Args:
        a: seed -> accuracy of one method.
        b: seed -> accuracy of the reference.

    Returns:
        `{"n", "mean", "std", "ci95", "excludes_zero"}`, or None below two
        common seeds.
    """
    seeds = sorted(a.keys() & b.keys())
    if len(seeds) < 2:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    mean, std = statistics.mean(diffs), statistics.stdev(diffs)
    half = t_quantile(0.95, len(diffs) - 1) * std / math.sqrt(len(diffs))
    low, high = mean - half, mean + half
    return {
        "seeds": seeds,
        "n": len(seeds),
        "mean": mean,
        "std": std,
        "ci95": [low, high],
        "excludes_zero": bool(low > 0 or high < 0),
    }


def paired_table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per teacher, every method's paired test difference to the best KD variant.

    The best KD variant of a teacher (`kd` or `kd_tuned`, any method whose
    name starts with `kd`) is the one with the higher mean last-epoch
    *validation* accuracy: chosen without the test split.

    Args:
        runs: the run records.

    Returns:
        Rows `{"teacher", "method", "reference", ...paired_difference}`.
    """
    by_cell: dict[tuple, dict[int, dict]] = {}
    for run in runs:
        by_cell.setdefault((run["teacher"], run["method"]), {})[run["seed"]] = run
    rows = []
    for role in dict.fromkeys(r for r, _ in by_cell if r is not None):
        kd_cells = {m: c for (r, m), c in by_cell.items() if r == role and m.startswith("kd")}
        if not kd_cells:
            continue
        reference = max(
            kd_cells, key=lambda m: statistics.mean(_values(kd_cells[m], "val_last") or [-1.0])
        )
        ref_test = {s: r["test_last"] for s, r in kd_cells[reference].items()}
        for (r, method), cell in by_cell.items():
            if r != role or method == reference:
                continue
            diff = paired_difference({s: x["test_last"] for s, x in cell.items()}, ref_test)
            if diff is not None:
                rows.append({"teacher": role, "method": method, "reference": reference, **diff})
    return rows


def _values(cell: dict[int, dict], key: str) -> list[float]:
    return [r[key] for r in cell.values() if r.get(key) is not None and not math.isnan(r[key])]


def plan(cfg: dict[str, Any]) -> list[tuple[str, str | None]]:
    """The `(method, teacher role)` runs of one seed, in order.

    Args:
        cfg: the configuration.

    Returns:
        A list of pairs (role None for `ce`).
    """
    runs: list[tuple[str, str | None]] = []
    if "ce" in cfg["methods"]:
        runs.append(("ce", None))
    for role in cfg["teacher_roles"]:
        chosen = cfg["small_methods"] if role == "small" else cfg["methods"]
        runs += [(m, role) for m in TEACHER_METHODS + EXTRA_METHODS if m in chosen]
    if "regt_kd" in cfg["methods"]:
        runs.append(("regt_kd", "large_regt"))
    return runs


def summarize_runs(runs: list[dict[str, Any]], teachers: dict[str, dict]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per (teacher, method).

    Args:
        runs: the run records.
        teachers: role -> teacher report (for the model names).

    Returns:
        One row per (teacher, method), in run order.
    """
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["teacher"], run["method"]), []).append(run)
    rows = []
    for (role, method), items in groups.items():
        row = {
            "teacher": role,
            "teacher_model": teachers[role]["model"] if role else None,
            "method": method,
            "seeds": [r["seed"] for r in items],
        }
        for key in ("test_last", "test_best", "test_at_best_val", "val_last"):
            values = [r[key] for r in items if r.get(key) is not None and not math.isnan(r[key])]
            row[f"{key}_mean"] = statistics.mean(values) if values else None
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        first = [r["last_epoch_metrics"].get("target_first") for r in items]
        first = [f for f in first if f is not None]
        row["target_first"] = statistics.mean(first) if first else None
        rows.append(row)
    return rows


def _seed_values(runs: list[dict[str, Any]], role: str, method: str) -> dict[int, float]:
    return {
        r["seed"]: r["test_last"] for r in runs if (r["teacher"], r["method"]) == (role, method)
    }


def regime_check(
    table: list[dict[str, Any]],
    teachers: dict[str, dict],
    role: str = "large",
    runs: Sequence[dict[str, Any]] = (),
) -> dict[str, Any] | None:
    """Whether the run shows capacity mismatch: a more accurate large teacher
    whose plain-KD student is no better than the small teacher's.

    Args:
        table: `summarize_runs` rows.
        teachers: role -> teacher report.
        role: the large teacher's role (`large` or `large_flat`).
        runs: the run records (for the seed-paired difference and its interval).

    Returns:
        The comparison (`holds`, the two KD means and stds, the difference, its
        seed-paired 95% interval and a message), or None when either KD row or
        teacher is missing.
    """
    kd = {r["teacher"]: r for r in table if r["method"] == "kd"}
    if not {"small", role} <= kd.keys() or not {"small", role} <= teachers.keys():
        return None
    small, large = kd["small"], kd[role]
    paired = paired_difference(*(_seed_values(runs, r, "kd") for r in (role, "small")))
    more_accurate = teachers[role]["test_accuracy"] > teachers["small"]["test_accuracy"]
    difference = large["test_last_mean"] - small["test_last_mean"]
    no_better = difference <= 0.0
    holds = more_accurate and no_better
    return {
        "holds": holds,
        "large_teacher_more_accurate": more_accurate,
        "kd_large_no_better": no_better,
        "kd_small_test_last": [small["test_last_mean"], small["test_last_std"]],
        "kd_large_test_last": [large["test_last_mean"], large["test_last_std"]],
        "kd_large_minus_small": difference,
        "kd_large_minus_small_paired": paired,
        "message": (
            f"Regime {'shown' if holds else 'NOT shown'} ({role}): large teacher "
            f"{'more' if more_accurate else 'not more'} accurate "
            f"({100 * teachers[role]['test_accuracy']:.2f}% vs "
            f"{100 * teachers['small']['test_accuracy']:.2f}%); plain-KD student from it "
            f"{_pct(large['test_last_mean'], large['test_last_std'])} vs "
            f"{_pct(small['test_last_mean'], small['test_last_std'])} from the small one "
            f"({100 * difference:+.2f} points"
            + (
                f", seed-paired 95% CI [{100 * paired['ci95'][0]:+.2f}, "
                f"{100 * paired['ci95'][1]:+.2f}]"
                if paired
                else ""
            )
            + ")."
        ),
    }


def teacher_check(reports: dict[str, dict], role: str, temperature: float) -> dict[str, Any] | None:
    """The teachers' side of the regime: is the large teacher flatter and more accurate?

    Args:
        reports: role -> teacher report.
        role: the large teacher's role (`large` or `large_flat`).
        temperature: the T of the non-target variance.

    Returns:
        `large_flatter`, `large_more_accurate` and a message, or None when
        either teacher is missing.
    """
    if "small" not in reports or role not in reports:
        return None
    small, large = reports["small"], reports[role]
    flatter = large["non_target_variance_T"] < small["non_target_variance_T"]
    more_accurate = large["test_accuracy"] > small["test_accuracy"]
    spearman = large.get("spearman_vs_small")
    alike = spearman is not None and spearman >= SPEARMAN_MIN
    return {
        "large_flatter": flatter,
        "large_more_accurate": more_accurate,
        "spearman_vs_small": spearman,
        "spearman_at_least_min": alike,
        "spearman_min": SPEARMAN_MIN,
        "teachers_in_regime": flatter and more_accurate and alike,
        "message": (
            f"Check ({role}): large teacher's non-target variance at T={temperature:g} "
            f"{'<' if flatter else '>='} small's ({large['non_target_variance_T']:.3e} vs "
            f"{small['non_target_variance_T']:.3e}); large teacher "
            f"{'more' if more_accurate else 'not more'} accurate on test "
            f"({100 * large['test_accuracy']:.2f}% vs {100 * small['test_accuracy']:.2f}%); "
            f"Spearman vs small {_number(spearman, '.3f')} "
            f"({'>=' if alike else '<'} {SPEARMAN_MIN})."
        ),
    }


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _pct(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.2f} ± {100 * (std or 0.0):.2f}"


def tables(results: dict[str, Any]) -> str:
    """Markdown tables: teachers, then student accuracy per teacher and method.

    Args:
        results: the JSON record.

    Returns:
        The markdown text.
    """
    env, cfg = results["environment"], results["config"]
    parts = [
        f"Backend {env['backend']}, device {env['device']}; student {cfg['student']}, "
        f"{results['data']['train']} train / {results['data']['val']} val / "
        f"{results['data']['test']} test images, {cfg['epochs']} student epochs, "
        f"seeds {cfg['seeds']}.",
        "",
    ]
    rows = []
    for role, t in results["teachers"].items():
        rows.append(
            [
                role,
                t["model"],
                f"{t['params']:,}",
                f"{100 * t['train_accuracy']:.2f}",
                f"{100 * t['test_accuracy']:.2f}",
                f"{t['non_target_variance_T']:.3e}",
                f"{100 * t['target_first']:.2f}",
                _number(t.get("tau_star_median"), ".2f"),
                _number(t.get("spearman_vs_small"), ".3f"),
            ]
        )
    parts.append(
        _common.markdown_table(
            [
                "teacher",
                "model",
                "params",
                "train acc %",
                "test acc %",
                f"non-target var (T={cfg['temperature']:g})",
                "target first %",
                "tau* median",
                "Spearman vs small",
            ],
            rows,
        )
    )
    if results.get("mismatch_check"):
        parts.append("")
        parts += [check["message"] for check in results["mismatch_check"].values()]
    if results.get("tuning"):
        parts.append("")
        parts.append(f"ISATS tuning choice: {results['tuning']['choice']}")
    for method, per_role in (results.get("tuned_methods") or {}).items():
        for role, record in per_role.items():
            parts.append(
                f"{method} <- {role}: choice {record['choice']} (validation "
                f"{100 * record['val_last_mean']:.2f}%, {len(record['trials'])} trials)"
            )
    rows = []
    for r in results["table"]:
        teacher = "-" if r["teacher"] is None else f"{r['teacher']} ({r['teacher_model']})"
        first = "-" if r["target_first"] is None else f"{100 * r['target_first']:.1f}"
        rows.append(
            [
                teacher,
                r["method"],
                len(r["seeds"]),
                _pct(r["test_last_mean"], r["test_last_std"]),
                _pct(r["test_best_mean"], r["test_best_std"]),
                _pct(r["test_at_best_val_mean"], r["test_at_best_val_std"]),
                first,
            ]
        )
    if not rows:  # --teachers_only
        return "\n".join(parts)
    parts.append("")
    parts.append(
        _common.markdown_table(
            [
                "teacher",
                "method",
                "seeds",
                "test acc % last",
                "test acc % best",
                "test at best val",
                "target first % (last epoch)",
            ],
            rows,
        )
    )
    if results.get("paired"):
        parts.append("")
        parts.append(
            _common.markdown_table(
                ["teacher", "method", "minus (best KD on val)", "seeds", "mean diff", "95% CI"],
                [
                    [
                        p["teacher"],
                        p["method"],
                        p["reference"],
                        p["n"],
                        f"{100 * p['mean']:+.2f}",
                        f"[{100 * p['ci95'][0]:+.2f}, {100 * p['ci95'][1]:+.2f}]"
                        + (" *" if p["excludes_zero"] else ""),
                    ]
                    for p in results["paired"]
                ],
            )
        )
        parts.append("(test accuracy points, seeds paired; * the interval excludes 0)")
    if results.get("regime"):
        parts.append("")
        parts += [check["message"] for check in results["regime"].values()]
    return "\n".join(parts)


def resume_state(cfg: dict[str, Any]) -> dict[str, Any]:
    """The finished tuning and runs of an earlier, unfinished run with the same settings.

    Args:
        cfg: the configuration (`output`, `resume`).

    Returns:
        `{"tuning", "tuned", "runs"}` from the results file at `cfg["output"]`
        when `--resume` is on and its settings match (all but `RESUME_IGNORED`);
        empty values otherwise.
    """
    empty = {"tuning": None, "tuned": {}, "runs": [], "teachers": {}}
    path = Path(cfg["output"])
    if not cfg["resume"] or not path.is_file():
        return empty
    try:
        previous = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise app.UsageError(
            f"{path} is not valid JSON ({error}): a results file cut short? Move it away, or "
            "pass --noresume to start over."
        ) from None
    if _resume_key(previous.get("config", {})) != _resume_key(cfg):
        raise app.UsageError(
            f"{path} holds results of other settings ({_resume_difference(previous, cfg)}): "
            "pass --noresume to replace them, or another --tag / --output to keep them."
        )
    state = {
        "tuning": previous.get("tuning"),
        "tuned": previous.get("tuned_methods") or {},
        "runs": previous.get("runs") or [],
        "teachers": previous.get("teachers") or {},
    }
    print(
        f"[resume] {path}: {len(state['runs'])} finished student runs kept"
        + (", ISATS tuning kept" if state["tuning"] else ""),
        flush=True,
    )
    return state


#: teacher statistics that identify the teacher a result was distilled from.
TEACHER_IDENTITY = ("train_accuracy", "val_accuracy", "test_accuracy", "non_target_variance_T")


def check_same_teachers(
    recorded: dict[str, dict], reports: dict[str, dict], runs: list[dict[str, Any]], path: str
) -> None:
    """Refuses to add runs to a results file whose teachers were other models.

    A cached teacher trained again with the same settings is not the same
    teacher (training on a CPU is not bit-reproducible), so runs distilled
    from the two must not be compared as pairs.

    Args:
        recorded: the results file's `teachers` reports.
        reports: this run's teacher reports.
        runs: the file's finished runs.
        path: the results file, for the message.

    Raises:
        UsageError: a teacher with finished runs measures differently now.
    """
    used = {r["teacher"] for r in runs if r.get("teacher")}
    for role in sorted(used & set(reports)):
        old, new = recorded.get(role, {}), reports[role]
        for key in TEACHER_IDENTITY:
            if key in old and not math.isclose(old[key], new[key], rel_tol=1e-5, abs_tol=1e-7):
                raise app.UsageError(
                    f"the {role} teacher ({new.get('path')}) is not the one the runs in {path} "
                    f"were distilled from ({key} {new[key]:.6g} now, {old[key]:.6g} recorded): "
                    "it was trained again, and a retrained teacher differs. Pass --noresume to "
                    "start over with this teacher, or another --tag to keep those results."
                )


def _untuned_twin(
    method: str,
    settings: dict[str, Any],
    cfg: dict[str, Any],
    role: str,
    seed: int,
    runs: list[dict[str, Any]],
) -> dict[str, Any] | None:
    """The finished run of the untuned method when tuning chose its very settings.

    `kd_tuned` at the `--temperature` of `kd` (or `ats_tuned` at the official
    tau1 4, tau2 2) is the same run as `kd` (`ats`): same teacher, seed and
    settings give the same numbers, so that run is reused, not repeated.
    """
    same = {
        "kd_tuned": ("kd", settings.get("kd_temperature") == cfg["temperature"]),
        "ats_tuned": ("ats", settings.get("ats") == [4.0, 2.0]),
    }
    twin, identical = same.get(method, (None, False))
    if not identical:
        return None
    return next(
        (r for r in runs if (r["teacher"], r["method"], r["seed"]) == (role, twin, seed)), None
    )


def student_folder(
    cfg: dict[str, Any], role: str | None, method: str, seed: int, settings: Any
) -> Path:
    """The folder of one student run's committed epochs, keyed by all that changes it.

    Args:
        cfg: the configuration.
        role: the teacher's role (None for `ce`).
        method: the method.
        seed: the seed.
        settings: the method's chosen settings (ISATS's, or a tuned method's).

    Returns:
        `<cache_dir>/students/<method>-<seed>-<digest>`.
    """
    key = json.dumps([_resume_key(cfg), role, method, seed, _common.jsonable(settings)])
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return Path(cfg["cache_dir"]) / "students" / f"{method}-{seed}-{digest}"


def _resume_difference(previous: dict[str, Any], cfg: dict[str, Any]) -> str:
    """The settings of a results file's resume key that differ from this run's."""
    old, new = (json.loads(_resume_key(c)) for c in (previous.get("config", {}), cfg))
    return settings_difference(old, new, prefix="--")


def _resume_key(cfg: dict[str, Any]) -> str:
    kept = {
        k: v
        for k, v in cfg.items()
        if k not in RESUME_IGNORED
        and not (k in RESUME_NEW_DEFAULTS and _common.jsonable(v) == RESUME_NEW_DEFAULTS[k])
    }
    return json.dumps(_common.jsonable(kept), sort_keys=True)


def run_benchmark(cfg: dict[str, Any]) -> dict[str, Any]:
    """Runs the protocol and writes the JSON; resumes an unfinished results file.

    Args:
        cfg: the configuration (`config_from_flags`).

    Returns:
        The results (also written to `cfg["output"]`).
    """
    start = time.perf_counter()
    environment = _common.environment_with_threads(cfg["threads"])
    if cfg["backend_jax_cache"]:
        _enable_jax_cache(Path(cfg["cache_dir"]) / "jax_cache")
    data = CifarSplits.from_npz(
        cfg["data_dir"],
        cfg["per_class"],
        val_per_class=cfg["val_per_class"],
        test_per_class=cfg["test_per_class"],
        batch_size=cfg["batch_size"],
        pipeline=cfg["pipeline"],
        classes=cfg["classes"],
    )
    state = resume_state(cfg)
    roles = ["small", "large"] if any(m != "ce" for m in cfg["methods"]) or cfg["tune"] else []
    if "large_flat" in cfg["teacher_roles"]:
        roles.append("large_flat")
    if "regt_kd" in cfg["methods"]:
        roles.append("large_regt")
    teachers, reports, timings = {}, {}, {}
    small_logits = None
    for role in roles:  # `small` first
        model, info = get_teacher(role, data, cfg)
        teachers[role] = model
        report, logits = teacher_report(model, data, cfg, small_logits)
        if role == "small":
            small_logits = logits
        reports[role] = {"model": teacher_key(role, cfg)["model"], **info, **report}
    timings["teachers_seconds"] = time.perf_counter() - start
    check_same_teachers(state["teachers"], reports, state["runs"], cfg["output"])
    mismatch = {}
    for role in LARGE_ROLES:
        check = teacher_check(reports, role, cfg["temperature"])
        if check:
            mismatch[role] = check
            print(check["message"], flush=True)
    isats = isats_from_flags(cfg)
    tuning = state["tuning"]
    tuned: dict[str, dict[str, Any]] = state["tuned"]  # method -> role -> record
    runs: list[dict[str, Any]] = state["runs"]
    done = {(r["teacher"], r["method"], r["seed"]) for r in runs}

    def assemble(complete: bool) -> dict[str, Any]:
        table = summarize_runs(runs, reports)
        return {
            "benchmark": "capacity_mismatch",
            "complete": complete,
            "command": " ".join(cfg["argv"]),
            "environment": environment,
            "config": {k: v for k, v in cfg.items() if k != "argv"},
            "data": data.sizes(),
            "isats_settings": isats,
            "teachers": reports,
            "mismatch_check": mismatch,
            "tuning": tuning,
            "tuned_methods": tuned,
            "runs": runs,
            "table": table,
            "paired": paired_table(runs),
            "regime": {
                role: check
                for role in LARGE_ROLES
                if (check := regime_check(table, reports, role, runs)) is not None
            },
            "timings": {**timings, "total_seconds": time.perf_counter() - start},
            "load_average_end": _common.load_average(),
        }

    def finish(run: dict[str, Any]) -> None:
        """Records a finished run; the results file after every run lets a cut run resume."""
        runs.append(run)
        done.add((run["teacher"], run["method"], run["seed"]))
        _common.write_json(cfg["output"], assemble(complete=False))

    store = LogitsStore(teachers, data, cfg)
    if cfg["tune"] and not cfg["teachers_only"]:
        if tuning is None:
            phase = time.perf_counter()
            tuning = run_tuning(data, store, cfg)
            timings["tuning_seconds"] = time.perf_counter() - phase
            _common.write_json(cfg["output"], assemble(complete=False))
        isats = {k: tuning["choice"][k] for k in TUNED}
    if not (cfg["tune_only"] or cfg["teachers_only"]):
        for seed in cfg["seeds"]:
            for method, role in plan(cfg):
                if (role, method, seed) in done:
                    continue
                settings = None
                if method in TUNED_METHODS:
                    if role not in tuned.get(method, {}):
                        phase = time.perf_counter()
                        record = tune_method(method, role, data, store, cfg, isats)
                        tuned.setdefault(method, {})[role] = record
                        key = f"tuning_{method}_seconds"
                        timings[key] = timings.get(key, 0.0) + time.perf_counter() - phase
                        _common.write_json(cfg["output"], assemble(complete=False))
                    settings = tuned[method][role]["choice"]
                    twin = _untuned_twin(method, settings, cfg, role, seed, runs)
                    if twin is not None:  # the same settings, seed and teacher: the same run
                        print(
                            f"[student seed {seed}] {method} <- {role}: tuned to the "
                            f"{twin['method']} settings, its run reused",
                            flush=True,
                        )
                        finish({**twin, "method": method, "same_run_as": twin["method"]})
                        continue
                cached, logits_seconds = store.get(role if method != "ce" else None, seed)
                label = f"{method}" + (f" <- {role}" if role else "")
                print(f"[student seed {seed}] {label}", flush=True)
                splits = ("val", "test") if data.sizes()["val"] else ("test",)
                folder_settings = {
                    "isats": isats,
                    "isats_margin": {**isats, **(settings or {})},
                }.get(method, settings)
                progress = StudentProgress(student_folder(cfg, role, method, seed, folder_settings))
                run = train_student(
                    method,
                    teachers.get(role),
                    cached,
                    data,
                    seed,
                    cfg,
                    isats,
                    splits,
                    settings,
                    progress,
                )
                run["teacher"] = role
                run["logits_seconds"] = logits_seconds
                print(
                    f"    test last {100 * run['test_last']:.2f}  best "
                    f"{100 * run['test_best']:.2f}  ({run['seconds']:.0f} s)",
                    flush=True,
                )
                finish(run)
                progress.clear()
    results = assemble(complete=True)
    text = tables(results)
    results["markdown"] = text
    print(text)
    path = _common.write_json(cfg["output"], results)
    print(f"[capacity_mismatch] wrote {path}")
    return results


def _enable_jax_cache(folder: Path) -> None:
    """Persistent XLA compilation cache on JAX: every seed reuses the first one's compiles."""
    if keras.backend.backend() != "jax":
        return
    import jax

    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _student_temperature(text: str) -> str | float:
    """`tau` or a positive number (the ISATS student temperature flags)."""
    if str(text).strip() == "tau":
        return "tau"
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise app.UsageError(f"student temperature {text!r}: use `tau` or a positive number.")
    return value


def _pipeline(name: str) -> str:
    """`--pipeline`, with `auto` resolved (see `keras_kdcap.data.resolve_pipeline`)."""
    try:
        return resolve_pipeline(name)
    except ValueError as error:
        raise app.UsageError(f"--{error}") from None


def _numbers(kind: type) -> Any:
    """A parser of a comma list of `kind` numbers for the flag `name`."""

    def parse(text: str, name: str) -> list:
        try:
            return [kind(v) for v in _common.parse_list(text)]
        except ValueError:
            noun = "integers" if kind is int else "numbers"
            raise app.UsageError(f"--{name} must be a comma list of {noun}.") from None

    return parse


def _pairs(text: str, name: str) -> list[list[float]]:
    try:
        pairs = [[float(v) for v in item.split(":")] for item in _common.parse_list(text)]
    except ValueError:
        pairs = [[]]
    if any(len(p) != 2 for p in pairs):
        raise app.UsageError(f"--{name} must be a comma list of tau1:tau2 pairs, e.g. 4:2,2:1.")
    return pairs


#: flags whose value is parsed before it enters the run configuration: name -> parse(text, name).
FLAG_PARSERS = {
    "seeds": _numbers(int),
    "tune_seeds": _numbers(int),
    "tune_target_ratios": _numbers(float),
    "tune_fallbacks": _numbers(float),
    "tune_kd_temperatures": _numbers(float),
    "tune_isats_margins": _numbers(float),
    "tune_ats": _pairs,
    "teacher_roles": lambda text, name: _common.parse_list(text),
    "tune_grids": lambda text, name: _common.parse_list(text),
    "isats_student_temperature": lambda text, name: _student_temperature(text),
    "tune_student_temperatures": lambda text, name: [
        _student_temperature(v) for v in _common.parse_list(text)
    ],
    "jit_compile": lambda text, name: {"auto": "auto", "true": True, "false": False}[text],
    "pipeline": lambda text, name: _pipeline(text),
}


def config_from_flags(argv: Sequence[str]) -> dict[str, Any]:
    """The run configuration from the parsed flags (`--smoke` overrides the sizes).

    Every flag but `--tag` and `--output` is a setting, parsed by `FLAG_PARSERS`.

    Args:
        argv: the command line (recorded).

    Returns:
        A dict of settings.
    """
    backend = keras.backend.backend()
    methods = _common.parse_list(FLAGS.methods)
    unknown = [m for m in methods if m not in METHODS + EXTRA_METHODS]
    if unknown or not methods:
        raise app.UsageError(
            f"--methods: unknown {unknown}; choose from {METHODS + EXTRA_METHODS}."
        )
    small_methods = _common.parse_list(FLAGS.small_methods or "")
    unknown = [m for m in small_methods if m not in methods]
    if unknown:
        raise app.UsageError(f"--small_methods: {unknown} are not in --methods.")
    cfg: dict[str, Any] = {"argv": list(argv), "backend_jax_cache": True}
    for name in FLAGS:
        if name not in ("tag", "output"):
            value = FLAGS[name].value
            cfg[name] = FLAG_PARSERS[name](value, name) if name in FLAG_PARSERS else value
    cfg["methods"] = methods
    cfg["small_methods"] = methods if FLAGS.small_methods is None else small_methods
    cfg["tune"] = FLAGS.tune or FLAGS.tune_only
    if FLAGS.smoke:
        cfg.update(SMOKE)
        cfg["cache_dir"] = str(Path(FLAGS.cache_dir) / "smoke")
    for grid in [cfg["isats_grid"], *cfg["tune_grids"]]:
        parse_grid(grid)
    _common.check_at_least_one(
        cfg, ("per_class", "teacher_epochs", "epochs", "batch_size", "eval_every")
    )
    if not cfg["seeds"]:
        raise app.UsageError("--seeds is empty.")
    if not 6 <= cfg["classes"] <= NUM_CLASSES:  # the rank agreement's top-5 overlap needs 6
        raise app.UsageError(f"--classes must lie in [6, {NUM_CLASSES}]; got {cfg['classes']}.")
    if not cfg["tune_seeds"]:
        raise app.UsageError("--tune_seeds is empty.")
    for name in ("tune_kd_temperatures", "tune_ats"):
        values = np.asarray(cfg[name], dtype=float)
        if values.size == 0 or not np.all(values > 0):
            raise app.UsageError(f"--{name} needs at least one value, all > 0.")
    margins = cfg["tune_isats_margins"]
    if not margins or not all(0.0 <= kappa <= 1.0 for kappa in margins):
        raise app.UsageError(
            f"--tune_isats_margins needs at least one value, all in [0, 1]; got {margins}."
        )
    unknown = [r for r in cfg["teacher_roles"] if r not in TEACHER_ROLES]
    if unknown or not cfg["teacher_roles"]:
        raise app.UsageError(f"--teacher_roles: unknown {unknown}; choose from {TEACHER_ROLES}.")
    if not 0.0 <= cfg["flat_label_smoothing"] <= 1.0:
        raise app.UsageError("--flat_label_smoothing must lie in [0, 1].")
    if "large_flat" in cfg["teacher_roles"] and cfg["flat_label_smoothing"] == 0.0:
        raise app.UsageError(
            "--teacher_roles=large_flat needs --flat_label_smoothing > 0 (e.g. 0.2)."
        )
    tag = FLAGS.tag or (f"smoke_{backend}" if FLAGS.smoke else backend)
    cfg["tag"] = tag
    cfg["output"] = FLAGS.output or str(_common.RESULTS_DIR / f"capacity_mismatch_{tag}.json")
    return cfg


#: `main(argv)` -> the results dict (also written to JSON), e.g.
#: `main(["capacity_mismatch", "--smoke"])`.
main = _common.benchmark_main(FLAGS, config_from_flags, run_benchmark)


if __name__ == "__main__":
    _common.run_as_script(FLAGS, main)
