"""A KerasHub causal LM teacher distilled token by token into a smaller one, on Python source.

    python examples/distill_causal_lm.py --preset smoke
    python examples/distill_causal_lm.py --preset small --output_dir runs/causal_lm_small

The corpus is the `.py` files of a folder, by default the Python standard library the
interpreter runs from (`os.path.dirname(os.__file__)`, `site-packages` left out), so every
machine has it and nothing is downloaded. Each file is held out for evaluation or kept
for training by the CRC-32 of its relative path (`--heldout_percent`): a fixed split, the
same on every run and backend. Tokens are bytes (a vocabulary of 256, done with NumPy):
every file is cut into windows of `--seq_len` next-byte predictions, the last one padded
and masked (`padding_mask` in the inputs, `sample_weight` on the labels, as KerasHub's
causal-LM preprocessors give them).

1. The teacher, a `keras_hub.models.GPT2Backbone` built from a tiny config (random
   weights, no preset) with its tied output embedding as head (the logits of
   `GPT2CausalLM`), is trained with cross-entropy.
2. Three students of one smaller config, from the same initial weights (Keras shuffles
   the windows each epoch from the same seed):
   `ce` (cross-entropy only, no teacher), `kd` (`FixedTemperature(--kd_temperature)`)
   and `isats` (`ISATS()`, falling back to plain KD at `--kd_temperature` on the tokens
   the teacher misranks), the last two through `keras_kdcap.Distiller` on the
   `[B, T, 256]` logits with the padding mask.
3. Held-out per-token cross-entropy and perplexity of every model (masked tokens
   excluded), each model's per-token non-target variance at T=4, and the teacher's
   ISATS temperature tau* per held-out token (the paper's observation 1, per token).

Prints a markdown table and writes `<output_dir>/results.json` (docs/token_level.md).
Presets: `smoke` (about 3 minutes on 2 busy CPU cores) and `small` (a teacher far
ahead of the students; about 15 minutes there). Measured results: docs/token_level.md.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _startup import quiet_native_startup  # noqa: E402

with quiet_native_startup():
    import keras
    import numpy as np
    from absl import flags
    from keras import ops

    from keras_kdcap import ISATS, Distiller, FixedTemperature, files
    from keras_kdcap.analysis import non_target_stats, tau_star_stats
    from keras_kdcap.experiment.cli import preset_then_flags
    from keras_kdcap.policies.isats import temperature_grid

#: bytes are the tokens: one class per byte value.
VOCABULARY_SIZE = 256
#: the input id and label written at padded positions (masked, so never learnt).
PAD_ID = 0
#: folders under the corpus folder that are not its own source (installed packages).
SKIPPED_FOLDERS = frozenset({"site-packages", "dist-packages", "__pycache__"})
#: the temperature of the per-token non-target variance (the KD temperature of CIFAR).
VARIANCE_TEMPERATURE = 4.0
#: the students, in the order they are trained.
STUDENTS = ("ce", "kd", "isats")

PRESETS = {
    "smoke": {
        "seq_len": 64,
        "train_sequences": 2048,
        "eval_sequences": 512,
        "batch_size": 32,
        "teacher_epochs": 6,
        "student_epochs": 4,
        "teacher_layers": 2,
        "teacher_hidden": 64,
        "teacher_heads": 4,
        "student_layers": 1,
        "student_hidden": 32,
        "student_heads": 2,
        "learning_rate": 3e-3,
    },
    "small": {
        "seq_len": 128,
        "train_sequences": 12288,
        "eval_sequences": 2048,
        "batch_size": 32,
        "teacher_epochs": 3,
        "student_epochs": 2,
        "teacher_layers": 3,
        "teacher_hidden": 96,
        "teacher_heads": 4,
        "student_layers": 1,
        "student_hidden": 32,
        "student_heads": 2,
        "learning_rate": 2e-3,
    },
}

_PRESET_FLAGS = (
    ("seq_len", "Next-byte predictions per window (the models' sequence length)."),
    ("train_sequences", "Training windows, evenly spaced over the training files (0: all)."),
    ("eval_sequences", "Held-out windows, evenly spaced over the held-out files (0: all)."),
    ("batch_size", "Windows per batch."),
    ("teacher_epochs", "Epochs of teacher training."),
    ("student_epochs", "Epochs of each student."),
    ("teacher_layers", "Transformer layers of the teacher."),
    ("teacher_hidden", "Hidden size of the teacher (its MLP is 4x)."),
    ("teacher_heads", "Attention heads of the teacher (must divide --teacher_hidden)."),
    ("student_layers", "Transformer layers of the students."),
    ("student_hidden", "Hidden size of the students (their MLP is 4x)."),
    ("student_heads", "Attention heads of the students (must divide --student_hidden)."),
)


# --------------------------------------------------------------------------- flags
def define_flags(fv: flags.FlagValues) -> None:
    """The script's flags on `fv` (preset-controlled ones default to None).

    Args:
        fv: the `FlagValues` to define them on.
    """
    flags.DEFINE_enum("preset", "smoke", list(PRESETS), "Run size.", flag_values=fv)
    flags.DEFINE_string(
        "corpus_dir",
        os.path.dirname(os.__file__),
        "Folder whose .py files are the corpus (default: the Python standard library).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "heldout_percent", 10, "Share of the files held out for evaluation, 1-99.", flag_values=fv
    )
    for name, help_text in _PRESET_FLAGS:
        flags.DEFINE_integer(name, None, help_text + " Default: from --preset.", flag_values=fv)
    flags.DEFINE_float(
        "learning_rate", None, "Peak AdamW learning rate. Default: from --preset.", flag_values=fv
    )
    flags.DEFINE_float(
        "kd_temperature",
        1.0,
        "Temperature of the kd student, and of ISATS's plain-KD fallback on the tokens the "
        "teacher misranks.",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "isats_target_ratio",
        2.0,
        "ISATS's tau1 / tau* on the tokens the teacher ranks right (1: no asymmetry).",
        flag_values=fv,
    )
    flags.DEFINE_float("alpha", 0.1, "Weight of the students' CE in KD/ISATS.", flag_values=fv)
    flags.DEFINE_float("beta", 0.9, "Weight of the KD term in KD/ISATS.", flag_values=fv)
    flags.DEFINE_enum(
        "isats_search",
        "scan",
        ["auto", "grid", "scan"],
        "ISATS's tau* search. 'scan' (one candidate at a time) measured 6-30x faster than "
        "'grid' on CPU for 2,048 tokens x 256 classes (docs/token_level.md).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "analysis_tokens",
        65536,
        "Held-out tokens (evenly spaced) for the non-target variance and tau* statistics.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "threads",
        0,
        "torch's CPU threads (0: its default). 1 avoids OpenMP spinning on a busy CPU.",
        flag_values=fv,
    )
    flags.DEFINE_string("output_dir", "runs/causal_lm", "Where results.json goes.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of weights and data order.", flag_values=fv)
    flags.DEFINE_integer("verbose", 2, "Keras fit verbosity.", flag_values=fv)


def _check_positive(values: dict, names: Sequence[str]) -> None:
    for name in names:
        if values[name] <= 0:
            raise SystemExit(f"error: --{name}={values[name]}: must be positive")


def settings(argv: Sequence[str]) -> dict:
    """Parses the command line: the preset's values, then the flags given.

    Args:
        argv: the command line, program name first.

    Returns:
        Every setting by flag name.
    """
    fv = flags.FlagValues()
    define_flags(fv)
    fv(list(argv))
    values = preset_then_flags(fv, PRESETS[fv.preset])
    _check_positive(values, [name for name, _ in _PRESET_FLAGS if "sequences" not in name])
    _check_positive(
        values, ["learning_rate", "kd_temperature", "isats_target_ratio", "analysis_tokens"]
    )
    for name in ("train_sequences", "eval_sequences", "threads"):
        if values[name] < 0:
            raise SystemExit(f"error: --{name}={values[name]}: must be >= 0")
    if not 1 <= values["heldout_percent"] <= 99:
        raise SystemExit(f"error: --heldout_percent={values['heldout_percent']}: choose 1 to 99")
    for model in ("teacher", "student"):
        hidden, heads = values[f"{model}_hidden"], values[f"{model}_heads"]
        if hidden % heads:
            raise SystemExit(
                f"error: --{model}_heads={heads} does not divide --{model}_hidden={hidden}"
            )
    return values


# -------------------------------------------------------------------------- corpus
def corpus_files(corpus_dir: str | os.PathLike) -> list[Path]:
    """The `.py` files under `corpus_dir`, as relative paths in sorted order.

    Files under `site-packages`, `dist-packages` and `__pycache__` are left
    out: in a standard library folder they are installed packages, not the
    library.

    Args:
        corpus_dir: the corpus folder.

    Returns:
        The relative paths, sorted.
    """
    root = Path(corpus_dir)
    if not root.is_dir():
        raise SystemExit(f"error: --corpus_dir={corpus_dir}: no such folder")
    files = sorted(
        path.relative_to(root)
        for path in root.rglob("*.py")
        if path.is_file() and not SKIPPED_FOLDERS & set(path.relative_to(root).parts)
    )
    if not files:
        raise SystemExit(
            f"error: --corpus_dir={corpus_dir}: no .py files there; give a folder of Python "
            "source (the default is the standard library)"
        )
    return files


def is_heldout(relative: Path, heldout_percent: int) -> bool:
    """Whether a file is held out: the CRC-32 of its relative path, mod 100, is below the share.

    Args:
        relative: the file's path relative to the corpus folder.
        heldout_percent: the held-out share of files, 1-99.

    Returns:
        True for a held-out file.
    """
    return zlib.crc32(relative.as_posix().encode()) % 100 < heldout_percent


def split_files(files: Sequence[Path], heldout_percent: int) -> tuple[list[Path], list[Path]]:
    """The files split into training and held-out ones, each in the given order.

    Args:
        files: relative paths.
        heldout_percent: the held-out share of files, 1-99.

    Returns:
        `(train, heldout)`, disjoint, together all of `files`.
    """
    heldout = [path for path in files if is_heldout(path, heldout_percent)]
    train = [path for path in files if not is_heldout(path, heldout_percent)]
    if not train or not heldout:
        raise SystemExit(
            f"error: --heldout_percent={heldout_percent} leaves {len(train)} training and "
            f"{len(heldout)} held-out files of {len(files)}: give --corpus_dir more .py files "
            "or change --heldout_percent"
        )
    return train, heldout


class Windows(NamedTuple):
    """Next-byte windows in KerasHub's causal-LM layout.

    Attributes:
        token_ids: int32 `[N, T]` input bytes (`PAD_ID` after the end).
        padding_mask: bool `[N, T]`, true for real input bytes.
        labels: int32 `[N, T]` next bytes (`PAD_ID` where there is none).
        sample_weight: float32 `[N, T]`, 1 where there is a next byte to predict.
    """

    token_ids: np.ndarray
    padding_mask: np.ndarray
    labels: np.ndarray
    sample_weight: np.ndarray

    def inputs(self) -> dict:
        """The models' inputs `{"token_ids", "padding_mask"}`."""
        return {"token_ids": self.token_ids, "padding_mask": self.padding_mask}

    def take(self, index) -> Windows:
        """The windows at `index` (an index array or a slice)."""
        return Windows(*(array[index] for array in self))


def byte_windows(data: bytes, seq_len: int) -> Windows:
    """One file's bytes as windows of `seq_len` next-byte predictions.

    Window `i` reads bytes `[i * T, i * T + T)` and predicts bytes
    `[i * T + 1, i * T + T]`: every byte after the first is a label once.
    The last window is padded; a file of fewer than 2 bytes gives none.

    Args:
        data: the file's bytes.
        seq_len: `T`, predictions per window.

    Returns:
        The file's `Windows`.
    """
    values = np.frombuffer(data, dtype=np.uint8)
    count = window_count(len(values), seq_len)
    padded = np.full(count * seq_len + 1, PAD_ID, dtype=np.int32)
    padded[: len(values)] = values[: len(padded)]
    starts = np.arange(count) * seq_len
    rows = padded[starts[:, None] + np.arange(seq_len + 1)]
    positions = np.arange(seq_len)
    remaining = len(values) - starts[:, None]  # bytes from the window's start to the end
    return Windows(
        token_ids=rows[:, :-1],
        padding_mask=positions < remaining,
        labels=rows[:, 1:],
        sample_weight=(positions < remaining - 1).astype(np.float32),
    )


def evenly_spaced(total: int, count: int) -> np.ndarray:
    """`count` indices spread evenly over `range(total)` (all of them for 0 or more).

    Args:
        total: the number of items.
        count: how many to keep; 0 keeps all.

    Returns:
        Sorted distinct int indices.
    """
    if count == 0 or count >= total:
        return np.arange(total)
    return (np.arange(count) * total) // count


def window_count(num_bytes: int, seq_len: int) -> int:
    """How many windows `byte_windows` cuts from a file of `num_bytes` bytes."""
    return max(0, math.ceil((num_bytes - 1) / seq_len))


def load_windows(root: Path, files: Sequence[Path], seq_len: int, count: int) -> Windows:
    """The files' windows, `count` of them evenly spaced over all (0: all).

    Only the files holding a kept window are read.

    Args:
        root: the corpus folder.
        files: relative paths, their windows in this order.
        seq_len: predictions per window.
        count: windows to keep, 0 for all.

    Returns:
        The kept `Windows`.
    """
    sizes = [(root / path).stat().st_size for path in files]
    counts = np.array([window_count(size, seq_len) for size in sizes])
    if counts.sum() == 0:
        raise SystemExit(f"error: the {len(files)} files hold no byte to predict")
    kept = evenly_spaced(int(counts.sum()), count)
    owner = np.searchsorted(np.cumsum(counts), kept, side="right")
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    parts = []
    for index in np.unique(owner):
        data = (root / files[index]).read_bytes()
        if len(data) != sizes[index]:
            raise SystemExit(f"error: {files[index]} changed while the corpus was read; rerun")
        local = kept[owner == index] - first[index]
        parts.append(byte_windows(data, seq_len).take(local))
    return Windows(*(np.concatenate(arrays) for arrays in zip(*parts, strict=True)))


def corpus_digest(root: Path, files: Sequence[Path]) -> str:
    """A SHA-256 of the files' relative paths and sizes: which corpus a result came from.

    Args:
        root: the corpus folder.
        files: relative paths.

    Returns:
        The hex digest's first 16 characters.
    """
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.as_posix()}\0{(root / path).stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def corpus_name(corpus_dir: str) -> str:
    """How results.json names the corpus: the standard library, or the folder's name."""
    if Path(corpus_dir).resolve() == Path(os.path.dirname(os.__file__)).resolve():
        return f"python-stdlib-{platform.python_version()}"
    return Path(corpus_dir).resolve().name


# -------------------------------------------------------------------------- models
def causal_lm(layers: int, hidden: int, heads: int, seq_len: int, name: str) -> keras.Model:
    """A KerasHub GPT-2 backbone from a config, with its tied head: inputs to `[B, T, 256]` logits.

    The model is a plain functional `keras.Model` over the backbone (what
    `GPT2CausalLM` computes, without its preprocessing `fit`, which batches
    arrays in a fixed order): every model here is trained by Keras's own
    `fit` on the same shuffled batches.

    Args:
        layers: transformer layers.
        hidden: hidden size (the MLP is 4x).
        heads: attention heads.
        seq_len: the longest sequence (position embeddings).
        name: the model's name.

    Returns:
        A model mapping `{"token_ids", "padding_mask"}` (`[B, T]` each) to logits.
    """
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCABULARY_SIZE,
        num_layers=layers,
        num_heads=heads,
        hidden_dim=hidden,
        intermediate_dim=4 * hidden,
        dropout=0.0,
        max_sequence_length=seq_len,
        name=f"{name}_backbone",
    )
    inputs = backbone.input
    logits = backbone.token_embedding(backbone(inputs), reverse=True)
    return keras.Model(inputs, logits, name=name)


def adamw(learning_rate: float, steps: int) -> keras.optimizers.Optimizer:
    """AdamW with a linear warm-up (5% of the steps) and a cosine decay to 0.

    Args:
        learning_rate: the peak learning rate.
        steps: the run's optimizer steps.

    Returns:
        The optimizer.
    """
    warmup = max(1, steps // 20)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, max(1, steps - warmup), warmup_target=learning_rate, warmup_steps=warmup
    )
    return keras.optimizers.AdamW(schedule, weight_decay=0.01, global_clipnorm=1.0)


def cross_entropy_loss() -> keras.losses.Loss:
    """The causal LM's training loss: per-token CE of logits, weighted by `sample_weight`."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def fit_with_ce(model: keras.Model, train: Windows, epochs: int, s: dict):
    """Trains `model` with cross-entropy alone (the teacher, and the `ce` student).

    Args:
        model: a causal LM.
        train: the training windows.
        epochs: epochs over them.
        s: the settings.

    Returns:
        The Keras History.
    """
    steps = epochs * math.ceil(len(train.labels) / s["batch_size"])
    model.compile(optimizer=adamw(s["learning_rate"], steps), loss=cross_entropy_loss())
    return model.fit(
        train.inputs(),
        train.labels,
        sample_weight=train.sample_weight,
        batch_size=s["batch_size"],
        epochs=epochs,
        verbose=s["verbose"],
    )


def distil(teacher: keras.Model, student: keras.Model, policy, train: Windows, s: dict):
    """Distils `student` from `teacher` through `keras_kdcap.Distiller` on the token logits.

    Args:
        teacher: the trained causal LM.
        student: the causal LM to train.
        policy: the temperature policy.
        train: the training windows (the padding mask rides in the inputs).
        s: the settings.

    Returns:
        The Keras History.
    """
    steps = s["student_epochs"] * math.ceil(len(train.labels) / s["batch_size"])
    distiller = Distiller(teacher, student)
    distiller.compile(
        adamw(s["learning_rate"], steps), policy=policy, alpha=s["alpha"], beta=s["beta"]
    )
    return distiller.fit(
        train.inputs(),
        train.labels,
        sample_weight=train.sample_weight,
        batch_size=s["batch_size"],
        epochs=s["student_epochs"],
        verbose=s["verbose"],
    )


def student_policy(name: str, s: dict):
    """The temperature policy of a distilled student (`kd` or `isats`).

    ISATS falls back to plain KD at `--kd_temperature` on the tokens the
    teacher misranks (most of them, for a small LM), so `kd` and `isats`
    differ only on the tokens where ISATS uses its tau*.
    """
    if name == "kd":
        return FixedTemperature(s["kd_temperature"])
    return ISATS(
        target_ratio=s["isats_target_ratio"],
        fallback_temperature=s["kd_temperature"],
        search=s["isats_search"],
    )


# ---------------------------------------------------------------------- evaluation
def masked_cross_entropy(logits, labels, mask) -> tuple[float, int]:
    """The summed per-token cross-entropy (nats) over the tokens `mask` keeps, and their count.

    A masked token counts for nothing whatever it holds (a label of -100,
    non-finite logits); an unmasked one with a label outside `[0, C)` or a
    non-finite loss raises.

    Args:
        logits: `[B, T, C]` logits (array or tensor).
        labels: int `[B, T]` next-token ids.
        mask: `[B, T]` weights, non-zero for the tokens that count.

    Returns:
        `(sum, count)`: the float64 sum of `-log softmax(logits)[label]` and the
        number of tokens it covers.
    """
    labels = np.asarray(labels)
    keep = np.asarray(mask) != 0
    num_classes = logits.shape[-1]
    bad = keep & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} unmasked label(s) outside [0, {num_classes}), e.g. "
            f"{int(labels[bad][0])}: mask them (mask 0) or fix the labels."
        )
    safe = np.where(keep, labels, 0).astype("int32")
    log_probs = ops.log_softmax(ops.cast(ops.convert_to_tensor(logits), "float32"), axis=-1)
    picked = ops.take_along_axis(log_probs, ops.expand_dims(safe, -1), axis=-1)
    loss = -ops.convert_to_numpy(ops.squeeze(picked, -1)).astype(np.float64)
    if not np.isfinite(loss[keep]).all():
        raise ValueError("non-finite cross-entropy on unmasked tokens: the model's logits are not")
    return float(np.sum(np.where(keep, loss, 0.0))), int(keep.sum())


def analysis_rows(windows: Windows, limit: int) -> np.ndarray:
    """Flat indices (into `[N * T]`) of up to `limit` valid tokens, evenly spaced.

    Args:
        windows: the held-out windows.
        limit: the most tokens to keep.

    Returns:
        Sorted int indices of tokens with a label.
    """
    valid = np.flatnonzero(windows.sample_weight.reshape(-1) != 0)
    return valid[evenly_spaced(len(valid), limit)]


def evaluate_model(model: keras.Model, heldout: Windows, rows: np.ndarray, batch: int) -> dict:
    """Held-out per-token CE, perplexity and top-1, and the logits of the analysis tokens.

    Args:
        model: a causal LM.
        heldout: the held-out windows.
        rows: flat indices of the analysis tokens (`analysis_rows`).
        batch: windows per forward pass.

    Returns:
        Dict with `cross_entropy` (nats per token), `perplexity`, `bits_per_byte`,
        `top1` (next-byte accuracy), `tokens`, and `logits` (float32
        `[len(rows), C]`, removed before the JSON is written).
    """
    total, count, correct = 0.0, 0, 0
    seq_len = heldout.labels.shape[1]
    kept = []
    for start in range(0, len(heldout.labels), batch):
        part = heldout.take(slice(start, start + batch))
        logits = np.asarray(ops.convert_to_numpy(model.predict_on_batch(part.inputs())))
        part_sum, part_count = masked_cross_entropy(logits, part.labels, part.sample_weight)
        total, count = total + part_sum, count + part_count
        hits = (np.argmax(logits, axis=-1) == part.labels) & (part.sample_weight != 0)
        correct += int(hits.sum())
        local = rows[(rows >= start * seq_len) & (rows < (start + len(part.labels)) * seq_len)]
        kept.append(logits.reshape(-1, logits.shape[-1])[local - start * seq_len])
    mean = total / count
    return {
        "cross_entropy": mean,
        "perplexity": math.exp(mean),
        "bits_per_byte": mean / math.log(2.0),
        "top1": correct / count,
        "tokens": count,
        "logits": np.concatenate(kept).astype(np.float32),
    }


def tau_star_summary(logits: np.ndarray, labels: np.ndarray) -> dict:
    """The teacher's ISATS temperature per token: its distribution over the search grid.

    Args:
        logits: float32 `[N, C]` teacher logits of the analysis tokens.
        labels: int `[N]` their next bytes.

    Returns:
        `tau_star_stats`' summary (no per-token arrays) plus `histogram`: the
        grid's temperatures and how many tokens the teacher ranks right (the
        ones ISATS uses tau* for) have each as tau*.
    """
    stats = tau_star_stats(logits, labels)
    tau, correct = stats.pop("tau_star"), stats.pop("correct")
    grid = ops.convert_to_numpy(
        temperature_grid(
            stats["min_temperature"], stats["max_temperature"], stats["num_candidates"]
        )
    )
    nearest = np.argmin(np.abs(np.log(tau[correct, None]) - np.log(grid[None, :])), axis=-1)
    stats["histogram"] = {
        "temperature": [round(float(t), 4) for t in grid],
        "correct_tokens": np.bincount(nearest, minlength=len(grid)).tolist(),
    }
    return stats


def model_summary(model: keras.Model, evaluation: dict, labels: np.ndarray) -> dict:
    """One model's row of results.json: its size, held-out CE and non-target variance."""
    logits = evaluation.pop("logits")
    variance = non_target_stats(logits, labels, VARIANCE_TEMPERATURE)
    return {
        "params": int(model.count_params()),
        **evaluation,
        "non_target_variance_t4": variance["variance"],
        "non_target_std_t4": variance["std"],
    }


# ------------------------------------------------------------------------- report
def markdown_table(models: dict) -> str:
    """The results as a markdown table, one row per model.

    Args:
        models: results.json's `models` entry.

    Returns:
        The table's text.
    """
    lines = [
        "| model | params | held-out CE (nats/byte) | perplexity | bits/byte | next-byte top-1 "
        "| non-target var T=4 | time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in models.items():
        lines.append(
            f"| {name} | {row['params']:,} | {row['cross_entropy']:.4f} | "
            f"{row['perplexity']:.3f} | {row['bits_per_byte']:.3f} | {100 * row['top1']:.1f}% | "
            f"{row['non_target_variance_t4']:.3e} | {row['time_s']:.0f} |"
        )
    return "\n".join(lines)


def set_threads(threads: int) -> str:
    """Sets torch's CPU threads when asked; says what was done.

    Args:
        threads: threads, 0 for the library default.

    Returns:
        A line for the log and results.json.
    """
    if threads == 0:
        return "default"
    if keras.backend.backend() != "torch":
        return f"default (--threads applies to torch; this is {keras.backend.backend()})"
    import torch

    torch.set_num_threads(threads)
    return f"torch.set_num_threads({threads})"


def load_corpus(s: dict) -> tuple[Windows, Windows, dict]:
    """The training and held-out windows, and the corpus's record for results.json."""
    root = Path(s["corpus_dir"])
    files = corpus_files(root)
    train_files, heldout_files = split_files(files, s["heldout_percent"])
    train = load_windows(root, train_files, s["seq_len"], s["train_sequences"])
    heldout = load_windows(root, heldout_files, s["seq_len"], s["eval_sequences"])
    record = {
        "name": corpus_name(s["corpus_dir"]),
        "digest": corpus_digest(root, files),
        "files": {"train": len(train_files), "heldout": len(heldout_files)},
        "windows": {"train": len(train.labels), "heldout": len(heldout.labels)},
        "tokens": {
            "train": int(train.sample_weight.sum()),
            "heldout": int(heldout.sample_weight.sum()),
        },
    }
    return train, heldout, record


def train_model(name: str, train: Windows, s: dict, teacher: keras.Model | None = None):
    """Builds and trains one model: the teacher, or a student (`ce`, `kd`, `isats`).

    Every student starts from the same weights (seed `--seed + 1`).

    Args:
        name: "teacher" or a student's name.
        train: the training windows.
        s: the settings.
        teacher: the trained teacher (for `kd` and `isats`).

    Returns:
        `(model, seconds of training)`.
    """
    role = "teacher" if name == "teacher" else "student"
    keras.utils.set_random_seed(s["seed"] + (role == "student"))
    model = causal_lm(
        s[f"{role}_layers"], s[f"{role}_hidden"], s[f"{role}_heads"], s["seq_len"], name
    )
    start = time.perf_counter()
    if name in ("teacher", "ce"):
        fit_with_ce(model, train, s[f"{role}_epochs"], s)
    else:
        distil(teacher, model, student_policy(name, s), train, s)
    return model, time.perf_counter() - start


def run(argv: Sequence[str]) -> dict:
    """Trains the teacher and the three students, evaluates them, prints and writes the results.

    Args:
        argv: the command line, program name first.

    Returns:
        The content of results.json.
    """
    started = time.perf_counter()
    s = settings(argv)
    threads = set_threads(s["threads"])
    train, heldout, corpus = load_corpus(s)
    print(
        f"corpus {corpus['name']}: {corpus['files']['train']} training / "
        f"{corpus['files']['heldout']} held-out files; {corpus['tokens']['train']:,} training "
        f"and {corpus['tokens']['heldout']:,} held-out tokens (bytes)",
        flush=True,
    )
    rows = analysis_rows(heldout, s["analysis_tokens"])
    labels = heldout.labels.reshape(-1)[rows]
    models, teacher, tau_star = {}, None, None
    for name in ("teacher", *STUDENTS):
        model, seconds = train_model(name, train, s, teacher)
        evaluation = evaluate_model(model, heldout, rows, max(s["batch_size"], 64))
        if name == "teacher":
            teacher, tau_star = model, tau_star_summary(evaluation["logits"], labels)
        models[name] = {**model_summary(model, evaluation, labels), "time_s": seconds}
        print(f"{name}: held-out CE {models[name]['cross_entropy']:.4f}", flush=True)
    results = {
        "backend": keras.backend.backend(),
        "preset": s["preset"],
        "seed": s["seed"],
        "settings": {k: v for k, v in s.items() if k not in ("corpus_dir", "output_dir")},
        "threads": threads,
        "corpus": corpus,
        "analysis_tokens": int(len(rows)),
        "models": models,
        "teacher_tau_star": tau_star,
        "wall_time_s": time.perf_counter() - started,
    }
    out = Path(s["output_dir"])
    files.write_json(out / "results.json", results)  # strict: NaN as null
    print(report(results, out), flush=True)
    return results


def report(results: dict, out: Path) -> str:
    """The closing summary: the table, the teacher's tau*, the wall time."""
    tau = results["teacher_tau_star"]
    return (
        f"\n{markdown_table(results['models'])}\n\n"
        f"teacher tau* over {results['analysis_tokens']:,} held-out tokens: median "
        f"{tau['median']:.2f} (10%-90%: {tau['q10']:.2f}-{tau['q90']:.2f}); "
        f"{100 * tau['misclassified']:.1f}% misranked (ISATS falls back to plain KD there), "
        f"median over the rest {tau['median_correct']:.2f}\n"
        f"{results['backend']}, {results['wall_time_s']:.0f} s in all; "
        f"results in {out / 'results.json'}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The entry point: returns the exit status."""
    run(sys.argv if argv is None else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
