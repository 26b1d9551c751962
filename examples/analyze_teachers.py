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

Trained teachers are cached in `<output_dir>/teachers/<model>-<config hash>/teacher.keras`
(`keras_kdcap.training.TeacherStore`), so a rerun with the same training flags
only re-does the analysis, and an interrupted training resumes from the same
folder. The images are `keras_kdcap.data.CifarSplits` with the NumPy pipeline:
the *first* `--per_class` training and `--eval_per_class` test images of each
class. Before that the script drew a seeded random subset of each class, and
the committed `docs/analysis` results (20 images per class) were measured on
that subset: a rerun trains on other images (teachers cached by the old version
are not reused). Runs on every Keras backend (set KERAS_BACKEND).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from absl import app, flags

from keras_kdcap import analysis, files
from keras_kdcap.data import CifarSplits
from keras_kdcap.experiment.cli import define_flag_table, split_list
from keras_kdcap.models import get_model
from keras_kdcap.training import TeacherStore, train_teacher

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = os.environ.get("KDCAP_CIFAR100_DIR") or str(
    REPO.parent / "shared" / "data" / "cifar100"
)
DEFAULT_OUTPUT_DIR = str(REPO / "docs" / "analysis")
DEFAULT_MODELS = "resnet8,resnet14,resnet20,resnet32,resnet56,resnet110"
SMOKE_MODELS = "resnet8,resnet14"
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
define_flag_table(
    FLAGS,
    {
        "data_dir": (DEFAULT_DATA_DIR, "Folder with train.npz / test.npz."),
        "models": (DEFAULT_MODELS, "Comma list of zoo names, growing capacity."),
        "per_class": (500, "Training images per class (500 = all)."),
        "eval_per_class": (0, "Test images per class (0 = all 100)."),
        "epochs": (240, "Teacher training epochs."),
        "batch_size": (64, "Training batch size."),
        "learning_rate": (0.05, "Peak SGD learning rate."),
        "weight_decay": (
            5e-4,
            "PyTorch-style (coupled) weight decay, the CRD recipe's 5e-4: an L2 penalty "
            "weight_decay/2 * w^2 on every trainable variable (keras_kdcap.training).",
        ),
        "augment": (True, "Random crop (pad 4) and horizontal flip."),
        "temperatures": ("1,2,3,4,6,8", "Temperatures of the non-target statistics."),
        "dtype_policy": ("float32", "Keras dtype policy for training, e.g. mixed_bfloat16."),
        "output_dir": (DEFAULT_OUTPUT_DIR, "Where results.json, figures and teachers/ go."),
        "seed": (0, "Random seed (augmentation, initialisation)."),
        "verbose": (2, "Keras fit verbosity (0, 1, 2)."),
        "smoke": (
            False,
            f"Tiny run: {SMOKE_MODELS}, 20 images/class, 1 epoch, 20 test images/class, "
            "written to <output_dir>/smoke.",
        ),
    },
)


# --- teachers ---------------------------------------------------------------------
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
    # "subset": the first images of each class (CifarSplits), not an older version's random draw
    return {"model": name, **{k: cfg[k] for k in keys}, "subset": "first"}


def train_or_load(
    name: str, index: int, cfg: dict[str, Any], splits: CifarSplits
) -> tuple[keras.Model, dict[str, Any]]:
    """Loads the cached teacher, or trains it with the CRD recipe and caches it.

    The cache is `<output_dir>/teachers/<model>-<config hash>/teacher.keras`
    with `meta.json` beside it; an interrupted training resumes from the same
    folder. The recipe: SGD momentum 0.9, coupled weight decay, CRD step decay
    (`keras_kdcap.training.train_teacher`).

    Args:
        name: zoo model name.
        index: position in the ladder (offsets the initialisation seed).
        cfg: the run configuration.
        splits: the data.

    Returns:
        `(model, info)` with `info` holding `train_seconds`, `cached`, `path`
        and the last epoch's training loss / (augmented) accuracy.
    """
    seed = cfg["seed"] * 1000 + index

    def train(folder: Path) -> tuple[keras.Model, dict[str, list[float]]]:
        keras.utils.set_random_seed(seed)
        model = get_model(name, num_classes=NUM_CLASSES)
        print(
            f"[{name}] training {model.count_params():,} params for {cfg['epochs']} epochs "
            f"on {splits.sizes()['train']} images"
        )
        batches = splits.train_epochs(seed, augment=cfg["augment"])
        return train_teacher(
            model,
            batches,
            cfg["epochs"],
            lr=cfg["learning_rate"],
            weight_decay=cfg["weight_decay"],
            checkpoint_dir=folder,
            verbose=cfg["verbose"],
        )

    store = TeacherStore(Path(cfg["output_dir"]) / "teachers", relative_to=REPO)
    model, info = store.get(training_config(name, cfg), train, label=name)
    return model, {**info, "path": os.path.join(info["path"], TeacherStore.MODEL_FILE)}


# --- analysis ---------------------------------------------------------------------


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
    splits = CifarSplits.from_npz(
        cfg["data_dir"],
        cfg["per_class"],
        test_per_class=cfg["eval_per_class"],
        batch_size=cfg["batch_size"],
        pipeline="numpy",
    )

    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(cfg["dtype_policy"])
    teachers: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    test_logits: dict[str, np.ndarray] = {}
    tau_arrays: dict[str, np.ndarray] = {}
    try:
        for index, name in enumerate(cfg["models"]):
            model, training = train_or_load(name, index, cfg, splits)
            start = time.perf_counter()
            outputs = analysis.collect_outputs(model, splits.eval("test"))
            train_outputs = analysis.collect_outputs(model, splits.eval("train"))
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
    agreement = analysis.pairwise_agreement(test_logits, splits.test[1], k=(5, 10))
    agreement_seconds = time.perf_counter() - start
    figures = write_figures(output_dir, rows, agreement, tau_arrays)
    results = {
        "config": {
            **cfg,
            "backend": keras.backend.backend(),
            "keras": keras.__version__,
            "tau_search": TAU_SEARCH,
            "num_train": splits.sizes()["train"],
            "num_test": splits.sizes()["test"],
        },
        "teachers": teachers,
        "rows": rows,
        "agreement": {**agreement, "seconds": agreement_seconds},
        "figures": [os.path.relpath(f, output_dir) for f in figures],
    }
    results = files.relative_paths(files.jsonable(results), REPO)
    files.write_json(output_dir / "results.json", results)
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
    cfg["models"] = split_list(cfg["models"])
    cfg["temperatures"] = [float(t) for t in split_list(str(cfg["temperatures"]))]
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
