"""Memory and time of the ISATS search: the `[N, K, C]` grid against the candidate scan.

Three measurements, for token-level distillation over a vocabulary (N tokens,
C classes, K candidate temperatures):

- memory on JAX: XLA's compiled memory analysis (compile only, nothing is
  allocated) of `isats_temperature` with `search="grid"` (one `[N, K, C]`
  evaluation) and `search="scan"` (one `[N, C]` candidate at a time), and
  of every policy's KD term with its gradient w.r.t. the student logits
  (the target computation a training step pays for). `temp` is the scratch
  memory beyond the inputs and outputs, also given in units of `N * C`
  float32 (the logits' own size).
- memory on torch: each search form run for real in a fresh child process
  (one thread): the inputs are allocated, then the peak of one call of
  `isats_temperature` over what was resident before it. On a CPU the
  process's resident-set high-water mark (`VmHWM - VmRSS` of
  /proc/self/status, the mark reset through /proc/self/clear_refs just
  before the call); on a GPU `torch.cuda.max_memory_allocated` over
  `memory_allocated`. The scan runs at `--rows`; the grid, whose `[N, K, C]`
  intermediates would not fit in RAM there, at `--torch_grid_rows`, its
  scratch given in units of that `N * C` (what scales). The first call is
  reported; later calls (`--torch_memory_calls`) are a check of it.
- time: seconds per call of both searches at a size where both fit
  (`--time_rows`), compiled (`jax.jit`, `tf.function` with XLA) or eager
  (torch), the two forms timed in turn within each repeat; minimum and
  median over `--repeats`.

Prints a table and writes `benchmarks/results/isats_memory_<backend>.json`.

Usage:
    KERAS_BACKEND=jax python benchmarks/isats_memory.py --time_rows=256 --repeats=3
    KERAS_BACKEND=torch python benchmarks/isats_memory.py --time_rows=128 --repeats=3 \
        --threads=1 --torch_grid_rows=256
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

from keras_kdcap.experiment.cli import define_flag_table  # noqa: E402
from keras_kdcap.policies import get_policy  # noqa: E402
from keras_kdcap.policies.isats import isats_temperature  # noqa: E402

FLAGS = flags.FlagValues()
define_flag_table(
    FLAGS,
    {
        "rows": (4096, "Tokens N of the memory analysis."),
        "classes": (32000, "Classes C (vocabulary size)."),
        "candidates": (32, "ISATS grid size K."),
        "time_rows": (512, "Tokens N of the timing (both forms)."),
        "repeats": (5, "Timed calls per form."),
        "policies": (
            "kd,ats,isats,dkd,ctkd,sckd,ls",
            "Policies whose KD term (with gradient) is analysed; fgcr holds a [C, C] matrix.",
        ),
        "torch_memory": (
            True,
            "On torch, measure each search form's peak memory in a fresh child process.",
        ),
        "torch_grid_rows": (
            256,
            "Tokens N of the grid form's torch measure (its [N, K, C] tensors at --rows would "
            "not fit in RAM); 0 skips it.",
        ),
        "torch_memory_calls": (
            2,
            "Calls per torch child; the first one's peak is reported, later ones check it.",
        ),
        "output": (None, "JSON path (default: results/isats_memory_<backend>.json)."),
    },
)
_common.define_threads_flag(FLAGS)

SEARCHES = ("grid", "scan")
GIB = 2**30
#: the scan's scratch should stay within this many `N * C` float32 (issue 16).
SCAN_LIMIT_IN_LOGITS = 4.0


def _memory(fn, shapes) -> dict[str, float]:
    """XLA's memory analysis of `jax.jit(fn)` for inputs of `shapes` (compile only)."""
    import jax

    analysis = jax.jit(fn).lower(*shapes).compile().memory_analysis()
    return {
        "temp_bytes": int(analysis.temp_size_in_bytes),
        "argument_bytes": int(analysis.argument_size_in_bytes),
        "output_bytes": int(analysis.output_size_in_bytes),
    }


def search_memory(rows: int, classes: int, candidates: int) -> list[dict[str, Any]]:
    """Memory of both searches, with and without refinement (JAX only)."""
    import jax
    import jax.numpy as jnp

    shapes = (
        jax.ShapeDtypeStruct((rows, classes), jnp.float32),
        jax.ShapeDtypeStruct((rows,), jnp.int32),
    )
    records = []
    for search in SEARCHES:
        for refine in (False, True):

            def fn(f, y, search=search, refine=refine):
                return isats_temperature(
                    f, y, num_candidates=candidates, refine=refine, search=search
                )

            records.append(
                {"what": "search", "search": search, "refine": refine, **_memory(fn, shapes)}
            )
    return records


def policy_memory(names: Sequence[str], rows: int, classes: int) -> list[dict[str, Any]]:
    """Memory of each policy's KD term and its gradient w.r.t. the student logits (JAX)."""
    import jax
    import jax.numpy as jnp

    logits = jax.ShapeDtypeStruct((rows, classes), jnp.float32)
    shapes = (logits, logits, jax.ShapeDtypeStruct((rows,), jnp.int32))
    records = []
    variants = [(name, {}) for name in names]
    if "isats" in names:
        variants.append(("isats", {"search": "grid"}))
    for name, kwargs in variants:
        policy = get_policy(name, **kwargs)

        def loss(f, g, y, policy=policy):
            return keras.ops.sum(policy.kd_loss(f, g, y)[0])

        fn = jax.value_and_grad(loss, argnums=1)
        label = name + "".join(f" {k}={v}" for k, v in kwargs.items())
        records.append({"what": "kd_loss+grad", "policy": label, **_memory(fn, shapes)})
    return records


def _status_bytes(field: str) -> int:
    """A `kB` field of /proc/self/status (`VmRSS`, `VmHWM`) in bytes."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    """Resets `VmHWM` to the current `VmRSS` (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")


def _torch_unmeasured() -> str | None:
    """Why the torch measure cannot run here (None where it can)."""
    import torch

    if torch.cuda.is_available() or Path("/proc/self/clear_refs").exists():
        return None
    return "no GPU and no /proc/self/clear_refs (Linux) to reset the resident-set peak"


def torch_search_peak(
    search: str, rows: int, classes: int, candidates: int, calls: int
) -> dict[str, Any]:
    """Peak memory of `calls` calls of one search form, each over what was resident before it.

    Meant for a fresh process (`torch_process_memory` starts one per form):
    the high-water mark is the process's own. A call on two rows first loads
    the code and lazy state the calls use, so that they measure scratch only.

    Args:
        search: "grid" or "scan".
        rows: tokens N.
        classes: classes C.
        candidates: grid size K.
        calls: how many calls, each measured on its own.

    Returns:
        `{"measure": ..., "calls": [{"before_bytes", "peak_bytes", "temp_bytes"}, ...]}`.
    """
    import torch

    torch.set_num_threads(1)
    cuda = torch.cuda.is_available()
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, classes, generator=generator).mul_(3.0)
    labels = torch.randint(0, classes, (rows,), generator=generator, dtype=torch.int32)
    logits[torch.arange(rows), labels.long()] += 8.0
    if cuda:
        logits, labels = logits.cuda(), labels.cuda()
    # loads the kernels' code and lazy state, which the first measured call would count
    isats_temperature(logits[:2], labels[:2], num_candidates=candidates, search=search)
    records = []
    for _ in range(calls):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            _reset_peak_rss()
            before = _status_bytes("VmRSS")
        tau = isats_temperature(logits, labels, num_candidates=candidates, search=search)
        if cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _status_bytes("VmHWM")
        del tau
        records.append({"before_bytes": before, "peak_bytes": peak, "temp_bytes": peak - before})
    measure = (
        "torch.cuda.max_memory_allocated - memory_allocated before the call"
        if cuda
        else "process VmHWM - VmRSS before the call (CPU, /proc/self/status)"
    )
    return {"measure": measure, "calls": records}


_CHILD = (
    "import json, sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "import isats_memory\n"
    "print('RESULT', json.dumps(isats_memory.torch_search_peak(*json.loads(sys.argv[2]))))\n"
)


def torch_process_memory(
    forms: dict[str, int], classes: int, candidates: int, calls: int
) -> list[dict[str, Any]]:
    """Peak memory of each search form on torch, each in a fresh child process.

    Args:
        forms: search form -> tokens N it is measured at.
        classes: classes C.
        candidates: grid size K.
        calls: calls per child; the first one's scratch is the record's `temp_bytes`.

    Returns:
        One record per form, `temp_in_logits` in units of that form's `N * C` float32.
    """
    records = []
    for search, rows in forms.items():
        arguments = json.dumps([search, rows, classes, candidates, calls])
        child = subprocess.run(
            [sys.executable, "-c", _CHILD, str(Path(__file__).resolve().parent), arguments],
            capture_output=True,
            text=True,
            env={**os.environ, "KERAS_BACKEND": "torch"},
            check=False,
        )
        lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
        if child.returncode != 0 or not lines:
            raise RuntimeError(
                f"torch memory child (search={search}, N={rows}) exited {child.returncode}:\n"
                + child.stderr[-2000:]
            )
        result = json.loads(lines[-1][len("RESULT ") :])
        first, *later = result["calls"]
        logits_bytes = 4.0 * rows * classes
        record = {
            "what": "search",
            "search": search,
            "refine": False,
            "rows": rows,
            "measure": result["measure"],
            **first,
            "temp_in_logits": first["temp_bytes"] / logits_bytes,
            "later_calls_in_logits": [call["temp_bytes"] / logits_bytes for call in later],
        }
        if search == "scan":
            record["within_limit"] = record["temp_in_logits"] <= SCAN_LIMIT_IN_LOGITS
        records.append(record)
    return records


def time_searches(rows: int, classes: int, candidates: int, repeats: int) -> dict[str, Any]:
    """Seconds per call of both searches on the current backend, timed in turn."""
    rng = np.random.default_rng(0)
    f = (rng.normal(size=(rows, classes)) * 3.0).astype(np.float32)
    y = rng.integers(0, classes, rows).astype(np.int32)
    f[np.arange(rows), y] += 8.0
    f, y = keras.ops.convert_to_tensor(f), keras.ops.convert_to_tensor(y)
    functions = {
        search: _common.compile_function(
            lambda f, y, search=search: isats_temperature(
                f, y, num_candidates=candidates, search=search
            ),
            jit_compile=True,
        )
        for search in SEARCHES
    }
    results = {search: _common.block(fn(f, y)) for search, fn in functions.items()}  # compile
    same = np.array_equal(*(keras.ops.convert_to_numpy(r) for r in results.values()))
    samples: dict[str, list[float]] = {search: [] for search in SEARCHES}
    for _ in range(repeats):
        for search, fn in functions.items():
            start = time.perf_counter()
            _common.block(fn(f, y))
            samples[search].append(time.perf_counter() - start)
    return {
        "rows": rows,
        "same_temperatures": bool(same),
        **{search: _common.summarize(values) for search, values in samples.items()},
    }


def _in_units(record: dict[str, Any], rows: int, classes: int) -> float:
    return record["temp_bytes"] / (4.0 * rows * classes)


def _print_torch_memory(records: list[dict[str, Any]], classes: int, candidates: int) -> None:
    table = [
        (
            f"search={r['search']}",
            r["rows"],
            f"{r['temp_bytes'] / GIB:.2f}",
            f"{r['temp_in_logits']:.2f}",
            ", ".join(f"{x:.2f}" for x in r["later_calls_in_logits"]) or "-",
        )
        for r in records
    ]
    print(f"torch peak memory of one call, fresh process per form, C={classes}, K={candidates}")
    print(f"measure: {records[0]['measure']}")
    print(
        _common.markdown_table(
            ("form", "N", "scratch GiB", "x N*C floats", "later calls x N*C"), table
        )
    )
    for r in records:
        if "within_limit" in r:
            print(f"scan within {SCAN_LIMIT_IN_LOGITS:g}x N*C floats: {r['within_limit']}")


def run(argv: Sequence[str]) -> dict[str, Any]:
    _common.parse_flags(FLAGS, argv)
    _common.check_at_least_one(
        FLAGS.flag_values_dict(),
        ("rows", "classes", "candidates", "time_rows", "repeats", "torch_memory_calls"),
    )
    if FLAGS.torch_grid_rows < 0:
        raise app.UsageError("--torch_grid_rows must be >= 0 (0 skips the grid form).")
    env = _common.environment_with_threads(FLAGS.threads)
    backend = keras.backend.backend()
    rows, classes, candidates = FLAGS.rows, FLAGS.classes, FLAGS.candidates
    memory: list[dict[str, Any]] = []
    if backend == "jax":
        memory = search_memory(rows, classes, candidates)
        memory += policy_memory(_common.parse_list(FLAGS.policies), rows, classes)
        for record in memory:
            record["temp_in_logits"] = _in_units(record, rows, classes)
    torch_memory: list[dict[str, Any]] = []
    unmeasured = _torch_unmeasured() if backend == "torch" and FLAGS.torch_memory else None
    if unmeasured:
        print(f"torch memory not measured: {unmeasured}")
    elif backend == "torch" and FLAGS.torch_memory:
        forms = {"grid": FLAGS.torch_grid_rows, "scan": rows}
        forms = {search: n for search, n in forms.items() if n > 0}
        torch_memory = torch_process_memory(forms, classes, candidates, FLAGS.torch_memory_calls)
    timing = time_searches(FLAGS.time_rows, classes, candidates, FLAGS.repeats)

    if memory:
        table = [
            (
                record.get("policy") or f"search={record['search']} refine={record['refine']}",
                record["what"],
                f"{record['temp_bytes'] / GIB:.2f}",
                f"{record['temp_in_logits']:.2f}",
            )
            for record in memory
        ]
        print(f"JAX compiled memory, N={rows}, C={classes}, K={candidates}")
        print(_common.markdown_table(("form", "computes", "temp GiB", "x N*C floats"), table))
    elif torch_memory:
        _print_torch_memory(torch_memory, classes, candidates)
    else:
        print(f"memory needs KERAS_BACKEND=jax or torch (got {backend}); timing only")
    print(f"\n{backend}: seconds per search call, N={timing['rows']}, C={classes}, K={candidates}")
    print(
        _common.markdown_table(
            ("search", "min ms", "median ms", "n"),
            [
                (s, f"{timing[s]['min_ms']:.1f}", f"{timing[s]['median_ms']:.1f}", timing[s]["n"])
                for s in SEARCHES
            ],
        )
    )
    print(f"same temperatures from both forms: {timing['same_temperatures']}")
    payload = {
        "benchmark": "isats_memory",
        "environment": env,
        "settings": {
            "rows": rows,
            "classes": classes,
            "candidates": candidates,
            "time_rows": FLAGS.time_rows,
            "repeats": FLAGS.repeats,
            "torch_memory": FLAGS.torch_memory,
            "torch_grid_rows": FLAGS.torch_grid_rows,
            "torch_memory_calls": FLAGS.torch_memory_calls,
        },
        "memory": memory or torch_memory,
        "timing": timing,
    }
    output = FLAGS.output or _common.RESULTS_DIR / f"isats_memory_{backend}.json"
    print(f"wrote {_common.write_json(output, payload)}")
    return payload


if __name__ == "__main__":
    _common.run_as_script(FLAGS, run)
