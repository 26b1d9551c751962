"""The `[B, C]` loss of every registered policy on one fixed batch, bit for bit.

Token-level distillation (issue 16) flattens `[B, T, C]` logits into rows and
reuses the `[B, C]` path; that path must keep its exact numbers.
`tests/data/bc_fixture.json` holds the float32 bits of `compute_loss` and the
step statistics computed by the code before the sequence path was added
(written by running this file once per backend, on a CPU):

    KERAS_BACKEND=jax python tests/bc_fixture.py

`tests/test_sequence.py` recomputes them and compares the bits.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import keras
import numpy as np

FIXTURE = Path(__file__).resolve().parent / "data" / "bc_fixture.json"
BATCH, CLASSES = 12, 7
#: the statistics compared besides the loss (policy metrics are added per policy).
STATISTICS = ("ce_loss", "kd_loss", "target_first")


def batch():
    """Seeded teacher/student logits, sparse and soft labels and sample weights."""
    rng = np.random.default_rng(20261202)
    f = (rng.normal(size=(BATCH, CLASSES)) * 3.0).astype(np.float32)
    y = rng.integers(0, CLASSES, BATCH).astype(np.int32)
    f[np.arange(BATCH)[: BATCH * 3 // 4], y[: BATCH * 3 // 4]] += 6.0  # mostly right
    g = (rng.normal(size=(BATCH, CLASSES)) * 2.0).astype(np.float32)
    soft = rng.dirichlet(np.ones(CLASSES), BATCH).astype(np.float32)
    weights = rng.uniform(0.0, 2.0, BATCH).astype(np.float32)
    relations = rng.dirichlet(np.ones(CLASSES), CLASSES)
    return f, g, y, soft, weights, relations


def policies(relations) -> dict:
    """Every registered policy with its defaults (FGCR with fixed relations)."""
    from keras_kdcap.policies import registry

    built = {}
    for name in sorted(registry.POLICIES):
        policy = registry.get_policy(name)
        if hasattr(policy, "set_relations"):
            policy.set_relations(relations)
        built[name] = policy
    return built


def tiny_model() -> keras.Model:
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(inputs))


def compute(name: str, policy, labels: str) -> dict[str, float]:
    """`compute_loss` (eager, cached teacher logits) and the statistics of one call."""
    from keras_kdcap import Distiller, with_teacher_logits

    f, g, y, soft, weights, _ = batch()
    distiller = Distiller(tiny_model(), tiny_model())
    distiller.compile("sgd", policy=policy, alpha=0.3, beta=0.7)
    x = with_teacher_logits(np.zeros((BATCH, 3), np.float32), keras.ops.convert_to_tensor(f))
    target = y if labels == "sparse" else soft
    loss = distiller.compute_loss(
        x, keras.ops.convert_to_tensor(target), keras.ops.convert_to_tensor(g), weights
    )
    values = {"loss": loss}
    results = distiller.get_metrics_result()
    for key in (*STATISTICS, *policy.metric_names):
        values[key] = results[key]
    return {key: float(np.float32(keras.ops.convert_to_numpy(v))) for key, v in values.items()}


def all_values() -> dict[str, dict[str, float]]:
    *_, relations = batch()
    values = {}
    for labels in ("sparse", "soft"):
        for name, policy in policies(relations).items():
            values[f"{name}/{labels}"] = compute(name, policy, labels)
    return values


def main() -> None:
    stored = json.loads(FIXTURE.read_text()) if FIXTURE.exists() else {}
    values = all_values()
    stored[keras.backend.backend()] = {
        case: {key: float(value).hex() for key, value in row.items()}
        for case, row in values.items()
    }
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(values)} cases for {keras.backend.backend()} to {FIXTURE}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
