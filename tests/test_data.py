"""Tests of keras_kdcap.data: CIFAR-100 pipelines, tfds loaders, Tiny-ImageNet folders."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="keras_kdcap.data needs TensorFlow")
tfds = pytest.importorskip("tensorflow_datasets", reason="tfds tests need tensorflow-datasets")

import keras  # noqa: E402

from keras_kdcap import data as kdata  # noqa: E402
from keras_kdcap.data import tfds_sources  # noqa: E402

CIFAR_DIR = Path(
    os.environ.get("KDCAP_CIFAR100_DIR")
    or Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar100"
)
MEAN = np.array(kdata.CIFAR100_MEAN, np.float64)
STD = np.array(kdata.CIFAR100_STD, np.float64)


@pytest.fixture(scope="module")
def cifar():
    """The offline CIFAR-100 arrays, or a skip when they are absent."""
    if not kdata.has_cifar100_npz(CIFAR_DIR):
        pytest.skip(
            f"offline CIFAR-100 (train.npz, test.npz) not found in {CIFAR_DIR}; "
            "set KDCAP_CIFAR100_DIR to its folder"
        )
    return kdata.load_cifar100_arrays(CIFAR_DIR)


def _np_normalize(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float64) / 255.0 - MEAN) / STD


def _collect(ds, limit: int | None = None):
    xs, ys = [], []
    for x, y in ds:
        xs.append(x.numpy())
        ys.append(y.numpy())
        if limit is not None and sum(len(b) for b in ys) >= limit:
            break
    return np.concatenate(xs), np.concatenate(ys)


# --- the offline npz ---------------------------------------------------------------------


def test_load_arrays(cifar):
    (x_train, y_train), (x_test, y_test) = cifar
    assert x_train.shape == (50000, 32, 32, 3) and x_train.dtype == np.uint8
    assert x_test.shape == (10000, 32, 32, 3)
    assert y_train.dtype == np.int32 and y_train.shape == (50000,)
    assert y_train.min() == 0 and y_train.max() == 99
    assert np.all(np.bincount(y_train, minlength=100) == 500)


def test_missing_npz_names_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.npz") as err:
        kdata.load_cifar100_arrays(tmp_path)
    assert str(tmp_path) in str(err.value)


# --- pipeline contents -------------------------------------------------------------------


def test_shapes_dtypes_labels(cifar):
    train, test = kdata.cifar100_datasets_from_arrays(*cifar, batch_size=64, per_class=3)
    assert int(train.cardinality()) == 5  # 300 images
    assert int(test.cardinality()) == 157  # 10000 images
    x, y = next(iter(train))
    assert x.shape == (64, 32, 32, 3) and x.dtype == tf.float32
    assert y.shape == (64,) and y.dtype == tf.int32
    _, labels = _collect(train)
    assert labels.min() >= 0 and labels.max() < 100
    assert np.all(np.bincount(labels, minlength=100) == 3)


def test_normalisation_matches_numpy(cifar):
    train, _ = kdata.cifar100_datasets_from_arrays(
        *cifar, batch_size=500, per_class=30, augment=False, shuffle=False
    )
    images, labels = _collect(train)
    keep = kdata.stratified_indices(cifar[0][1], 30)
    reference = _np_normalize(cifar[0][0][keep])
    np.testing.assert_array_equal(labels, cifar[0][1][keep])
    np.testing.assert_allclose(images, reference, atol=1e-5)
    # The constants are CIFAR-100's: a few thousand images come out standardised.
    assert images.shape[0] == 3000
    np.testing.assert_allclose(images.mean(axis=(0, 1, 2)), 0.0, atol=0.05)
    np.testing.assert_allclose(images.std(axis=(0, 1, 2)), 1.0, atol=0.05)


def test_augmentation_changes_images_not_labels(cifar):
    kwargs = dict(batch_size=100, per_class=2, shuffle=False, epoch=0)
    plain, _ = kdata.cifar100_datasets_from_arrays(*cifar, augment=False, **kwargs)
    augmented, _ = kdata.cifar100_datasets_from_arrays(*cifar, augment=True, **kwargs)
    x0, y0 = _collect(plain)
    x1, y1 = _collect(augmented)
    np.testing.assert_array_equal(y0, y1)
    changed = np.any(np.abs(x0 - x1) > 1e-6, axis=(1, 2, 3))
    assert changed.mean() > 0.9  # only (4, 4) offsets without a flip leave an image as is


def test_crop_flip_matches_numpy_reference(cifar):
    seed, epoch, per_class = 3, 2, 1
    train, _ = kdata.cifar100_datasets_from_arrays(
        *cifar, batch_size=100, per_class=per_class, shuffle=False, seed=seed, epoch=epoch
    )
    images, _ = _collect(train)
    raw = cifar[0][0][kdata.stratified_indices(cifar[0][1], per_class)]
    params = []
    for index in range(len(raw)):
        oy, ox, flip = kdata.crop_flip_params(kdata.element_seed(seed, epoch, index))
        oy, ox, flip = int(oy), int(ox), bool(flip)
        params.append((oy, ox, flip))
        padded = np.pad(raw[index], ((4, 4), (4, 4), (0, 0)))
        crop = padded[oy : oy + 32, ox : ox + 32]
        if flip:
            crop = crop[:, ::-1]
        np.testing.assert_allclose(images[index], _np_normalize(crop), atol=1e-5)
    offsets = np.array([p[:2] for p in params])
    assert offsets.min() == 0 and offsets.max() == 8
    assert 0.3 < np.mean([p[2] for p in params]) < 0.7


def test_seeded_determinism_and_epochs(cifar):
    def pipeline(seed):
        return kdata.cifar100_datasets_from_arrays(*cifar, batch_size=50, per_class=1, seed=seed)[0]

    a, b = pipeline(0), pipeline(0)
    a0, a1 = _collect(a), _collect(a)  # two passes: epochs 0 and 1
    b0, b1 = _collect(b), _collect(b)
    for x, y in zip(a0 + a1, b0 + b1, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a0[0], a1[0])  # each epoch its own order and crops
    assert not np.array_equal(a0[1], a1[1])
    assert not np.array_equal(a0[0], _collect(pipeline(1))[0])
    # The epoch is explicit: it can be replayed, and epoch=... gives the same batches.
    kdata.set_epoch(a, 1)
    np.testing.assert_array_equal(_collect(a)[0], a1[0])
    replay = kdata.cifar100_datasets_from_arrays(*cifar, batch_size=50, per_class=1, epoch=1)[0]
    np.testing.assert_array_equal(_collect(replay)[0], a1[0])


def test_per_class_counts(cifar):
    train, test = kdata.cifar100_datasets_from_arrays(
        *cifar, batch_size=128, per_class=4, test_per_class=2
    )
    _, y_train = _collect(train)
    _, y_test = _collect(test)
    assert np.all(np.bincount(y_train, minlength=100) == 4)
    assert np.all(np.bincount(y_test, minlength=100) == 2)
    indices = kdata.stratified_indices(np.array([2, 0, 2, 1, 0, 2]), 2)
    np.testing.assert_array_equal(indices, [0, 1, 2, 3, 4])


def test_cifar100_datasets_reads_npz_dir(cifar):
    train, _ = kdata.cifar100_datasets(CIFAR_DIR, batch_size=100, train_slice=1)
    assert int(train.cardinality()) == 1


def test_epoch_sync_under_fit(cifar):
    train, _ = kdata.cifar100_datasets_from_arrays(*cifar, batch_size=50, per_class=1)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(int(kdata.get_epoch_counter(train).numpy()))

    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(100)]
    )
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(train, epochs=3, verbose=0, callbacks=[kdata.EpochSync(train), Record()])
    assert seen == [1, 2, 3]  # epoch e read once, at its start


# --- tfds --------------------------------------------------------------------------------


def test_tfds_cifar100_mocked(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_sources, "host_reachable", lambda *args, **kwargs: True)
    with tfds.testing.mock_data(num_examples=24):
        train, test = kdata.cifar100_datasets(tmp_path, batch_size=8)
        x, y = next(iter(train))
        xt, _ = next(iter(test))
    assert x.shape == (8, 32, 32, 3) and x.dtype == tf.float32 and xt.shape == (8, 32, 32, 3)
    assert y.dtype == tf.int32 and int(tf.reduce_min(y)) >= 0 and int(tf.reduce_max(y)) < 100


def _encoded_images_as_dataset(num_classes: int, count: int = 7):
    """A tfds ``_as_dataset`` stand-in: JPEG bytes of varied sizes, as SkipDecoding yields."""

    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        rng = np.random.default_rng(0 if split == "train" else 1)
        images = [
            tf.io.encode_jpeg(rng.integers(0, 256, (40 + 9 * i, 70 - 5 * i, 3), np.uint8))
            for i in range(count)
        ]
        labels = np.arange(count, dtype=np.int64) * 37 % num_classes
        return tf.data.Dataset.from_tensor_slices({"image": tf.stack(images), "label": labels})

    return as_dataset


@pytest.mark.parametrize("name", ["caltech_birds2011", "stanford_dogs"])
def test_tfds_image_datasets_mocked(tmp_path, monkeypatch, name):
    monkeypatch.setattr(tfds_sources, "host_reachable", lambda *args, **kwargs: True)
    num_classes = tfds_sources.NUM_CLASSES[name]
    with tfds.testing.mock_data(as_dataset_fn=_encoded_images_as_dataset(num_classes)):
        train, test = kdata.tfds_image_datasets(
            name, tmp_path, image_size=48, batch_size=3, shuffle_buffer=4
        )
        x, y = _collect(train)
        x2, y2 = _collect(train)  # the next epoch: another order, the same examples
        xt, yt = _collect(test)
    assert x.shape == (7, 48, 48, 3) and xt.shape == (7, 48, 48, 3)
    assert x.dtype == np.float32 and y.dtype == np.int32
    expected = np.arange(7) * 37 % num_classes
    np.testing.assert_array_equal(np.sort(y), np.sort(expected))
    np.testing.assert_array_equal(np.sort(y2), np.sort(expected))
    np.testing.assert_array_equal(yt, expected)  # test: source order, no shuffle
    assert not np.array_equal(x, x2)


def test_offline_failure_is_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_sources, "host_reachable", lambda *args, **kwargs: False)
    start = time.monotonic()
    with pytest.raises(kdata.OfflineDataError) as err:
        kdata.cifar100_datasets(tmp_path)
    assert time.monotonic() - start < 5
    assert str(tmp_path) in str(err.value) and "train.npz" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_unreachable_host_fails_fast(tmp_path, monkeypatch):
    # ".invalid" never resolves (RFC 6761): no network is touched.
    monkeypatch.setitem(tfds_sources.DOWNLOAD_HOSTS, "stanford_dogs", ("host.invalid", 80))
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="unreachable") as err:
        kdata.prepare_tfds_builder("stanford_dogs", tmp_path, timeout=1.0)
    assert time.monotonic() - start < 5
    assert str(tmp_path) in str(err.value)
    assert not (tmp_path / "stanford_dogs").exists()


def test_host_check_is_bounded(monkeypatch):
    with socket.socket() as sock:  # a closed local port: refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert not kdata.host_reachable("127.0.0.1", port, timeout=1.0)
    # A server that never answers (or a DNS lookup that hangs) costs only the timeout.
    monkeypatch.setattr(tfds_sources, "_speaks_http", lambda *args: time.sleep(30))
    start = time.monotonic()
    assert not kdata.host_reachable("example.org", 443, timeout=0.5)
    assert time.monotonic() - start < 2


def test_failed_download_leaves_no_folder(tmp_path):
    downloads = tmp_path / "downloads"

    class Builder:
        data_dir_root = tmp_path / "tfds"

        def download_and_prepare(self, download_dir):
            (Path(download_dir) / "part.tar.gz.tmp").write_bytes(b"x")
            (self.data_dir_root / "cifar100" / "3.0.2.incomplete.1").mkdir(parents=True)
            raise ConnectionError("lost the network")

    with pytest.raises(ConnectionError):
        tfds_sources._download_and_prepare(Builder(), "cifar100", downloads)
    assert not (tmp_path / "tfds" / "cifar100").exists()
    assert list(downloads.iterdir()) == []


# --- Tiny-ImageNet -----------------------------------------------------------------------


def _fake_tiny_imagenet(root: Path, wnids=("n02", "n01", "n03"), per_class=4, val=2) -> Path:
    rng = np.random.default_rng(0)

    def jpeg(path: Path, channels: int = 3) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (64, 64, channels), dtype=np.uint8)
        path.write_bytes(tf.io.encode_jpeg(pixels).numpy())

    (root / "wnids.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines = []
    for wnid in wnids:
        for i in range(per_class):
            jpeg(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", 1 if i == 0 else 3)
        for i in range(val):
            name = f"val_{wnid}_{i}.JPEG"
            jpeg(root / "val" / "images" / name)
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def test_tiny_imagenet_folder(tmp_path):
    root = _fake_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    lists = kdata.tiny_imagenet_file_lists(root)
    assert lists["wnids"] == ["n01", "n02", "n03"]
    np.testing.assert_array_equal(np.bincount(lists["train_labels"]), [4, 4, 4])
    for path, label in zip(lists["train_paths"], lists["train_labels"], strict=True):
        assert f"/n0{label + 1}/" in path
    assert sorted(lists["val_labels"].tolist()) == [0, 0, 1, 1, 2, 2]

    train, val = kdata.tiny_imagenet_datasets(root, batch_size=5, per_class=3)
    x, y = _collect(train)
    assert x.shape == (9, 64, 64, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(np.bincount(y), [3, 3, 3])
    xv, yv = _collect(val)
    assert xv.shape == (6, 64, 64, 3)
    np.testing.assert_array_equal(np.sort(yv), [0, 0, 1, 1, 2, 2])
    small, _ = kdata.tiny_imagenet_datasets(root, image_size=32, batch_size=4)
    assert next(iter(small))[0].shape == (4, 32, 32, 3)


def test_tiny_imagenet_missing_names_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="wnids.txt") as err:
        kdata.tiny_imagenet_file_lists(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_missing_tensorflow_message(monkeypatch):
    import sys

    from keras_kdcap.data import _deps

    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(ImportError, match=r"pip install keras-kdcap\[tensorflow\]"):
        _deps.import_tensorflow.__wrapped__()
