"""Step-time cost of distillation against its physical limit, per policy and backend.

For each teacher -> student pair and each `jit_compile` setting, times in one
process, after warm-up, in interleaved (round-robin) rounds:

- `student`: the student's own train step (cross-entropy only);
- `teacher`: the teacher's compiled inference step (`predict_function`);
- `distill/<policy>`: the `keras_kdcap.Distiller` train step with that policy;
- `distill/none` (diagnostic): the Distiller with its KD term replaced by 0
  (teacher forward, CE, metrics: the Distiller's plumbing without the policy);
- `cached/kd`, `cached/none` (diagnostic): the same Distillers fed precomputed
  teacher logits (`{"inputs": x, "teacher_logits": f}`): no teacher in the step,
  so `cached/* / student` is the Distiller's own overhead and
  `(distill/kd - cached/kd) / teacher` what the teacher costs inside the step
  relative to its compiled inference;
- `keras_distiller`: `keras.distillation.Distiller` with
  `LogitsDistillation(temperature=4, loss=KLDivergence())`, where Keras has it;
- `isats_search` / `isats_brute_force`: `keras_kdcap.policies.isats.isats_temperature`
  compiled, against a per-sample, per-candidate NumPy float64 loop.

and reports ratios (median of the per-round ratios) against their goals:

| ratio | goal |
|---|---|
| distill/<policy> / (student + teacher) | <= 1.05 (physical limit 1.0) |
| distill/isats / distill/kd | <= 1.03 |
| distill/kd / keras_distiller | <= 1.0 |
| isats_search / isats_brute_force | (speed-up, no goal) |

    KERAS_BACKEND=jax python benchmarks/step_time.py --pairs=small --repeats=5
    python benchmarks/step_time.py --pairs=small,realistic --jit_compile=both

Writes `benchmarks/results/step_time_<backend>.json` (or `--output`) with
the device, backend and versions, and prints markdown tables.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from absl import app, flags
from keras import ops

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

from keras_kdcap import Distiller  # noqa: E402
from keras_kdcap.experiment.cli import define_flag_table, import_policy_modules  # noqa: E402
from keras_kdcap.models import count_params, get_model  # noqa: E402
from keras_kdcap.policies import TemperaturePolicy, get_policy_names  # noqa: E402
from keras_kdcap.policies.isats import isats_temperature  # noqa: E402
from keras_kdcap.policies.registry import (  # noqa: E402
    convert_arguments,
    parse_policy_args,
    policy_arguments,
    policy_class,
)

#: named teacher -> student pairs.
PAIRS = {
    "small": ("resnet20", "resnet8"),
    "realistic": ("resnet32x4", "resnet8x4"),
}
NUM_CLASSES = 100
IMAGE_SHAPE = (32, 32, 3)
#: goals of the ratios (METHODS.md / the issue); None: reported, no goal.
GOALS = {"distill_vs_limit": 1.05, "isats_vs_kd": 1.03, "kd_vs_keras": 1.0}
ISATS_SEARCH = {"min_temperature": 0.5, "max_temperature": 20.0, "num_candidates": 32}

FLAGS = flags.FlagValues()
define_flag_table(
    FLAGS,
    {
        "pairs": (
            "small",
            "Comma list of pairs: names ("
            + ", ".join(f"{k}={t}:{s}" for k, (t, s) in PAIRS.items())
            + ") or teacher:student zoo names.",
        ),
        "batch_size": (64, "Batch size of every step."),
        "repeats": (10, "Timed rounds (median over rounds)."),
        "steps": (5, "Steps per variant per round."),
        "warmup": (3, "Untimed steps per variant after compilation."),
        "policies": ("kd,ats,isats,fgcr", "Comma list of keras_kdcap policy names."),
        "policy_args": (
            "",
            "Constructor arguments of the policies, name=value comma list (e.g. "
            "temperature=2); each goes to every listed policy that takes it.",
        ),
        "policy_module": (
            None,
            "Comma list of Python modules to import first: policies they define (with a "
            "`registry_name`) can then be named in --policies.",
        ),
        "jit_compile": (
            "auto",
            "jit_compile of every model. auto: both on TensorFlow (graph vs XLA), true on JAX "
            "(false there is op-by-op eager execution), false on torch (true is torch.compile).",
            ["auto", "true", "false", "both"],
        ),
        "step_api": (
            "function",
            "How steps are called: function (model.train_function / predict_function, as fit "
            "does), on_batch (train_on_batch / predict_on_batch), or auto (time both on the "
            "student, record both, use the faster for every variant). on_batch's per-call costs "
            "(metric resets, logs to Python, on JAX a write-back of every variable) grow with "
            "the model's state and so weigh on the Distiller, which carries the teacher's "
            "variables.",
            ["auto", *_common.STEP_APIS],
        ),
        "keras_distiller": (True, "Time keras.distillation.Distiller where it exists."),
        "diagnose": (
            True,
            "Add the distill/none variant, the per-policy KD-term timings and dtype/teacher "
            "checks.",
        ),
        "op_counts": (
            True,
            "With --diagnose, count the primitive ops of every step (traces each step once more).",
        ),
        "seed": (0, "Seed of the models and the batch."),
        "output": (None, "JSON path (default benchmarks/results/step_time_<backend>.json)."),
    },
)
_common.define_threads_flag(FLAGS)


class NullKD(TemperaturePolicy):
    """Diagnostic policy: the KD term is 0, the teacher logits stand in for the target.

    The Distiller still runs the teacher, the cross-entropy and all its
    metrics, so `distill/none - (student + teacher)` is the Distiller's own
    overhead and `distill/<policy> - distill/none` the policy's.
    """

    requires_labels = False

    def kd_loss(self, teacher_logits, student_logits, labels, temperature_scaling: bool = True):
        """A zero KD loss (no gradient into the student through KD).

        Args:
            teacher_logits: `[B, C]` teacher logits.
            student_logits: `[B, C]` student logits.
            labels: int `[B]` labels.
            temperature_scaling: unused.

        Returns:
            `(zeros [B], teacher_logits, {})`.
        """
        return ops.zeros_like(teacher_logits[:, 0]), teacher_logits, {}


# ----------------------------------------------------------------------- set-up
def parse_pairs(text: str) -> list[tuple[str, str, str]]:
    """Reads `--pairs`.

    Args:
        text: comma list of pair names or `teacher:student`.

    Returns:
        `(label, teacher, student)` triples.
    """
    pairs = []
    for item in _common.parse_list(text):
        if item in PAIRS:
            pairs.append((item, *PAIRS[item]))
        elif ":" in item:
            teacher, student = item.split(":", 1)
            pairs.append((f"{teacher}->{student}", teacher, student))
        else:
            raise app.UsageError(
                f"--pairs: {item!r} is neither one of {sorted(PAIRS)} nor teacher:student."
            )
    if not pairs:
        raise app.UsageError("--pairs is empty.")
    return pairs


def jit_settings(choice: str, backend: str) -> list[bool]:
    """The `jit_compile` values to time.

    Args:
        choice: `auto`, `true`, `false` or `both`.
        backend: the Keras backend.

    Returns:
        A list of booleans.
    """
    if choice == "auto":
        return {"tensorflow": [False, True], "jax": [True], "torch": [False]}.get(backend, [False])
    return {"true": [True], "false": [False], "both": [False, True]}[choice]


def has_keras_distiller() -> bool:
    """Whether this Keras has `keras.distillation.Distiller` (Keras >= 3.12)."""
    distillation = getattr(keras, "distillation", None)
    return distillation is not None and hasattr(distillation, "Distiller")


def build_model(name: str, seed: int) -> keras.Model:
    """A zoo model with seeded initialisation.

    Args:
        name: zoo name.
        seed: initialisation seed.

    Returns:
        The model, built for 32x32x3 inputs.
    """
    keras.utils.set_random_seed(seed)
    return get_model(name, num_classes=NUM_CLASSES)


def policy_kwargs(name: str, args: dict[str, str]) -> dict[str, Any]:
    """The `--policy_args` a policy takes, typed by its constructor.

    Args:
        name: registry name.
        args: `parse_policy_args` of `--policy_args`.

    Returns:
        Keyword arguments for the policy's constructor.
    """
    cls = policy_class(name)
    takes = policy_arguments(cls)
    return convert_arguments(cls, {k: v for k, v in args.items() if k in takes})


def make_policy(
    name: str, teacher: keras.Model, args: dict[str, str] | None = None
) -> TemperaturePolicy:
    """A policy by registry name, prepared for `teacher` without data (`policy.prepare`).

    Args:
        name: registry name, or `none` for the diagnostic `NullKD`.
        teacher: the teacher (e.g. FGCR reads its classifier kernel).
        args: `--policy_args` as parsed text; each goes to the policy if it takes it.

    Returns:
        The policy.
    """
    if name == "none":
        return NullKD(name="null_kd")
    policy = policy_class(name)(**policy_kwargs(name, args or {}))
    policy.prepare(teacher, None)
    return policy


def _optimizer() -> keras.optimizers.Optimizer:
    return keras.optimizers.SGD(0.05, momentum=0.9)


def _ce() -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def build_variants(
    teacher_name: str,
    student_name: str,
    policies: Sequence[str],
    jit_compile: bool,
    seed: int,
    with_keras: bool,
    policy_args: dict[str, str] | None = None,
) -> tuple[dict[str, tuple[keras.Model, str]], keras.Model]:
    """Builds and compiles every model to time for one pair and one jit setting.

    Args:
        teacher_name: zoo name of the teacher.
        student_name: zoo name of the student.
        policies: policy flag names (plus `none` for the diagnostic).
        jit_compile: passed to every `compile`.
        seed: initialisation seed (every student starts from the same weights).
        with_keras: add `keras.distillation.Distiller`.
        policy_args: `--policy_args` (see `make_policy`).

    Returns:
        `(variants, teacher)`: name -> `(model, "train" | "predict")`.
    """
    teacher = build_model(teacher_name, seed + 1)
    teacher.compile(jit_compile=jit_compile)
    variants: dict[str, tuple[keras.Model, str]] = {"teacher": (teacher, "predict")}
    student = build_model(student_name, seed)
    student.compile(optimizer=_optimizer(), loss=_ce(), jit_compile=jit_compile)
    variants["student"] = (student, "train")
    for name in policies:
        distiller = Distiller(teacher, build_model(student_name, seed))
        distiller.compile(
            optimizer=_optimizer(),
            policy=make_policy(name, teacher, policy_args),
            jit_compile=jit_compile,
        )
        variants[f"distill/{name}"] = (distiller, "train")
    if with_keras:
        distillation = keras.distillation
        reference = distillation.Distiller(
            teacher=teacher,
            student=build_model(student_name, seed),
            distillation_losses=distillation.LogitsDistillation(
                temperature=4.0, loss=keras.losses.KLDivergence()
            ),
            student_loss_weight=0.1,
        )
        reference.compile(optimizer=_optimizer(), loss=_ce(), jit_compile=jit_compile)
        variants["keras_distiller"] = (reference, "train")
    return variants, teacher


def make_batch(batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random batch of CIFAR-shaped images and labels.

    Args:
        batch_size: B.
        seed: NumPy seed.

    Returns:
        `(float32 [B, 32, 32, 3], int32 [B])`.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size, *IMAGE_SHAPE)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size=batch_size).astype("int32")
    return x, y


# ------------------------------------------------------------------ ISATS search
def brute_force_search(
    logits: np.ndarray, labels: np.ndarray, return_values: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ISATS's grid arg-max, one sample and one candidate at a time, in float64 NumPy.

    Args:
        logits: `[B, C]` teacher logits.
        labels: `[B]` labels.
        return_values: also return the grid and the variance of every
            sample at every candidate.

    Returns:
        float64 `[B]` temperatures; with `return_values`, `(tau, grid [K],
        variance [B, K])`.
    """
    grid = np.exp(
        np.linspace(
            np.log(ISATS_SEARCH["min_temperature"]),
            np.log(ISATS_SEARCH["max_temperature"]),
            ISATS_SEARCH["num_candidates"],
        )
    )
    logits = np.asarray(logits, np.float64)
    values = np.empty((len(logits), len(grid)))
    for i, (row, label) in enumerate(zip(logits, labels, strict=True)):
        for j, tau in enumerate(grid):
            z = row / tau
            p = np.exp(z - z.max())
            p /= p.sum()
            values[i, j] = np.var(np.delete(p, label))
    best = grid[np.argmax(values, axis=1)]
    return (best, grid, values) if return_values else best


def search_agreement(fast: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples where the compiled search found the grid's maximum.

    A sample agrees when the temperature is the float64 arg-max, or a grid
    point whose float64 variance is within 1e-5 (relative) of the maximum: a
    tie that float32 cannot resolve (flat, untrained teachers produce them).

    Args:
        fast: `[B]` temperatures of `isats_temperature`.
        logits: `[B, C]` teacher logits.
        labels: `[B]` labels.

    Returns:
        A fraction in [0, 1].
    """
    _, grid, values = brute_force_search(logits, labels, return_values=True)
    index = np.argmin(np.abs(np.log(grid)[None, :] - np.log(fast)[:, None]), axis=1)
    picked = values[np.arange(len(values)), index]
    best = values.max(axis=1)
    return float(np.mean(picked >= best * (1.0 - 1e-5)))


def search_runners(
    teacher_logits: np.ndarray, labels: np.ndarray, jit_compile: bool
) -> tuple[dict[str, _common.CallableRunner], float]:
    """The compiled ISATS search and its brute-force loop, with their agreement.

    Args:
        teacher_logits: `[B, C]` logits.
        labels: `[B]` labels.
        jit_compile: compile the search with the backend's compiler.

    Returns:
        `(runners, agreement)`: the two runners and `search_agreement`.
    """
    logits_t = ops.convert_to_tensor(teacher_logits)
    labels_t = ops.convert_to_tensor(labels)

    def search(f, y):
        return isats_temperature(f, y, **ISATS_SEARCH)

    compiled = _common.compile_function(search, jit_compile)
    fast = np.asarray(ops.convert_to_numpy(compiled(logits_t, labels_t)), np.float64)
    agreement = search_agreement(fast, teacher_logits, labels)
    runners = {
        "isats_search": _common.CallableRunner(lambda: compiled(logits_t, labels_t)),
        "isats_brute_force": _common.CallableRunner(
            lambda: brute_force_search(teacher_logits, labels)
        ),
    }
    return runners, agreement


def kd_term_runners(
    policies: Sequence[str],
    teacher: keras.Model,
    teacher_logits: np.ndarray,
    labels: np.ndarray,
    jit_compile: bool,
    policy_args: dict[str, str] | None = None,
) -> dict[str, _common.CallableRunner]:
    """Each policy's KD term alone (value and gradient w.r.t. the student logits).

    Args:
        policies: policy flag names.
        teacher: the teacher (for FGCR's relations).
        teacher_logits: `[B, C]` logits.
        labels: `[B]` labels.
        jit_compile: compile with the backend's compiler.
        policy_args: `--policy_args` (see `make_policy`).

    Returns:
        name -> runner timing `policy.kd_loss` plus a backward pass.
    """
    rng = np.random.default_rng(1)
    student_logits = ops.convert_to_tensor(
        rng.standard_normal(teacher_logits.shape).astype("float32")
    )
    logits_t = ops.convert_to_tensor(teacher_logits)
    labels_t = ops.convert_to_tensor(labels)
    runners = {}
    for name in policies:
        policy = make_policy(name, teacher, policy_args)
        fn = _value_and_grad(policy)
        compiled = _common.compile_function(fn, jit_compile)
        compiled(logits_t, student_logits, labels_t)
        runners[f"kd_term/{name}"] = _common.CallableRunner(
            lambda c=compiled: c(logits_t, student_logits, labels_t)
        )
    return runners


def _value_and_grad(policy: TemperaturePolicy):
    """A backend-specific `(f, g, y) -> (mean KD, d KD / d g)` for one policy."""
    backend = keras.backend.backend()

    def loss(f, g, y):
        value, _, _ = policy.kd_loss(f, g, y, True)
        return ops.mean(value)

    if backend == "jax":
        import jax

        return jax.value_and_grad(loss, argnums=1)
    if backend == "tensorflow":
        import tensorflow as tf

        def tf_fn(f, g, y):
            with tf.GradientTape() as tape:
                tape.watch(g)
                value = loss(f, g, y)
            return value, tape.gradient(value, g)

        return tf_fn
    import torch

    def torch_fn(f, g, y):
        g = g.detach().requires_grad_(True)
        value = loss(f, g, y)
        (grad,) = torch.autograd.grad(value, g)
        return value, grad

    return torch_fn


# ------------------------------------------------------------------ diagnostics
def dtype_check(
    policies: Sequence[str],
    teacher: keras.Model,
    batch: int,
    policy_args: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Dtypes of each policy's KD loss, target and temperature on float32 inputs.

    Args:
        policies: policy flag names.
        teacher: the teacher (for FGCR).
        batch: rows of the random logits.
        policy_args: `--policy_args` (see `make_policy`).

    Returns:
        name -> `{"loss", "target", "float64": bool}`.
    """
    rng = np.random.default_rng(2)
    f = ops.convert_to_tensor(rng.standard_normal((batch, NUM_CLASSES)).astype("float32") * 5)
    g = ops.convert_to_tensor(rng.standard_normal((batch, NUM_CLASSES)).astype("float32"))
    y = ops.convert_to_tensor(rng.integers(0, NUM_CLASSES, batch).astype("int32"))
    report = {}
    for name in policies:
        loss, probs, stats = make_policy(name, teacher, policy_args).kd_loss(f, g, y, True)
        dtypes = {
            "loss": str(loss.dtype),
            "target": str(probs.dtype),
            **{k: str(v.dtype) for k, v in stats.items()},
        }
        report[name] = {
            **dtypes,
            "float64": any("64" in d and "int" not in d for d in dtypes.values()),
        }
    return report


def teacher_check(variants: dict[str, tuple[keras.Model, str]]) -> dict[str, Any]:
    """Whether any Distiller would differentiate (or update) the teacher.

    Args:
        variants: the built variants.

    Returns:
        name -> `{"trainable": n, "student_trainable": n, "teacher_trainable": n,
        "teacher_requires_grad": n or None}` (torch only for the last).
    """
    report = {}
    for name, (model, _) in variants.items():
        if not hasattr(model, "teacher"):
            continue
        requires_grad = None
        if keras.backend.backend() == "torch":
            requires_grad = sum(int(v.value.requires_grad) for v in model.teacher.weights)
        report[name] = {
            "trainable": len(model.trainable_weights),
            "student_trainable": len(model.student.trainable_weights),
            "teacher_trainable": len(model.teacher.trainable_weights),
            "teacher_requires_grad": requires_grad,
        }
    return report


# ----------------------------------------------------------------------- timing
def choose_api(student_name: str, x: np.ndarray, y: np.ndarray, cfg: dict[str, Any]) -> dict:
    """Times the student's train step through both step APIs; the faster wins.

    Args:
        student_name: zoo name.
        x: batch images.
        y: batch labels.
        cfg: the run configuration.

    Returns:
        `{"chosen", "times": {api: summary}, "ratio_on_batch_vs_function"}`.
    """
    jit = jit_settings(cfg["jit_compile"], keras.backend.backend())[0]
    runners = {}
    for api in _common.STEP_APIS:
        model = build_model(student_name, cfg["seed"])
        model.compile(optimizer=_optimizer(), loss=_ce(), jit_compile=jit)
        runners[api] = _common.StepRunner(model, x, y, kind="train", api=api)
    times = _common.round_robin(
        runners, max(3, cfg["repeats"] // 2), cfg["steps"], cfg["warmup"], np.random.default_rng(0)
    )
    summaries = {api: _common.summarize(t) for api, t in times.items()}
    chosen = min(summaries, key=lambda api: summaries[api]["median_ms"])
    return {
        "chosen": chosen,
        "jit_compile": jit,
        "times": summaries,
        "ratio_on_batch_vs_function": _common.paired_ratio(times["on_batch"], times["function"]),
    }


def ratio_rows(times: dict[str, list[float]], policies: Sequence[str]) -> dict[str, dict]:
    """The reported ratios of one pair and jit setting, with goals.

    Args:
        times: variant -> seconds per step per round.
        policies: timed policy names (without the diagnostic).

    Returns:
        ratio name -> `{"value", "q1", "q3", "of_minimums", "goal", "meets"}`;
        `meets` judges the median `value`.
    """
    limit = [s + t for s, t in zip(times["student"], times["teacher"], strict=True)]
    limit_minimum = min(times["student"]) + min(times["teacher"])
    ratios: dict[str, dict] = {}

    def add(name: str, numerator: list[float], denominator: list[float], goal: float | None):
        ratio = _common.paired_ratio(numerator, denominator)
        if denominator is limit:  # the limit's fastest is the sum of both fastest steps
            ratio["of_minimums"] = min(numerator) / limit_minimum
        ratio["goal"] = goal
        ratio["meets"] = None if goal is None else bool(ratio["value"] <= goal)
        ratios[name] = ratio

    for name in policies:
        add(
            f"distill/{name} / (student + teacher)",
            times[f"distill/{name}"],
            limit,
            GOALS["distill_vs_limit"],
        )
    if "distill/none" in times:
        add("distill/none / (student + teacher)", times["distill/none"], limit, None)
    for name in ("kd", "none"):
        if f"cached/{name}" in times:
            add(f"cached/{name} / student", times[f"cached/{name}"], times["student"], None)
    if "cached/kd" in times and "distill/kd" in times:
        in_step = [d - c for d, c in zip(times["distill/kd"], times["cached/kd"], strict=True)]
        add("(distill/kd - cached/kd) / teacher", in_step, times["teacher"], None)
    if "distill/isats" in times and "distill/kd" in times:
        add(
            "distill/isats / distill/kd",
            times["distill/isats"],
            times["distill/kd"],
            GOALS["isats_vs_kd"],
        )
    if "keras_distiller" in times and "distill/kd" in times:
        add(
            "distill/kd / keras_distiller",
            times["distill/kd"],
            times["keras_distiller"],
            GOALS["kd_vs_keras"],
        )
        add("keras_distiller / (student + teacher)", times["keras_distiller"], limit, None)
    if "isats_search" in times:
        add(
            "isats_search / isats_brute_force",
            times["isats_search"],
            times["isats_brute_force"],
            None,
        )
    return ratios


def bench_pair(
    label: str,
    teacher_name: str,
    student_name: str,
    jit_compile: bool,
    api: str,
    cfg: dict[str, Any],
) -> dict[str, Any]:
    """Builds, warms up and times every variant of one pair and jit setting.

    Args:
        label: the pair's name in tables.
        teacher_name: zoo name.
        student_name: zoo name.
        jit_compile: the models' jit setting.
        api: the step API (`function` or `on_batch`).
        cfg: the run configuration.

    Returns:
        The pair's JSON record.
    """
    x, y = make_batch(cfg["batch_size"], cfg["seed"])
    policies = list(cfg["policies"]) + (["none"] if cfg["diagnose"] else [])
    with_keras = cfg["keras_distiller"] and has_keras_distiller()
    start = time.perf_counter()
    variants, teacher = build_variants(
        teacher_name,
        student_name,
        policies,
        jit_compile,
        cfg["seed"],
        with_keras,
        cfg.get("policy_args"),
    )
    runners: dict[str, Any] = {
        name: _common.StepRunner(model, x, y if kind == "train" else None, kind=kind, api=api)
        for name, (model, kind) in variants.items()
    }
    teacher_logits = np.asarray(ops.convert_to_numpy(teacher.predict_on_batch(x)), np.float32)
    search, agreement = search_runners(teacher_logits, y, jit_compile)
    runners.update(search)
    diagnostics: dict[str, Any] = {"isats_search_agreement": agreement}
    if cfg["diagnose"]:
        # The same Distiller fed precomputed teacher logits: no teacher in the step.
        cached_x = {"inputs": x, "teacher_logits": teacher_logits}
        for name in ("kd", "none"):
            distiller = Distiller(teacher, build_model(student_name, cfg["seed"]))
            distiller.compile(
                optimizer=_optimizer(), policy=make_policy(name, teacher), jit_compile=jit_compile
            )
            runners[f"cached/{name}"] = _common.StepRunner(distiller, cached_x, y, api=api)
        args = cfg.get("policy_args")
        runners.update(
            kd_term_runners(cfg["policies"], teacher, teacher_logits, y, jit_compile, args)
        )
        diagnostics["dtypes"] = dtype_check(cfg["policies"], teacher, cfg["batch_size"], args)
        diagnostics["teacher"] = teacher_check(variants)
        if cfg["op_counts"]:
            diagnostics["op_counts"] = {
                name: _common.op_count(model, kind, x, y if kind == "train" else None)
                for name, (model, kind) in variants.items()
            }
    setup_seconds = time.perf_counter() - start
    load_before = _common.load_average()
    start = time.perf_counter()
    times = _common.round_robin(
        runners,
        cfg["repeats"],
        cfg["steps"],
        cfg["warmup"],
        np.random.default_rng(cfg["seed"]),
    )
    return {
        "pair": label,
        "teacher": teacher_name,
        "student": student_name,
        "teacher_params": count_params(teacher),
        "student_params": count_params(variants["student"][0]),
        "jit_compile": jit_compile,
        "step_api": api,
        "keras_distiller": "timed"
        if with_keras
        else ("absent from this Keras" if not has_keras_distiller() else "skipped by flag"),
        "setup_seconds": setup_seconds,
        "timing_seconds": time.perf_counter() - start,
        "load_average_before": load_before,
        "load_average_after": _common.load_average(),
        "times": {name: _common.summarize(t) for name, t in times.items()},
        "samples_ms": {name: [v * 1e3 for v in t] for name, t in times.items()},
        "ratios": ratio_rows(times, cfg["policies"]),
        "diagnostics": diagnostics,
    }


# ----------------------------------------------------------------------- report
def tables(results: dict[str, Any]) -> str:
    """Markdown tables of the step times and the ratios of every pair.

    Args:
        results: the JSON record of the run.

    Returns:
        The markdown text.
    """
    env = results["environment"]
    parts = [
        f"Backend {env['backend']}, device {env['device']}, step API "
        f"{results['step_api']['chosen']}, batch {results['config']['batch_size']}, "
        f"{results['config']['repeats']} rounds x {results['config']['steps']} steps."
    ]
    for record in results["pairs"]:
        head = (
            f"\n**{record['pair']}** ({record['teacher']} -> {record['student']}), "
            f"jit_compile={record['jit_compile']}"
        )
        rows = [
            [name, f"{s['median_ms']:.2f}", f"{s['q1_ms']:.2f}-{s['q3_ms']:.2f}"]
            for name, s in record["times"].items()
        ]
        parts.append(head)
        parts.append(_common.markdown_table(["variant", "median ms/step", "IQR"], rows))
        rows = []
        for name, r in record["ratios"].items():
            goal = "-" if r["goal"] is None else f"<= {r['goal']:.2f}"
            meets = "-" if r["meets"] is None else ("yes" if r["meets"] else "**no**")
            rows.append(
                [
                    name,
                    f"{r['value']:.3f}",
                    f"{r['q1']:.3f}-{r['q3']:.3f}",
                    f"{r['of_minimums']:.3f}",
                    goal,
                    meets,
                ]
            )
        parts.append("")
        parts.append(
            _common.markdown_table(
                ["ratio", "median", "IQR", "of fastest rounds", "goal", "met"], rows
            )
        )
        counts = record["diagnostics"].get("op_counts")
        if counts and all(c.get("ops") is not None for c in counts.values()):
            base = counts["student"]["ops"] + counts["teacher"]["ops"]
            unit = counts["student"]["unit"]
            syncs = all("host_syncs" in c for c in counts.values())
            rows = [
                [name, c["ops"], "-" if name in ("student", "teacher") else f"{c['ops'] - base:+d}"]
                + ([c["host_syncs"]] if syncs else [])
                for name, c in counts.items()
            ]
            headers = [f"variant ({unit})", "ops", "vs student + teacher"]
            parts.append("")
            parts.append(_common.markdown_table(headers + (["host syncs"] if syncs else []), rows))
    return "\n".join(parts)


def run_benchmark(cfg: dict[str, Any]) -> dict[str, Any]:
    """Runs the whole benchmark for the current backend and writes the JSON.

    Args:
        cfg: the configuration (`config_from_flags`).

    Returns:
        The JSON record (also written to `cfg["output"]`).
    """
    backend = keras.backend.backend()
    start = time.perf_counter()
    environment = _common.environment_with_threads(cfg["threads"])
    pairs = parse_pairs(cfg["pairs"])
    x, y = make_batch(cfg["batch_size"], cfg["seed"])
    if cfg["step_api"] == "auto":
        step_api = choose_api(pairs[0][2], x, y, cfg)
    else:
        step_api = {"chosen": cfg["step_api"]}
    records = []
    for jit in jit_settings(cfg["jit_compile"], backend):
        for label, teacher_name, student_name in pairs:
            print(
                f"[step_time] {label}: {teacher_name} -> {student_name}, jit_compile={jit}",
                flush=True,
            )
            records.append(
                bench_pair(label, teacher_name, student_name, jit, step_api["chosen"], cfg)
            )
    results = {
        "benchmark": "step_time",
        "command": " ".join(cfg["argv"]),
        "environment": environment,
        "config": {k: v for k, v in cfg.items() if k != "argv"},
        "goals": GOALS,
        "step_api": step_api,
        "pairs": records,
        "load_average_end": _common.load_average(),
        "total_seconds": time.perf_counter() - start,
    }
    text = tables(results)
    results["markdown"] = text
    print(text)
    path = _common.write_json(cfg["output"], results)
    print(f"[step_time] wrote {path}")
    return results


def check_policy_args(policies: Sequence[str], text: str) -> dict[str, str]:
    """Parses `--policy_args` and builds every policy with them once (their own checks).

    Args:
        policies: registry names.
        text: the flag's value.

    Returns:
        Argument name -> value text.

    Raises:
        app.UsageError: a malformed item, an argument no listed policy takes, or a
            value a policy rejects; the message names the argument.
    """
    try:
        args = parse_policy_args(text)
    except ValueError as err:
        raise app.UsageError(f"--policy_args: {err}") from None
    for name in args:
        if not any(name in policy_arguments(policy_class(p)) for p in policies):
            raise app.UsageError(
                f"--policy_args: {name!r} is an argument of none of --policies={','.join(policies)}"
            )
    for policy in policies:
        try:
            policy_class(policy)(**policy_kwargs(policy, args))
        except (TypeError, ValueError) as err:
            raise app.UsageError(f"--policy_args ({policy}): {err}") from None
    return args


def config_from_flags(argv: Sequence[str]) -> dict[str, Any]:
    """The run configuration from the parsed flags.

    Args:
        argv: the command line (recorded).

    Returns:
        A dict of settings.
    """
    backend = keras.backend.backend()
    import_policy_modules(FLAGS.policy_module)
    policies = _common.parse_list(FLAGS.policies)
    if not policies:
        raise app.UsageError("--policies is empty.")
    unknown = [n for n in policies if n not in get_policy_names()]
    if unknown:
        raise app.UsageError(f"--policies: unknown {unknown}; choose from {get_policy_names()}.")
    policy_args = check_policy_args(policies, FLAGS.policy_args)
    _common.check_at_least_one(FLAGS.flag_values_dict(), ("batch_size", "repeats", "steps"))
    if FLAGS.warmup < 0:
        raise app.UsageError("--warmup must be >= 0.")
    parse_pairs(FLAGS.pairs)
    output = FLAGS.output or str(_common.RESULTS_DIR / f"step_time_{backend}.json")
    return {
        "argv": list(argv),
        "pairs": FLAGS.pairs,
        "batch_size": FLAGS.batch_size,
        "repeats": FLAGS.repeats,
        "steps": FLAGS.steps,
        "warmup": FLAGS.warmup,
        "policies": policies,
        "policy_args": policy_args,
        "jit_compile": FLAGS.jit_compile,
        "step_api": FLAGS.step_api,
        "keras_distiller": FLAGS.keras_distiller,
        "diagnose": FLAGS.diagnose,
        "op_counts": FLAGS.op_counts,
        "seed": FLAGS.seed,
        "threads": FLAGS.threads,
        "output": output,
    }


#: `main(argv)` -> the results dict (also written to JSON), e.g.
#: `main(["step_time", "--pairs=small", "--repeats=2"])`.
main = _common.benchmark_main(FLAGS, config_from_flags, run_benchmark)


if __name__ == "__main__":
    _common.run_as_script(FLAGS, main)
