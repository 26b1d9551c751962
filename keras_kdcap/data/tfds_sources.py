"""tensorflow-datasets loaders (CIFAR-100, CUB-200-2011, Stanford Dogs) that fail fast offline.

tfds retries an unreachable download host for minutes. Here a dataset that is not
prepared is downloaded only after a short socket connect to its host succeeds;
otherwise :class:`OfflineDataError` says within seconds how to point at local data.
Archives go to a temporary folder that is always removed, and a dataset folder
this module created is removed again when preparation fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from keras_kdcap.data._deps import import_tensorflow, import_tfds
from keras_kdcap.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    center_crop_resize,
    normalize,
    random_resized_crop,
)
from keras_kdcap.data.pipeline import streaming_eval_dataset, streaming_train_dataset

# Host and port of each dataset's download URL (see the tfds builders' sources).
DOWNLOAD_HOSTS: dict[str, tuple[str, int]] = {
    "cifar100": ("www.cs.toronto.edu", 443),
    "caltech_birds2011": ("data.caltech.edu", 443),
    "stanford_dogs": ("vision.stanford.edu", 80),
}
NUM_CLASSES = {"cifar100": 100, "caltech_birds2011": 200, "stanford_dogs": 120}


class OfflineDataError(FileNotFoundError):
    """A dataset is neither prepared locally nor downloadable now."""


def _speaks_http(host: str, port: int, timeout: float) -> bool:
    # A TCP connect alone proves little: sandboxes and proxies accept any connection.
    # Require a TLS handshake (port 443) or an HTTP status line (other ports).
    with socket.create_connection((host, port), timeout=timeout) as sock:
        if port == 443:
            with ssl.create_default_context().wrap_socket(sock, server_hostname=host):
                return True
        sock.sendall(f"HEAD / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        return sock.recv(5).startswith(b"HTTP/")


def host_reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether an HTTP(S) server answers at ``host:port`` within ``timeout`` seconds.

    Checks a TLS handshake (port 443) or an HTTP status line (other ports), in a
    daemon thread so that a slow DNS lookup cannot stretch the wait.

    Args:
        host: host name or address.
        port: TCP port.
        timeout: seconds to wait in all.

    Returns:
        True when the server answered.
    """
    result: list[bool] = []

    def check() -> None:
        try:
            result.append(_speaks_http(host, port, timeout))
        except (OSError, ValueError):
            result.append(False)

    thread = threading.Thread(target=check, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _offline_message(name: str, data_dir: Any, reason: str) -> str:
    hint = (
        f"Point data_dir at a tfds data dir that holds a prepared '{name}' "
        f"(data_dir/{name}/<version>/), e.g. one prepared on a machine with network "
        "and copied here"
    )
    if name == "cifar100":
        hint += (
            ", or at a folder with the offline CIFAR-100 copy (train.npz, test.npz; "
            "see keras_kdcap.data.load_cifar100_arrays), or set KDCAP_CIFAR100_DIR"
        )
    return f"{name} is not prepared in data_dir={str(data_dir)!r} and {reason}. {hint}."


def prepare_tfds_builder(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    timeout: float = 2.0,
    download_dir: str | os.PathLike | None = None,
) -> Any:
    """A tfds builder whose data is prepared, downloading it only when the host answers.

    Args:
        name: tfds dataset name (e.g. ``"cifar100"``).
        data_dir: tfds data dir (None: tfds's default, ``~/tensorflow_datasets``).
        download: allow downloading when the data is not prepared.
        timeout: seconds allowed for the reachability check.
        download_dir: parent of the temporary folder for the archives (None: the
            system temp dir); the temporary folder is removed afterwards.

    Returns:
        The prepared ``tfds.core.DatasetBuilder``.

    Raises:
        OfflineDataError: not prepared, and downloading is disabled or the host is
            unreachable; the message names ``data_dir`` and how to use local data.
    """
    tfds = import_tfds()
    builder = tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir))
    if builder.is_prepared():
        return builder
    shown_dir = data_dir if data_dir is not None else builder.data_dir_root
    if not download:
        raise OfflineDataError(_offline_message(name, shown_dir, "download=False"))
    if name in DOWNLOAD_HOSTS:
        host, port = DOWNLOAD_HOSTS[name]
        if not host_reachable(host, port, timeout):
            reason = f"its download host {host}:{port} is unreachable (no network?)"
            raise OfflineDataError(_offline_message(name, shown_dir, reason))
    _download_and_prepare(builder, name, download_dir)
    return builder


def _download_and_prepare(builder: Any, name: str, download_dir: Any) -> None:
    dataset_dir = Path(os.fspath(builder.data_dir_root)) / name
    existed = dataset_dir.exists()
    if download_dir is not None:
        os.makedirs(download_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f"kdcap-{name}-download-", dir=download_dir)
    try:
        builder.download_and_prepare(download_dir=tmp)
    except BaseException:
        if not existed:
            shutil.rmtree(dataset_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tfds_cifar100_arrays(
    data_dir: str | os.PathLike | None = None, *, download: bool = True
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """CIFAR-100 (official split) from tensorflow-datasets as NumPy arrays.

    Args:
        data_dir: tfds data dir (None: tfds's default).
        download: allow downloading (only when the host is reachable).

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: uint8 images NHWC, int32 labels.
    """
    tfds = import_tfds()
    builder = prepare_tfds_builder("cifar100", data_dir, download=download)
    out = []
    for split in ("train", "test"):
        # Batches, not batch_size=-1: the latter aborts on datasets of unknown size.
        ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
        batches = list(tfds.as_numpy(ds.batch(4096)))
        images = np.concatenate([b[0] for b in batches]).astype(np.uint8)
        labels = np.concatenate([b[1] for b in batches]).reshape(-1).astype(np.int32)
        out.append((images, labels))
    return out[0], out[1]


def _split_size(builder: Any, ds: Any, split: str) -> int:
    size = int(ds.cardinality())
    return size if size >= 0 else int(builder.info.splits[split].num_examples)


def tfds_image_datasets(
    name: str,
    data_dir: str | os.PathLike | None = None,
    image_size: int = 224,
    batch_size: int = 32,
    seed: int = 0,
    augment: bool = True,
    deterministic: bool = True,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    crop_fraction: float = 0.875,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    shuffle_buffer: int = 4096,
    drop_remainder: bool = False,
    initial_epoch: int = 0,
    epoch: int | None = None,
    eval_batch_size: int | None = None,
    download: bool = True,
) -> tuple[Any, Any]:
    """Train and test pipelines of a tfds image-classification dataset at ``image_size``.

    Training: random-resized crop (area ``scale``, aspect 3/4..4/3) to ``image_size``
    and horizontal flip, seeded from ``(seed, epoch, index)``. Test (and training with
    ``augment=False``): resize the shorter side to ``image_size / crop_fraction`` and
    take the central ``image_size`` square. Both are normalised with ``mean``/``std``.

    Args:
        name: ``"caltech_birds2011"``, ``"stanford_dogs"``, ``"cifar100"`` or another
            tfds dataset with ``train``/``test`` splits and ``(image, label)`` keys.
        data_dir: tfds data dir (None: tfds's default).
        image_size: side of the square images.
        batch_size: training batch size.
        seed: seed of the shuffle and augmentation.
        augment: apply the random-resized crop and flip.
        deterministic: set ``tf.data.Options.deterministic``.
        scale: area range of the random-resized crop.
        crop_fraction: central fraction kept by the test-time crop.
        mean: per-channel mean of [0, 1] images.
        std: per-channel standard deviation of [0, 1] images.
        shuffle_buffer: window of the training shuffle (see ``streaming_train_dataset``).
        drop_remainder: drop the last incomplete training batch.
        initial_epoch: epoch of the training set's first pass.
        epoch: if given, the training set replays this one epoch on every pass.
        eval_batch_size: test batch size (default: ``batch_size``).
        download: allow downloading (only when the host is reachable).

    Returns:
        ``(train_ds, test_ds)`` of ``(float32 image [B, S, S, 3], int32 label)``.
    """
    tfds = import_tfds()
    builder = prepare_tfds_builder(name, data_dir, download=download)
    # Stream encoded images: cheap to shuffle, decoded after the shuffle.
    decoders = {"image": tfds.decode.SkipDecoding()}
    train_src, test_src = (
        builder.as_dataset(split=split, as_supervised=True, shuffle_files=False, decoders=decoders)
        for split in ("train", "test")
    )

    def decode(encoded: Any) -> Any:
        tf = import_tensorflow()
        return tf.io.decode_image(encoded, channels=3, expand_animations=False)

    def eval_map(image: Any) -> Any:
        image = center_crop_resize(decode(image), image_size, crop_fraction)
        return normalize(image, mean, std)

    def train_map(image: Any, seed_pair: Any) -> Any:
        if not augment:
            return normalize(center_crop_resize(image, image_size, crop_fraction), mean, std)
        return normalize(random_resized_crop(image, seed_pair, image_size, scale), mean, std)

    train_ds = streaming_train_dataset(
        train_src,
        train_map,
        num_examples=_split_size(builder, train_src, "train"),
        batch_size=batch_size,
        decode_fn=decode,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
        drop_remainder=drop_remainder,
        initial_epoch=initial_epoch,
        epoch=epoch,
        deterministic=deterministic,
    )
    test_ds = streaming_eval_dataset(
        test_src,
        eval_map,
        num_examples=_split_size(builder, test_src, "test"),
        batch_size=eval_batch_size or batch_size,
        deterministic=deterministic,
    )
    return train_ds, test_ds


def caltech_birds_datasets(
    data_dir: str | os.PathLike | None = None, image_size: int = 224, **kwargs: Any
) -> tuple[Any, Any]:
    """CUB-200-2011 (200 classes): ``tfds_image_datasets("caltech_birds2011", ...)``."""
    return tfds_image_datasets("caltech_birds2011", data_dir, image_size, **kwargs)


def stanford_dogs_datasets(
    data_dir: str | os.PathLike | None = None, image_size: int = 224, **kwargs: Any
) -> tuple[Any, Any]:
    """Stanford Dogs (120 classes): ``tfds_image_datasets("stanford_dogs", ...)``."""
    return tfds_image_datasets("stanford_dogs", data_dir, image_size, **kwargs)
