"""Data-parallel distillation: one scope per backend, and batch-size checks.

The Distiller needs no change to run data parallel: its loss is computed per
replica on that replica's share of the batch (ISATS searches each sample's
temperature where the sample lies) and reduced like a Keras loss. What
differs between backends is how the devices are declared:

- JAX: `keras.distribution.DataParallel` (the batch is sharded, the
  variables replicated, XLA inserts the gradient all-reduce).
- TensorFlow: `tf.distribute.MirroredStrategy` (Keras's distribution API is
  a prototype on TensorFlow); create and compile the Distiller in its scope.
- torch: Keras has no data-parallel `fit` on torch; use PyTorch's
  `DistributedDataParallel` with a custom loop around
  `Distiller.compute_loss` (docs/scaling.md), or one device.

`data_parallel` opens the right scope for the backend; `check_batch_size`
catches the batch sizes that cannot be split evenly (JAX refuses them, and
on TensorFlow a replica left without samples reports a NaN loss).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import keras


def _tensorflow():
    import tensorflow as tf

    return tf


def replica_count() -> int:
    """The number of devices each training step's batch is split over.

    Reads the active `tf.distribute` strategy (TensorFlow) or the global
    `keras.distribution` (JAX); 1 when neither is set.

    Returns:
        The number of replicas along the batch axis, >= 1.

    Example:
        >>> replica_count()
        1
    """
    if keras.backend.backend() == "tensorflow":
        tf = _tensorflow()
        if tf.distribute.has_strategy():
            return int(tf.distribute.get_strategy().num_replicas_in_sync)
    distribution = keras.distribution.distribution()
    if distribution is None:
        return 1
    mesh = distribution.device_mesh
    batch_axis = getattr(distribution, "batch_dim_name", None)
    if batch_axis in mesh.axis_names:
        return int(mesh.shape[list(mesh.axis_names).index(batch_axis)])
    return 1


def check_batch_size(
    batch_size: int, num_replicas: int | None = None, num_samples: int | None = None
) -> int:
    """Checks that every batch of a data-parallel run splits evenly over the replicas.

    A global batch that does not divide by the replica count cannot be
    sharded on JAX, and on TensorFlow a final partial batch smaller than the
    replica count leaves a replica without samples, whose loss is 0/0.

    Args:
        batch_size: the global batch size passed to `fit` (or of the dataset).
        num_replicas: the replica count; `replica_count()` when None.
        num_samples: the dataset's length, to check its last partial batch
            too; None to skip that check (e.g. with `drop_remainder=True`).

    Returns:
        The per-replica batch size.

    Raises:
        ValueError: naming `batch_size` or `num_samples` when a batch does
            not split evenly.

    Example:
        >>> check_batch_size(64, num_replicas=2)
        32
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer; got {batch_size!r}.")
    replicas = replica_count() if num_replicas is None else num_replicas
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"`num_replicas` must be a positive integer; got {replicas!r}.")
    if batch_size % replicas:
        raise ValueError(
            f"`batch_size`={batch_size} does not divide by the {replicas} replicas: "
            f"use a multiple of {replicas} (e.g. {replicas * max(1, batch_size // replicas)})."
        )
    if num_samples is not None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"`num_samples` must be a positive integer; got {num_samples!r}.")
        remainder = num_samples % batch_size
        if remainder % replicas:
            raise ValueError(
                f"`num_samples`={num_samples} leaves a last batch of {remainder} samples, "
                f"which does not divide by the {replicas} replicas: drop it "
                "(`dataset.batch(batch_size, drop_remainder=True)`, or pass "
                "`steps_per_epoch=num_samples // batch_size`) or trim the data to a "
                f"multiple of {replicas}."
            )
    return batch_size // replicas


@contextlib.contextmanager
def data_parallel(devices: Sequence[str] | None = None) -> Iterator[object]:
    """Runs what it encloses data parallel over `devices`, on JAX or TensorFlow.

    Create, compile and fit the Distiller inside the scope. On JAX this sets
    a `keras.distribution.DataParallel` as the global distribution (and
    restores the previous one on exit); on TensorFlow it enters a
    `tf.distribute.MirroredStrategy` scope.

    Args:
        devices: device names as `keras.distribution.list_devices()` gives
            them (e.g. `["gpu:0", "gpu:1"]`); all accelerators (or all CPUs)
            when None.

    Yields:
        The `DataParallel` distribution (JAX) or the `MirroredStrategy` (TF).

    Raises:
        NotImplementedError: on torch, naming what to use instead.

    Example:
        >>> with data_parallel() as scope:  # doctest: +SKIP
        ...     distiller = Distiller(teacher, student)
        ...     distiller.compile("sgd", policy=ISATS())
        ...     distiller.fit(train_ds, epochs=2)
    """
    backend = keras.backend.backend()
    if backend == "jax":
        devices = list(devices) if devices is not None else None
        distribution = keras.distribution.DataParallel(devices=devices)
        previous = keras.distribution.distribution()
        keras.distribution.set_distribution(distribution)
        try:
            yield distribution
        finally:
            keras.distribution.set_distribution(previous)
    elif backend == "tensorflow":
        tf = _tensorflow()
        names = None
        if devices is not None:
            names = [f"/{name}" if not name.startswith("/") else name for name in devices]
        strategy = tf.distribute.MirroredStrategy(names)
        with strategy.scope():
            yield strategy
    else:
        raise NotImplementedError(
            f"Keras has no data-parallel `fit` on the {backend!r} backend. On torch, wrap "
            "the Distiller in torch.nn.parallel.DistributedDataParallel and train with a "
            "custom loop around `Distiller.compute_loss` (docs/scaling.md), or use the "
            "JAX or TensorFlow backend."
        )
