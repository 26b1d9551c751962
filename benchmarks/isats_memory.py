"""Memory and time of the ISATS search: the `[N, K, C]` grid against the candidate scan.

Two measurements, for token-level distillation over a vocabulary (N tokens,
C classes, K candidate temperatures):

- memory: XLA's compiled memory analysis on JAX (compile only, nothing is
  allocated) of `isats_temperature` with `search="grid"` (one `[N, K, C]`
  evaluation) and `search="scan"` (one `[N, C]` candidate at a time), and
  of every policy's KD term with its gradient w.r.t. the student logits
  (the target computation a training step pays for). `temp` is the scratch
  memory beyond the inputs and outputs, also given in units of `N * C`
  float32 (the logits' own size). Needs the JAX backend; skipped elsewhere.
- time: seconds per call of both searches at a size where both fit
  (`--time_rows`), compiled (`jax.jit`, `tf.function` with XLA) or eager
  (torch), the two forms timed in turn within each repeat; minimum and
  median over `--repeats`.

Prints a table and writes `benchmarks/results/isats_memory_<backend>.json`.

Usage:
    KERAS_BACKEND=jax python benchmarks/isats_memory.py --time_rows=256 --repeats=3
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from absl import flags

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

from keras_kdcap.policies import get_policy  # noqa: E402
from keras_kdcap.policies.isats import isats_temperature  # noqa: E402

FLAGS = flags.FlagValues()
flags.DEFINE_integer("rows", 4096, "Tokens N of the memory analysis.", flag_values=FLAGS)
flags.DEFINE_integer("classes", 32000, "Classes C (vocabulary size).", flag_values=FLAGS)
flags.DEFINE_integer("candidates", 32, "ISATS grid size K.", flag_values=FLAGS)
flags.DEFINE_integer("time_rows", 512, "Tokens N of the timing (both forms).", flag_values=FLAGS)
flags.DEFINE_integer("repeats", 5, "Timed calls per form.", flag_values=FLAGS)
flags.DEFINE_string(
    "policies",
    "kd,ats,isats,dkd,ctkd,sckd,ls",
    "Policies whose KD term (with gradient) is analysed; fgcr holds a [C, C] matrix.",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "output", None, "JSON path (default: results/isats_memory_<backend>.json).", flag_values=FLAGS
)
_common.define_threads_flag(FLAGS)

SEARCHES = ("grid", "scan")
GIB = 2**30


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


def run(argv: Sequence[str]) -> dict[str, Any]:
    _common.parse_flags(FLAGS, argv)
    _common.check_at_least_one(
        FLAGS.flag_values_dict(), ("rows", "classes", "candidates", "time_rows", "repeats")
    )
    env = _common.environment_with_threads(FLAGS.threads)
    backend = keras.backend.backend()
    rows, classes, candidates = FLAGS.rows, FLAGS.classes, FLAGS.candidates
    memory: list[dict[str, Any]] = []
    if backend == "jax":
        memory = search_memory(rows, classes, candidates)
        memory += policy_memory(_common.parse_list(FLAGS.policies), rows, classes)
        for record in memory:
            record["temp_in_logits"] = _in_units(record, rows, classes)
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
    else:
        print(f"memory analysis needs KERAS_BACKEND=jax (got {backend}); timing only")
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
        },
        "memory": memory,
        "timing": timing,
    }
    output = FLAGS.output or _common.RESULTS_DIR / f"isats_memory_{backend}.json"
    print(f"wrote {_common.write_json(output, payload)}")
    return payload


if __name__ == "__main__":
    _common.run_as_script(FLAGS, run)
