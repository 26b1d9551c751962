"""Shared pieces of the benchmarks: environment record, step runners, tables and JSON.

The step runners call the Keras trainer's own compiled functions
(`model.train_function` / `model.predict_function`) the way `fit` and
`predict` do, so that a timing measures the compiled step and not the
per-call bookkeeping of `train_on_batch` (metric resets, conversion of the
logs to Python, JAX state write-back). `train_on_batch` / `predict_on_batch`
are available too, to measure that difference.
"""

from __future__ import annotations

import itertools
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import keras
import numpy as np

from keras_kdcap import files
from keras_kdcap.experiment.cli import split_list

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
STEP_APIS = ("function", "on_batch")


# --------------------------------------------------------------------- environment
def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def accelerators() -> list[str]:
    """Names of the accelerators the current Keras backend sees (empty on CPU).

    Returns:
        A list of device descriptions, e.g. `["cuda:0 NVIDIA H200"]`.
    """
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            return [
                f"{d.platform}:{d.id} {d.device_kind}" for d in jax.devices() if d.platform != "cpu"
            ]
        if backend == "torch":
            import torch

            return [
                f"cuda:{i} {torch.cuda.get_device_name(i)}"
                for i in range(torch.cuda.device_count())
            ]
        if backend == "tensorflow":
            import tensorflow as tf

            return [d.name for d in tf.config.list_physical_devices("GPU")]
    except Exception as error:  # noqa: BLE001 - a record, never a failure
        return [f"unknown ({type(error).__name__})"]
    return []


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages (None where the OS has none).

    Returns:
        Three floats, or None.
    """
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def environment() -> dict[str, Any]:
    """What a result depends on: backend, device, library versions, machine load.

    Returns:
        A JSON-ready dict.
    """
    backend = keras.backend.backend()
    backend_package = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    devices = accelerators()
    return {
        "backend": backend,
        "device": devices[0] if devices else f"cpu: {_cpu_model()}",
        "accelerators": devices,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average": load_average(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {
            "keras": keras.__version__,
            "keras_kdcap": _version("keras-kdcap"),
            "numpy": np.__version__,
            backend_package or backend: _version(backend_package) if backend_package else None,
            "jaxlib": _version("jaxlib") if backend == "jax" else None,
        },
        "floatx": keras.config.floatx(),
        "dtype_policy": keras.config.dtype_policy().name,
    }


# ----------------------------------------------------------------------- output
#: numpy values and paths to Python, NaN/inf to None (strict JSON).
jsonable = files.jsonable


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Writes `payload` as indented strict JSON with paths relative to the repository, atomically.

    Args:
        path: destination file.
        payload: the results.

    Returns:
        The path written.
    """
    return files.write_json(path, payload, relative_to=REPO)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table.

    Args:
        headers: column titles.
        rows: cells (converted with `str`).

    Returns:
        The table, one row per line.
    """
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


#: splits a comma list flag, dropping blanks.
parse_list = split_list


def parse_flags(flag_values: Any, argv: Sequence[str]) -> None:
    """Parses a script's own `FlagValues` from `argv` (program name first), anew.

    Args:
        flag_values: the script's `absl.flags.FlagValues`.
        argv: the command line.
    """
    from absl import app

    flag_values.unparse_flags()
    rest = flag_values(list(argv))
    if len(rest) > 1:
        raise app.UsageError(f"unexpected arguments: {rest[1:]}")


def check_at_least_one(values: Mapping[str, Any], names: Sequence[str]) -> None:
    """Raises a usage error naming the first flag in `names` whose value is below 1.

    Args:
        values: flag name -> value (`FlagValues.flag_values_dict()` or a config).
        names: the flags to check.
    """
    from absl import app

    for name in names:
        if values[name] < 1:
            raise app.UsageError(f"--{name} must be >= 1.")


def benchmark_main(
    flag_values: Any,
    config_from_flags: Callable[[Sequence[str]], dict[str, Any]],
    run_benchmark: Callable[[dict[str, Any]], dict[str, Any]],
) -> Callable[[Sequence[str]], dict[str, Any]]:
    """A script's `main(argv)`: parse `argv` (program name first), build the config, run.

    Args:
        flag_values: the script's `absl.flags.FlagValues`.
        config_from_flags: the parsed flags (and `argv`, recorded) -> the run configuration.
        run_benchmark: the configuration -> the results dict (also written to JSON).

    Returns:
        `main(argv) -> results`, e.g. `main(["step_time", "--pairs=small"])`.
    """

    def main(argv: Sequence[str]) -> dict[str, Any]:
        parse_flags(flag_values, argv)
        return run_benchmark(config_from_flags(argv))

    return main


def run_as_script(flag_values: Any, run: Callable[[Sequence[str]], Any]) -> None:
    """Runs `run(sys.argv)` under `absl.app.run` with the script's flags registered.

    Args:
        flag_values: the script's `absl.flags.FlagValues` (parsed by `app.run`).
        run: called with the command line once the flags are parsed.
    """
    from absl import app, flags

    flags.FLAGS.append_flag_values(flag_values)

    def _main(argv: Sequence[str]) -> None:
        flag_values.mark_as_parsed()
        run(sys.argv)

    app.run(_main)


# ------------------------------------------------------------------ synchronising
def block(value: Any) -> Any:
    """Waits until every tensor in `value` is computed (asynchronous backends).

    Args:
        value: a nested structure of backend tensors.

    Returns:
        `value`.
    """
    backend = keras.backend.backend()
    leaves = keras.tree.flatten(value)
    if backend == "jax":
        import jax

        jax.block_until_ready(leaves)
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    else:
        for leaf in leaves:  # converting one scalar per output waits for the step
            if hasattr(leaf, "numpy"):
                leaf.numpy()
    return value


def compile_function(fn: Callable, jit_compile: bool) -> Callable:
    """Compiles a tensor function for the current backend where `jit_compile` asks for it.

    TensorFlow: `tf.function` (XLA when `jit_compile`); JAX: `jax.jit` (eager
    otherwise); torch: eager (torch.compile is not used by these benchmarks).

    Args:
        fn: function of tensors.
        jit_compile: use the backend's compiler.

    Returns:
        The callable to time.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=bool(jit_compile), reduce_retracing=True)
    if backend == "jax" and jit_compile:
        import jax

        return jax.jit(fn)
    return fn


# ---------------------------------------------------------------- step runners
def jax_state(model: keras.Model, kind: str) -> Any:
    """The JAX state a compiled train or predict step of `model` takes (its variables).

    Args:
        model: a built (for `"train"`, compiled) model.
        kind: `"train"` (with the optimizer and metrics variables) or `"predict"`.

    Returns:
        The state tuple of `model._get_jax_state`.
    """
    training = kind == "train"
    return model._get_jax_state(
        trainable_variables=True,
        non_trainable_variables=True,
        optimizer_variables=training,
        metrics_variables=training,
        purge_model_variables=False,
    )


class StepRunner:
    """Runs one compiled Keras step (train or predict) on a fixed batch, repeatedly.

    With `api="function"` it calls `model.train_function` /
    `model.predict_function` as `fit`/`predict` do (a repeating tf.data
    iterator on TensorFlow, threaded state on JAX, the step closure on
    torch); with `api="on_batch"` it calls `train_on_batch` /
    `predict_on_batch`. `run(n)` executes `n` steps and waits for the last.

    Args:
        model: a compiled Keras model (train) or any built model (predict).
        x: the input batch (a tensor or a dict of tensors).
        y: the labels (train only).
        kind: `"train"` or `"predict"`.
        api: `"function"` or `"on_batch"`.
    """

    def __init__(
        self, model: keras.Model, x: Any, y: Any = None, kind: str = "train", api: str = "function"
    ):
        if kind not in ("train", "predict"):
            raise ValueError(f"`kind` must be 'train' or 'predict'; got {kind!r}.")
        if api not in STEP_APIS:
            raise ValueError(f"`api` must be one of {STEP_APIS}; got {api!r}.")
        if kind == "train" and y is None:
            raise ValueError("A train step needs labels `y`.")
        self.model, self.kind, self.api = model, kind, api
        self.x, self.y = x, y
        self.backend = keras.backend.backend()
        # First call through the public API: builds the model, optimizer and metrics
        # and creates the compiled function that the "function" API reuses.
        if kind == "train":
            model.train_on_batch(x, y)
        else:
            model.predict_on_batch(x)
        self._step = self._make_step()

    def _make_step(self) -> Callable[[], Any]:
        model, x, y = self.model, self.x, self.y
        if self.api == "on_batch":
            if self.kind == "train":
                return lambda: model.train_on_batch(x, y)
            return lambda: model.predict_on_batch(x)
        data = (x, y) if self.kind == "train" else (x,)
        if self.backend == "tensorflow":
            import tensorflow as tf

            if self.kind == "train":
                iterator = iter(tf.data.Dataset.from_tensors(data).repeat())
                return lambda: model.train_function(iterator)
            return lambda: model.predict_function([data])
        if self.backend == "jax":
            import jax
            import jax.numpy as jnp

            data = keras.tree.map_structure(jnp.asarray, data)
            state = jax_state(model, self.kind)
            function = model.train_function if self.kind == "train" else model.predict_function
            # The jitted steps donate their state: work on a private copy so that
            # variables shared with other models (a teacher) stay valid.
            holder = {"state": jax.tree_util.tree_map(jnp.copy, state)}
            iterator = itertools.repeat(data)

            def step():
                outputs, holder["state"] = function(holder["state"], iterator)
                return outputs

            return step
        # torch: tensors on the default device once, as JAX's are, so that no
        # step pays a host-to-device copy of the batch.
        data = keras.tree.map_structure(keras.ops.convert_to_tensor, data)
        if self.kind == "train":
            return lambda: model.train_function([data])
        return lambda: model.predict_function([data])

    def run(self, steps: int) -> None:
        """Runs `steps` steps and waits for the last one to finish.

        Args:
            steps: number of steps, >= 1.
        """
        outputs = None
        for _ in range(steps):
            outputs = self._step()
        block(outputs)


class CallableRunner:
    """Times any zero-argument callable like a `StepRunner` (e.g. a jitted op).

    Args:
        fn: the callable; its result is waited for.
    """

    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn

    def run(self, steps: int) -> None:
        """Calls `fn` `steps` times and waits for the last result.

        Args:
            steps: number of calls.
        """
        outputs = None
        for _ in range(steps):
            outputs = self.fn()
        block(outputs)


def round_robin(
    runners: dict[str, Any],
    repeats: int,
    steps: int,
    warmup: int,
    rng: np.random.Generator | None = None,
) -> dict[str, list[float]]:
    """Times runners in interleaved rounds so that machine noise hits all alike.

    Every runner first runs `warmup` steps. Then, `repeats` times, each runner
    (in an order shuffled per round when `rng` is given) runs `steps` steps;
    the seconds per step of each round are recorded.

    Args:
        runners: name -> object with `run(steps)`.
        repeats: number of rounds.
        steps: steps per runner per round.
        warmup: untimed steps per runner before the first round.
        rng: shuffles the order within each round; fixed order when None.

    Returns:
        name -> seconds per step, one entry per round (round order kept).
    """
    for runner in runners.values():
        if warmup:
            runner.run(warmup)
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for _ in range(repeats):
        order = list(names)
        if rng is not None:
            rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            runners[name].run(steps)
            times[name].append((time.perf_counter() - start) / steps)
    return times


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """Median, quartiles and min of timing samples, in milliseconds.

    Args:
        samples: seconds per step, one per round.

    Returns:
        `{"median_ms", "q1_ms", "q3_ms", "min_ms", "n"}`.
    """
    values = sorted(float(s) * 1e3 for s in samples)
    q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
    return {
        "median_ms": statistics.median(values),
        "q1_ms": q1,
        "q3_ms": q3,
        "min_ms": values[0],
        "n": len(values),
    }


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, float]:
    """Ratio of two interleaved timings, computed round by round.

    The ratio of each round is taken first (both sides ran moments apart,
    under the same load), then summarised: the median is the reported
    value, the quartiles show its spread.

    Args:
        numerator: seconds per step per round.
        denominator: seconds per step per round (same rounds).

    Returns:
        `{"value", "q1", "q3", "of_minimums"}`: the median of the per-round
        ratios, its quartiles, and the ratio of the two fastest rounds (load
        only ever adds time, so the minimum is the least disturbed sample).
    """
    ratios = sorted(n / d for n, d in zip(numerator, denominator, strict=True))
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return {
        "value": statistics.median(ratios),
        "q1": q1,
        "q3": q3,
        "of_minimums": min(numerator) / min(denominator),
    }


# ------------------------------------------------------------------- op counts
def _jaxpr_size(jaxpr: Any) -> int:
    """Equations of a jaxpr, counting those of nested jaxprs (pjit, custom_jvp, ...)."""
    count = 0
    for eqn in jaxpr.eqns:
        inner = [v for v in eqn.params.values() if hasattr(v, "eqns") or hasattr(v, "jaxpr")]
        if inner:
            count += sum(_jaxpr_size(getattr(v, "jaxpr", v)) for v in inner)
        else:
            count += 1
    return count


def op_count(model: keras.Model, kind: str, x: Any, y: Any = None) -> dict[str, Any]:
    """Primitive operations in one train or predict step, before any fusion.

    On a launch-bound accelerator step (small models, batch 64) every
    un-fused operation costs a kernel launch, so the count difference between
    two steps predicts their time difference there. TensorFlow: operations of
    the traced `train_step` graph; JAX: jaxpr equations (nested ones
    expanded); torch: ATen operators dispatched by one eager step, and
    among them those that read a value back to the host (`.item()`-like:
    each one a device synchronisation on a GPU).

    Args:
        model: a compiled, built model (see `StepRunner`).
        kind: `"train"` or `"predict"`.
        x: the input batch.
        y: labels (train only).

    Returns:
        `{"ops": int, "unit": str}` (torch adds `"host_syncs"`), or
        `{"ops": None, "error": str}`.
    """
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            x_t, y_t = tf.convert_to_tensor(x), None if y is None else tf.convert_to_tensor(y)
            if kind == "train":
                fn = tf.function(lambda a, b: model.train_step((a, b)))
                graph = fn.get_concrete_function(x_t, y_t).graph
            else:
                fn = tf.function(lambda a: model.predict_step((a,)))
                graph = fn.get_concrete_function(x_t).graph
            ignored = {"Placeholder", "Const", "NoOp", "Identity", "ReadVariableOp"}
            ops_ = [op for op in graph.get_operations() if op.type not in ignored]
            return {"ops": len(ops_), "unit": "tf graph ops (no Const/Identity/ReadVariableOp)"}
        if backend == "jax":
            import jax
            import jax.numpy as jnp

            state = jax_state(model, kind)
            if kind == "train":
                data = (jnp.asarray(x), jnp.asarray(y))
                jaxpr = jax.make_jaxpr(model.train_step)(state, data)
            else:
                jaxpr = jax.make_jaxpr(model.predict_step)(state, (jnp.asarray(x),))
            return {"ops": _jaxpr_size(jaxpr.jaxpr), "unit": "jaxpr equations"}
        if backend == "torch":
            import torch
            from torch.utils._python_dispatch import TorchDispatchMode

            # Operators that copy a value to the host: a device sync on a GPU.
            syncing = ("aten._local_scalar_dense", "aten.nonzero", "aten.item")

            class Counter(TorchDispatchMode):
                def __init__(self):
                    super().__init__()
                    self.count = 0
                    self.syncs = 0

                def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                    self.count += 1
                    self.syncs += str(func).startswith(syncing)
                    return func(*args, **(kwargs or {}))

            device = "cuda" if torch.cuda.is_available() else "cpu"
            x_t = torch.as_tensor(x, device=device)
            data = (x_t, torch.as_tensor(y, device=device)) if kind == "train" else (x_t,)
            model.make_train_function() if kind == "train" else model.make_predict_function()
            function = model.train_function if kind == "train" else model.predict_function
            with Counter() as counter:
                function([data])
            return {
                "ops": counter.count,
                "unit": "aten ops dispatched",
                "host_syncs": counter.syncs,
            }
    except Exception as error:  # noqa: BLE001 - a diagnostic, never a failure
        return {"ops": None, "error": f"{type(error).__name__}: {error}"[:300]}
    return {"ops": None, "error": f"no op counter for backend {backend}"}


def set_threads(threads: int) -> dict[str, Any]:
    """Limits the backend's CPU threads (0 keeps the library default).

    On a CPU shared with other jobs, torch's default OpenMP pool spins at its
    barriers: an ISATS search measured 115 ms with 2 threads against 2.8 ms
    with 1 on the 2-core machine under load. torch: `set_num_threads`;
    TensorFlow: intra- and inter-op pools (before its first op); JAX: not
    settable after import (use `XLA_FLAGS`), recorded as such.

    Args:
        threads: threads per pool, or 0.

    Returns:
        What was set, for the JSON record.
    """
    backend = keras.backend.backend()
    if threads <= 0:
        return {"threads": "default"}
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
        return {"threads": threads, "how": "torch.set_num_threads"}
    if backend == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError as error:  # TensorFlow already initialised
            return {"threads": "default", "error": str(error)}
        return {"threads": threads, "how": "tf.config.threading"}
    return {"threads": "default", "note": f"not settable on {backend} after import"}


def define_threads_flag(flag_values: Any) -> None:
    """Defines `--threads` on a script's `FlagValues` (see `set_threads`).

    Args:
        flag_values: the script's `absl.flags.FlagValues`.
    """
    from absl import flags

    flags.DEFINE_integer(
        "threads",
        0,
        "CPU threads of torch / TensorFlow (0: library default). 1 avoids OpenMP spinning on a "
        "CPU shared with other jobs.",
        flag_values=flag_values,
    )


def environment_with_threads(threads: int) -> dict[str, Any]:
    """Sets the CPU threads, then records the environment with what was set.

    The threads are set first: TensorFlow accepts them only before its first
    op, which `environment()` may run when it lists the devices.

    Args:
        threads: threads per pool, or 0 for the library default.

    Returns:
        `environment()` with a `threading` entry.
    """
    threading = set_threads(threads)
    return {**environment(), "threading": threading}
