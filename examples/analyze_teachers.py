"""Reproduce the paper's dark-knowledge observations on a ladder of CIFAR-100 teachers.

Trains (or loads from the cache) one teacher per zoo model, evaluates them on
the test split and measures what the paper observes as capacity grows:
non-target distinctness per temperature (variance, std, derived average),
the ISATS temperature tau*, relative class affinity between every pair of
teachers (Spearman, Kendall tau-b, top-k overlap) and feature geometry
(intra- / inter-class angles). Writes `results.json` and PNG figures to
`--output_dir` and prints a summary table.

    python examples/analyze_teachers.py --smoke            # a minute or two on a CPU
    python examples/analyze_teachers.py --models=resnet8,resnet20,resnet56,resnet110

Trained teachers are cached in `<output_dir>/teachers/<model>-<config hash>/teacher.keras`,
so a rerun with the same training flags only re-does the analysis, and an
interrupted training resumes from the same folder (`keras_kdcap.training`).
Runs on every Keras backend (set KERAS_BACKEND).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from absl import app, flags

from keras_kdcap import analysis, files
from keras_kdcap.models import get_model

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = os.environ.get("KDCAP_CIFAR100_DIR") or str(
    REPO.parent / "shared" / "data" / "cifar100"
)
DEFAULT_OUTPUT_DIR = str(REPO / "docs" / "analysis")
DEFAULT_MODELS = "resnet8,resnet14,resnet20,resnet32,resnet56,resnet110"
SMOKE_MODELS = "resnet8,resnet14"
CIFAR100_MEAN = np.array([0.5071, 0.4865, 0.4409], dtype=np.float32)
CIFAR100_STD = np.array([0.2673, 0.2564, 0.2762], dtype=np.float32)
NUM_CLASSES = 100
GEOMETRY_COLUMNS = (
    ("intra_class_angle", 7),
    ("inter_class_angle", 7),
    ("inter_class_weight_angle", 8),
)
TAU_SEARCH = {"min_temperature": 0.5, "max_temperature": 20.0, "num_candidates": 32}

# Flags live in their own FlagValues so that importing this module (tests do)
# never clashes with flags other examples define in absl's global FLAGS.
FLAGS = flags.FlagValues()
flags.DEFINE_string(
    "data_dir", DEFAULT_DATA_DIR, "Folder with train.npz / test.npz.", flag_values=FLAGS
)
flags.DEFINE_string(
    "models", DEFAULT_MODELS, "Comma list of zoo names, growing capacity.", flag_values=FLAGS
)
flags.DEFINE_integer("per_class", 500, "Training images per class (500 = all).", flag_values=FLAGS)
flags.DEFINE_integer("eval_per_class", 0, "Test images per class (0 = all 100).", flag_values=FLAGS)
flags.DEFINE_integer("epochs", 240, "Teacher training epochs.", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 64, "Training batch size.", flag_values=FLAGS)
flags.DEFINE_float("learning_rate", 0.05, "Peak SGD learning rate.", flag_values=FLAGS)
flags.DEFINE_float(
    "weight_decay",
    5e-4,
    "PyTorch-style (coupled) weight decay, the CRD recipe's 5e-4: an L2 penalty "
    "weight_decay/2 * w^2 on every trainable variable (keras_kdcap.training).",
    flag_values=FLAGS,
)
flags.DEFINE_bool("augment", True, "Random crop (pad 4) and horizontal flip.", flag_values=FLAGS)
flags.DEFINE_string(
    "temperatures", "1,2,3,4,6,8", "Temperatures of the non-target statistics.", flag_values=FLAGS
)
flags.DEFINE_string(
    "dtype_policy",
    "float32",
    "Keras dtype policy for training, e.g. mixed_bfloat16.",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "output_dir",
    DEFAULT_OUTPUT_DIR,
    "Where results.json, figures and teachers/ go.",
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "seed", 0, "Random seed (data subset, augmentation, initialisation).", flag_values=FLAGS
)
flags.DEFINE_integer("verbose", 2, "Keras fit verbosity (0, 1, 2).", flag_values=FLAGS)
flags.DEFINE_bool(
    "smoke",
    False,
    f"Tiny run: {SMOKE_MODELS}, 20 images/class, 1 epoch, 20 test images/class, "
    "written to <output_dir>/smoke.",
    flag_values=FLAGS,
)


# --- data -------------------------------------------------------------------------


def load_split(data_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads one split of the offline CIFAR-100 copy.

    Args:
        data_dir: folder with `train.npz` and `test.npz` (`images` uint8 NHWC,
            `labels`).
        split: `"train"` or `"test"`.

    Returns:
        `(images uint8 [N, 32, 32, 3], labels int64 [N])`.
    """
    path = Path(data_dir) / f"{split}.npz"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: pass --data_dir=<folder with train.npz and test.npz> "
            "or set KDCAP_CIFAR100_DIR."
        )
    with np.load(path) as data:
        return data["images"], data["labels"].astype(np.int64).reshape(-1)


def per_class_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of `per_class` random samples of every class (all when 0 or too many).

    Args:
        labels: int `[N]` labels.
        per_class: samples per class; 0 keeps everything.
        seed: selection seed.

    Returns:
        Sorted int `[M]` indices.
    """
    if per_class <= 0:
        return np.arange(len(labels))
    order = np.random.default_rng(seed).permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]
    rank_in_class = np.arange(len(order)) - np.searchsorted(labels[order], labels[order])
    return np.sort(order[rank_in_class < per_class])


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC images -> float32, standardised with the CIFAR-100 mean and std."""
    return ((images.astype(np.float32) / 255.0) - CIFAR100_MEAN) / CIFAR100_STD


def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random 32x32 crop of the zero-padded (4 px) image and random horizontal flip.

    Args:
        images: uint8 `[B, H, W, 3]`.
        rng: random generator.

    Returns:
        uint8 `[B, H, W, 3]`.
    """
    b, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    top = rng.integers(0, 9, size=b)
    left = rng.integers(0, 9, size=b)
    rows = (top[:, None] + np.arange(h))[:, :, None]
    cols = (left[:, None] + np.arange(w))[:, None, :]
    crops = padded[np.arange(b)[:, None, None], rows, cols]
    flip = rng.random(b) < 0.5
    crops[flip] = crops[flip, :, ::-1]
    return crops


class TrainBatches(keras.utils.PyDataset):
    """Shuffled, augmented, normalised training batches, seeded per epoch and batch."""

    def __init__(self, images, labels, batch_size: int, seed: int, augmentation: bool):
        super().__init__()
        self.images, self.labels = images, labels
        self.batch_size = min(batch_size, len(labels))
        self.seed, self.augmentation = seed, augmentation
        self.epoch = 0
        self._shuffle()

    def _shuffle(self):
        self.order = np.random.default_rng((self.seed, self.epoch)).permutation(len(self.labels))

    def __len__(self) -> int:
        # Whole batches only: no tiny last batch for BatchNorm, one shape for XLA.
        return len(self.labels) // self.batch_size

    def __getitem__(self, index: int):
        ids = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        images = self.images[ids]
        if self.augmentation:
            images = augment(images, np.random.default_rng((self.seed, self.epoch, index)))
        return normalize(images), self.labels[ids]

    def on_epoch_end(self):
        self.epoch += 1
        self._shuffle()


# --- teachers ---------------------------------------------------------------------


def step_schedule(peak: float, epochs: int, steps_per_epoch: int):
    """x0.1 at 62.5/75/87.5% of the epochs (CRD's 150/180/210 of 240), for the fallback path.

    Args:
        peak: initial learning rate.
        epochs: training epochs.
        steps_per_epoch: optimiser steps per epoch.

    Returns:
        A Keras learning-rate schedule.
    """
    boundaries: list[int] = []
    for fraction in (0.625, 0.75, 0.875):
        step = max(int(math.floor(fraction * epochs + 0.5)) * steps_per_epoch, 1)
        boundaries.append(max(step, boundaries[-1] + 1) if boundaries else step)
    values = [peak * 0.1**i for i in range(len(boundaries) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def fit_teacher(model: keras.Model, batches: TrainBatches, cfg: dict[str, Any], folder: Path):
    """Trains with the CRD recipe: SGD momentum 0.9, coupled weight decay, step decay.

    Uses `keras_kdcap.training.train_teacher` (which also makes the run
    resumable from `folder/backup` after an interruption) when it is
    installed, else the same recipe with plain `compile`/`fit`.

    Returns:
        Keras-style history dict `{metric: [value per epoch]}`.
    """
    try:
        from keras_kdcap.training import train_teacher
    except ImportError:
        train_teacher = None
    if train_teacher is not None:
        _, history = train_teacher(
            model,
            batches,
            cfg["epochs"],
            lr=cfg["learning_rate"],
            weight_decay=cfg["weight_decay"],
            checkpoint_dir=folder,
            verbose=cfg["verbose"],
        )
        return history
    for variable in model.trainable_variables:
        variable.regularizer = keras.regularizers.L2(cfg["weight_decay"] / 2)
    model.compile(
        optimizer=keras.optimizers.SGD(
            step_schedule(cfg["learning_rate"], cfg["epochs"], len(batches)), momentum=0.9
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model.fit(batches, epochs=cfg["epochs"], verbose=cfg["verbose"]).history


def training_config(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The settings that determine a trained teacher (its cache key)."""
    keys = (
        "per_class",
        "epochs",
        "batch_size",
        "learning_rate",
        "weight_decay",
        "augment",
        "seed",
        "dtype_policy",
    )
    return {"model": name, **{k: cfg[k] for k in keys}}


def cache_folder(output_dir: Path, config: dict[str, Any]) -> Path:
    """`<output_dir>/teachers/<model>-<hash of the training config>/`."""
    digest = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    return output_dir / "teachers" / f"{config['model']}-{digest}"


def train_or_load(
    name: str, index: int, cfg: dict[str, Any], train: tuple[np.ndarray, np.ndarray]
) -> tuple[keras.Model, dict[str, Any]]:
    """Loads the cached teacher, or trains it and caches it.

    The cache is `<output_dir>/teachers/<model>-<config hash>/teacher.keras`
    with `meta.json` beside it; an interrupted training resumes from the same
    folder.

    Args:
        name: zoo model name.
        index: position in the ladder (offsets the initialisation seed).
        cfg: the run configuration.
        train: `(uint8 images, labels)` of the training subset.

    Returns:
        `(model, info)` with `info` holding `train_seconds`, `cached`, `path`
        and the last epoch's training loss / (augmented) accuracy.
    """
    config = training_config(name, cfg)
    folder = cache_folder(Path(cfg["output_dir"]), config)
    path, meta_path = folder / "teacher.keras", folder / "meta.json"
    if path.is_file() and meta_path.is_file():
        try:  # verified: a file cut short by a kill is retrained, never loaded
            info = files.load_json(meta_path)
            if info.get("config") == config:
                print(f"[{name}] loading cached teacher {path}")
                model = files.load_model_verified(path, compile=False)
                return model, {**info["training"], "cached": True, "path": str(path)}
        except files.CorruptFileError as error:
            print(f"[{name}] {error} Retraining it.")
            meta_path.unlink()
    keras.utils.set_random_seed(cfg["seed"] * 1000 + index)
    model = get_model(name, num_classes=NUM_CLASSES)
    batches = TrainBatches(*train, cfg["batch_size"], cfg["seed"] * 1000 + index, cfg["augment"])
    print(
        f"[{name}] training {model.count_params():,} params for {cfg['epochs']} epochs "
        f"on {len(train[1])} images"
    )
    start = time.perf_counter()
    history = fit_teacher(model, batches, cfg, folder)
    training = {
        "train_seconds": time.perf_counter() - start,
        "final_loss": float(history["loss"][-1]),
        "final_augmented_train_accuracy": float(history["accuracy"][-1]),
    }
    folder.mkdir(parents=True, exist_ok=True)
    if not files.verify_file(path):  # train_teacher saves it itself
        files.save_model_verified(model, path)
    files.atomic_write_json(meta_path, {"config": config, "training": training})  # last
    return model, {**training, "cached": False, "path": str(path)}


# --- analysis ---------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """numpy scalars/arrays -> Python; NaN/inf -> None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _histogram(values: np.ndarray, bins: int = 32) -> dict[str, list[float]]:
    edges = np.geomspace(TAU_SEARCH["min_temperature"], TAU_SEARCH["max_temperature"], bins + 1)
    edges[0], edges[-1] = edges[0] * 0.999, edges[-1] * 1.001
    counts, _ = np.histogram(values, bins=edges)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def write_figures(output_dir: Path, rows, agreement, tau_star) -> list[str]:
    """Writes the PNG figures; returns their paths (empty without matplotlib)."""
    try:
        from keras_kdcap.analysis import plots

        names = agreement["names"]
        return [
            plots.plot_variance_vs_temperature(rows, output_dir / "variance_vs_temperature.png"),
            plots.plot_variance_vs_temperature(rows, output_dir / "std_vs_temperature.png", "std"),
            plots.plot_variance_vs_size(rows, output_dir / "variance_vs_size.png"),
            plots.plot_agreement_heatmap(
                names, agreement["spearman"], output_dir / "spearman_heatmap.png"
            ),
            plots.plot_agreement_heatmap(
                names,
                agreement["kendall"],
                output_dir / "kendall_heatmap.png",
                "Kendall tau-b of non-target ranks",
            ),
            plots.plot_tau_histogram(
                tau_star,
                output_dir / "tau_star_histogram.png",
                TAU_SEARCH["min_temperature"],
                TAU_SEARCH["max_temperature"],
                title="ISATS tau* of correctly classified test samples",
            ),
            plots.plot_angles_vs_size(rows, output_dir / "angles_vs_size.png"),
        ]
    except ImportError as err:
        print(f"figures skipped: {err}")
        return []


def print_summary(results: dict[str, Any]) -> None:
    """Prints the per-teacher table and the Spearman matrix."""
    temps = results["config"]["temperatures"]
    header = f"{'teacher':<12}{'params':>10}{'test acc':>9}{'train acc':>10}"
    header += "".join(f"{f'std@T={t:g}':>11}" for t in temps)
    header += f"{'tau*(ok)':>9}{'intra':>7}{'inter':>7}{'w-inter':>8}"
    print(header)
    for name, t in results["teachers"].items():
        line = f"{name:<12}{t['params']:>10,}{t['accuracy']:>9.4f}{t['train_accuracy']:>10.4f}"
        line += "".join(f"{t['non_target'][str(float(x))]['std']:>11.2e}" for x in temps)
        cells = [(t["tau_star"]["median_correct"], 9, ".2f")]
        cells += [(t["geometry"].get(k), w, ".1f") for k, w in GEOMETRY_COLUMNS]
        for value, width, spec in cells:
            line += f"{'n/a':>{width}}" if value is None else f"{value:>{width}{spec}}"
        print(line)
    agreement = results["agreement"]
    names = agreement["names"]
    print("\nSpearman rho of non-target ranks (test split), mean over samples:")
    print(" " * 12 + "".join(f"{n:>11}" for n in names))
    for name, row in zip(names, agreement["spearman"], strict=True):
        print(f"{name:<12}" + "".join(f"{v:>11.3f}" for v in row))


def run_analysis(cfg: dict[str, Any]) -> dict[str, Any]:
    """Trains/loads the teachers, measures them, writes results.json and figures.

    Args:
        cfg: configuration with the keys of the command-line flags (after
            `--smoke` is applied), `models` a list and `temperatures` a list
            of floats.

    Returns:
        The results dict written to `<output_dir>/results.json`.
    """
    output_dir = Path(cfg["output_dir"])
    output_dir.mkdir(parents=True, exist_ok=True)
    x_train, y_train = load_split(cfg["data_dir"], "train")
    x_test, y_test = load_split(cfg["data_dir"], "test")
    keep = per_class_subset(y_train, cfg["per_class"], cfg["seed"])
    train = (x_train[keep], y_train[keep])
    keep_test = per_class_subset(y_test, cfg["eval_per_class"], cfg["seed"])
    test = (normalize(x_test[keep_test]), y_test[keep_test])
    train_eval = (normalize(train[0]), train[1])

    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(cfg["dtype_policy"])
    teachers: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    test_logits: dict[str, np.ndarray] = {}
    tau_arrays: dict[str, np.ndarray] = {}
    try:
        for index, name in enumerate(cfg["models"]):
            model, training = train_or_load(name, index, cfg, train)
            start = time.perf_counter()
            outputs = analysis.collect_outputs(model, test, batch_size=256)
            train_outputs = analysis.collect_outputs(model, train_eval, batch_size=256)
            tau = analysis.tau_star_stats(outputs.logits, outputs.labels, **TAU_SEARCH)
            teacher_rows = analysis.teacher_rows(
                name,
                outputs,
                cfg["temperatures"],
                kernel=analysis.classifier_kernel(model),
                params=int(model.count_params()),
                tau_star=tau,
            )
            rows.extend(teacher_rows)
            test_logits[name] = outputs.logits
            tau_arrays[name] = tau["tau_star"][tau["correct"]]
            geometry_keys = ("intra_class_angle", "inter_class_angle", "inter_class_weight_angle")
            teachers[name] = {
                "params": int(model.count_params()),
                "accuracy": teacher_rows[0]["accuracy"],
                "train_accuracy": float(
                    np.mean(np.argmax(train_outputs.logits, axis=-1) == train_outputs.labels)
                ),
                "training": training,
                "non_target": {
                    str(float(r["temperature"])): {
                        k: r[k]
                        for k in ("variance", "std", "derived_average", "target_probability")
                    }
                    for r in teacher_rows
                },
                "tau_star": {
                    **{k: v for k, v in tau.items() if k not in ("tau_star", "correct")},
                    "histogram": _histogram(tau["tau_star"]),
                    "histogram_correct": _histogram(tau["tau_star"][tau["correct"]]),
                },
                "geometry": {k: teacher_rows[0][k] for k in geometry_keys if k in teacher_rows[0]},
                "analysis_seconds": time.perf_counter() - start,
            }
    finally:
        keras.config.set_dtype_policy(previous_policy)

    start = time.perf_counter()
    agreement = analysis.pairwise_agreement(test_logits, test[1], k=(5, 10))
    agreement_seconds = time.perf_counter() - start
    figures = write_figures(output_dir, rows, agreement, tau_arrays)
    results = {
        "config": {
            **cfg,
            "backend": keras.backend.backend(),
            "keras": keras.__version__,
            "tau_search": TAU_SEARCH,
            "num_train": int(len(train[1])),
            "num_test": int(len(test[1])),
        },
        "teachers": teachers,
        "rows": rows,
        "agreement": {**agreement, "seconds": agreement_seconds},
        "figures": [os.path.relpath(f, output_dir) for f in figures],
    }
    results = _jsonable(results)
    files.atomic_write_json(output_dir / "results.json", results)
    print_summary(results)
    print(f"\nwrote {output_dir / 'results.json'} and {len(figures)} figures")
    return results


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> dict[str, Any]:
    """The run configuration from parsed flags, with `--smoke` applied."""
    cfg = {name: flag_values[name].value for name in flag_values}
    if cfg["smoke"]:
        if flag_values["models"].using_default_value:
            cfg["models"] = SMOKE_MODELS
        cfg.update(per_class=20, epochs=1, eval_per_class=20)
        if flag_values["output_dir"].using_default_value:
            cfg["output_dir"] = str(Path(cfg["output_dir"]) / "smoke")
    cfg["models"] = [m.strip() for m in cfg["models"].split(",") if m.strip()]
    cfg["temperatures"] = [float(t) for t in str(cfg["temperatures"]).split(",") if t.strip()]
    if not cfg["models"]:
        raise app.UsageError("--models is empty.")
    if any(t <= 0 for t in cfg["temperatures"]) or not cfg["temperatures"]:
        raise app.UsageError("--temperatures must be positive numbers.")
    return cfg


def main(argv: Sequence[str]) -> dict[str, Any]:
    """Parses `argv` (program name first, then flags) and runs the analysis.

    Args:
        argv: command line, e.g. `["analyze_teachers", "--smoke"]`.

    Returns:
        The results dict (also written to `<output_dir>/results.json`).
    """
    FLAGS.unparse_flags()
    rest = FLAGS(list(argv))
    if len(rest) > 1:
        raise app.UsageError(f"unexpected arguments: {rest[1:]}")
    return run_analysis(config_from_flags())


def _cli(_argv: Sequence[str]) -> None:
    # app.run has parsed sys.argv into absl's global FLAGS, which share our Flag objects.
    FLAGS.mark_as_parsed()
    run_analysis(config_from_flags())


if __name__ == "__main__":
    flags.FLAGS.append_flag_values(FLAGS)
    for flag_name in FLAGS:
        flags.declare_key_flag(flag_name)  # so that --help lists them
    app.run(_cli)
