"""Data-parallel distillation: the same loss, metrics and weights as on one device.

Each scenario runs in a subprocess, because the virtual devices (two host
devices for JAX, two logical CPUs for TensorFlow, two gloo processes for
torch) must be declared before the backend initialises. Every scenario
trains the same Distiller twice, on one device and on two, from the same
initial weights on the same global batches, and prints the differences.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import pytest

from keras_kdcap.distribution import check_batch_size, data_parallel, replica_count

BACKEND = keras.backend.backend()

# Shared by every scenario: data, models and the run, for one policy.
COMMON = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import keras
    from keras_kdcap import FGCR, ISATS, Distiller
    from keras_kdcap.distribution import check_batch_size, data_parallel, replica_count

    FEATURES, CLASSES, N, BATCH, EPOCHS = 8, 5, 64, 16, 2
    # FGCR (its relations: a non-trainable variable) gives the same figures
    # (docs/scaling.md); add "fgcr" to check it again, at twice the time.
    POLICIES = ("isats",)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, FEATURES)).astype("float32")
    y = np.argmax(x[:, :CLASSES] + 0.3 * rng.normal(size=(N, CLASSES)), -1).astype("int32")
    teacher_kernel = (3.0 * np.eye(FEATURES, CLASSES)
                      + 0.3 * rng.normal(size=(FEATURES, CLASSES))).astype("float32")

    def build():
        keras.utils.set_random_seed(0)
        teacher = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(CLASSES)])
        teacher.layers[0].kernel.assign(teacher_kernel)
        init = keras.initializers.GlorotUniform(seed=2)
        student = keras.Sequential([
            keras.Input((FEATURES,)),
            keras.layers.Dense(16, "relu", kernel_initializer=init),
            keras.layers.Dense(CLASSES, kernel_initializer=init),
        ])
        return teacher, student

    def make_policy(name, teacher):
        if name == "isats":
            return SearchSpy(num_candidates=16)
        policy = FGCR(weight=0.4, temperature=3.0)
        policy.set_classifier_relations(teacher.layers[0].kernel)
        return policy

    def run(name):
        teacher, student = build()
        distiller = Distiller(teacher, student)
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
        distiller.compile(optimizer, policy=make_policy(name, teacher))
        before = distiller.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
        history = distiller.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
        after = distiller.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
        weights = [np.asarray(keras.ops.convert_to_numpy(v)) for v in student.weights]
        return before, history.history, after, weights, replica_count()

    def differences(single, multi):
        (b1, h1, a1, w1, _), (b2, h2, a2, w2, replicas) = single, multi
        pairs = [(b1[k], b2[k]) for k in b1] + [(a1[k], a2[k]) for k in a1]
        pairs += [(u, v) for k in h1 for u, v in zip(h1[k], h2[k])]
        losses = [(b1["loss"], b2["loss"]), (a1["loss"], a2["loss"])]
        losses += list(zip(h1["loss"], h2["loss"]))
        abs_loss = max(abs(u - v) for u, v in losses)
        rel_loss = max(abs(u - v) / max(abs(u), 1e-12) for u, v in losses)
        abs_metric = max(abs(u - v) for u, v in pairs)
        abs_weight = max(float(np.max(np.abs(u - v))) for u, v in zip(w1, w2))
        return {"replicas": replicas, "loss_abs": abs_loss, "loss_rel": rel_loss,
                "metric_abs": abs_metric, "weight_abs": abs_weight,
                "losses": [[float(u), float(v)] for u, v in losses]}

    # Prints each policy's differences, one device against `data_parallel(*devices)`,
    # and under `key` what the SearchSpy appended to `spied` in the ISATS run.
    def report(spied, key, *devices):
        out = {}
        for name in POLICIES:
            single = run(name)
            spied.clear()
            with data_parallel(*devices):
                multi = run(name)
            out[name] = differences(single, multi)
            if name == "isats":
                out[key] = sorted(set(spied))
        print("RESULT " + json.dumps(out))
    """
)

JAX_SCENARIO = textwrap.dedent(
    """
    import jax
    SHARDINGS = []

    class SearchSpy(ISATS):
        def search(self, teacher_logits, labels):
            tau = super().search(teacher_logits, labels)
            jax.debug.inspect_array_sharding(
                tau, callback=lambda s: SHARDINGS.append(str(getattr(s, "spec", s))))
            return tau

    assert len(jax.devices()) == 2, jax.devices()
    report(SHARDINGS, "search_shardings")
    """
)

TF_SCENARIO = textwrap.dedent(
    """
    import tensorflow as tf
    REPLICAS = []

    class SearchSpy(ISATS):
        def search(self, teacher_logits, labels):
            context = tf.distribute.get_replica_context()
            REPLICAS.append(-1 if context is None else context.num_replicas_in_sync)
            return super().search(teacher_logits, labels)

    report(REPLICAS, "search_replicas", ["cpu:0", "cpu:1"])
    """
)

TF_PRELUDE = textwrap.dedent(
    """
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    """
)

# torch: Keras has no data-parallel fit; PyTorch DDP over a custom loop that
# calls Distiller.compute_loss. The test starts two processes (gloo on the
# CPU); rank 0 then trains the single-device reference and compares.
TORCH_SCENARIO = textwrap.dedent(
    """
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    class SearchSpy(ISATS):
        pass

    def train(rank=0, world=1):
        teacher, student = build()
        distiller = Distiller(teacher, student)
        distiller.compile("sgd", policy=make_policy("isats", teacher))
        distiller.build((None, FEATURES))
        model = distiller if world == 1 else DistributedDataParallel(distiller)
        params = [v.value for v in distiller.trainable_variables]
        optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
        losses = []
        for epoch in range(EPOCHS):
            epoch_losses = []
            for start in range(0, N, BATCH):
                share = BATCH // world
                lo = start + rank * share
                xb = torch.as_tensor(x[lo:lo + share]); yb = torch.as_tensor(y[lo:lo + share])
                optimizer.zero_grad()
                logits = model(xb, training=True)
                loss = distiller.compute_loss(x=xb, y=yb, y_pred=logits, training=True)
                loss.backward()
                optimizer.step()
                total = loss.detach().clone()
                if world > 1:
                    dist.all_reduce(total)
                    total /= world
                epoch_losses.append(float(total))
            losses.append(float(np.mean(epoch_losses)))
        weights = [np.asarray(keras.ops.convert_to_numpy(v)) for v in student.weights]
        return losses, weights

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method="file://" + os.environ["INIT_FILE"],
                            rank=rank, world_size=world)
    multi_losses, multi_weights = train(rank, world)
    dist.destroy_process_group()
    if rank == 0:
        single_losses, single_weights = train()
        out = {"ddp": {
            "replicas": world,
            "loss_abs": max(abs(u - v) for u, v in zip(single_losses, multi_losses)),
            "loss_rel": max(abs(u - v) / abs(u) for u, v in zip(single_losses, multi_losses)),
            "weight_abs": max(float(np.max(np.abs(u - v)))
                              for u, v in zip(single_weights, multi_weights)),
            "losses": [[u, v] for u, v in zip(single_losses, multi_losses)],
        }}
        print("RESULT " + json.dumps(out))
    """
)


def run_scenario(backend: str, script: str, env: dict[str, str], tmp_path) -> dict:
    """Runs `script` in a fresh interpreter on `backend`; returns its RESULT json."""
    path = tmp_path / f"scenario_{backend}.py"
    path.write_text(script)
    environment = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", **env)
    completed = subprocess.run(
        [sys.executable, str(path)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(tmp_path),
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert completed.returncode == 0 and lines, completed.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    print(json.dumps(result, indent=1))
    return result


def assert_equal_to_single_device(result: dict) -> None:
    assert result["replicas"] == 2
    assert result["loss_abs"] < 1e-5 and result["loss_rel"] < 1e-5, result
    assert result["weight_abs"] < 1e-5, result
    if "metric_abs" in result:
        assert result["metric_abs"] < 1e-5, result


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution.DataParallel is the JAX path")
def test_jax_data_parallel_matches_single_device(tmp_path):
    script = COMMON + JAX_SCENARIO
    result = run_scenario(
        "jax", script, {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, tmp_path
    )
    assert_equal_to_single_device(result["isats"])
    # ISATS's tau* is computed per shard: sharded along the batch axis.
    assert result["search_shardings"], result
    assert all("batch" in spec for spec in result["search_shardings"]), result


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute is the TensorFlow path")
def test_tf_mirrored_strategy_matches_single_device(tmp_path):
    script = TF_PRELUDE + COMMON + TF_SCENARIO
    result = run_scenario("tensorflow", script, {}, tmp_path)
    assert_equal_to_single_device(result["isats"])
    # The search ran inside the replicas (each on its half of the batch).
    assert result["search_replicas"] == [2], result


@pytest.mark.skipif(BACKEND != "torch", reason="DistributedDataParallel is the torch path")
def test_torch_ddp_custom_loop_matches_single_device(tmp_path):
    extra = {"WORLD_SIZE": "2", "INIT_FILE": str(tmp_path / "init")}
    path = tmp_path / "scenario_torch.py"
    path.write_text(COMMON + TORCH_SCENARIO)
    helper = subprocess.Popen(  # rank 1; rank 0, run below, reports
        [sys.executable, str(path)],
        env=dict(os.environ, KERAS_BACKEND="torch", RANK="1", **extra),
        cwd=str(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        result = run_scenario("torch", COMMON + TORCH_SCENARIO, dict(extra, RANK="0"), tmp_path)
    finally:
        try:
            helper.wait(timeout=60)
        except subprocess.TimeoutExpired:
            helper.kill()
    assert_equal_to_single_device(result["ddp"])


def test_replica_count_is_one_without_distribution():
    assert replica_count() == 1


def test_check_batch_size_returns_the_share_per_replica():
    assert check_batch_size(64, num_replicas=2) == 32
    assert check_batch_size(64, num_replicas=2, num_samples=1000) == 32  # last batch 40
    assert check_batch_size(8) == 8


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"batch_size": 63, "num_replicas": 2}, "`batch_size`"),
        ({"batch_size": 64, "num_replicas": 2, "num_samples": 65}, "`num_samples`"),
        ({"batch_size": 0, "num_replicas": 2}, "`batch_size`"),
        ({"batch_size": 8, "num_replicas": 0}, "`num_replicas`"),
    ],
)
def test_check_batch_size_names_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        check_batch_size(**kwargs)


@pytest.mark.skipif(BACKEND != "torch", reason="only torch has no data-parallel scope")
def test_data_parallel_on_torch_says_what_to_use():
    with pytest.raises(NotImplementedError, match="DistributedDataParallel"), data_parallel():
        pass
