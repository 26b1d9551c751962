"""Teacher-output cache: compute the frozen teacher's logits once (offline KD).

The teacher is frozen, so its logits for a fixed input never change. When a
pipeline's inputs are the same on every pass (no random augmentation, or an
augmentation fixed by a seed for the pass being cached), `TeacherCache`
runs the teacher over them once, in inference mode, and serves batches
`({"inputs": x, "teacher_logits": f}, y)`: the Distiller then skips the
teacher's forward pass and each step costs a student step only.

A cache is only right for the inputs it was built from; it refuses what
would make it wrong:

- a `tf.data.Dataset` whose first batch differs between two passes
  (reshuffled or randomly augmented on every pass);
- a cache file built for other teacher weights or other inputs (a
  fingerprint: a hash of the teacher's weights, and the inputs' length and
  a hash of an evenly spaced sample of them).

Shuffling the cached batches is safe: each input travels with its logits.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator

import keras
import numpy as np

from keras_kdcap import files
from keras_kdcap.distiller import with_teacher_logits

#: version of the cache file layout.
CACHE_FORMAT = 1
#: how many evenly spaced inputs the data fingerprint hashes.
FINGERPRINT_SAMPLES = 256


def _tensorflow():
    try:
        import tensorflow as tf
    except ImportError as err:  # pragma: no cover - TF is installed with the [tensorflow] extra
        raise ImportError(
            "TeacherCache.dataset builds a tf.data.Dataset and needs TensorFlow "
            "(pip install keras-kdcap[tensorflow]); use TeacherCache.arrays() without it."
        ) from err
    return tf


def _is_tf_dataset(x) -> bool:
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(x, tf.data.Dataset)


def _update_hash(digest, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())


def teacher_fingerprint(teacher: keras.Model) -> str:
    """A hash of the teacher's weights (values, shapes and dtypes), in order.

    Args:
        teacher: the teacher model.

    Returns:
        A hex SHA-256 digest.
    """
    digest = hashlib.sha256()
    for variable in teacher.weights:
        _update_hash(digest, np.asarray(keras.ops.convert_to_numpy(variable)))
    return digest.hexdigest()


def data_fingerprint(x, num_samples: int = FINGERPRINT_SAMPLES) -> str:
    """A hash of the inputs' length and of `num_samples` evenly spaced inputs.

    Args:
        x: an array, or a nested structure (dict, list) of arrays of equal length.
        num_samples: how many inputs to hash (all when fewer).

    Returns:
        A hex SHA-256 digest.
    """
    arrays = keras.tree.flatten(x)
    length = len(arrays[0])
    indices = np.unique(np.linspace(0, length - 1, min(length, num_samples)).astype(np.int64))
    digest = hashlib.sha256(f"n={length};k={len(arrays)}".encode())
    for array in arrays:
        _update_hash(digest, np.asarray(array)[indices])
    return digest.hexdigest()


def _first_element(dataset):
    for element in dataset.take(1).as_numpy_iterator():
        return element
    return None


def _structures_equal(a, b) -> bool:
    try:
        keras.tree.assert_same_structure(a, b)
    except (ValueError, TypeError):
        return False
    return all(
        np.array_equal(np.asarray(u), np.asarray(v))
        for u, v in zip(keras.tree.flatten(a), keras.tree.flatten(b), strict=True)
    )


def _check_deterministic(dataset) -> None:
    first, second = _first_element(dataset), _first_element(dataset)
    if first is None:
        raise ValueError("`x` is an empty tf.data.Dataset: there is nothing to cache.")
    if not _structures_equal(first, second):
        raise ValueError(
            "`x` yields a different first batch on each pass (it is reshuffled or randomly "
            "augmented every time it is iterated): cached teacher logits would belong to "
            "other inputs. Pass deterministic data: no `shuffle` (or "
            "`shuffle(..., reshuffle_each_iteration=False)`) and no random augmentation, "
            "or augmentation fixed by a seed for the pass you cache (e.g. one cache per "
            "epoch)."
        )


def _split_element(element):
    if isinstance(element, tuple) and 1 <= len(element) <= 3:
        x = element[0]
        y = element[1] if len(element) > 1 else None
        weight = element[2] if len(element) > 2 else None
        return x, y, weight
    return element, None, None


class TeacherCache:
    """A frozen teacher's logits for a fixed set of inputs, computed once.

    Args:
        teacher: the trained teacher (called in inference mode).
        batch_size: batch size of the teacher's pass, > 0.

    Example:
        >>> cache = TeacherCache(teacher).build(x_train, y_train)  # doctest: +SKIP
        >>> distiller.fit(cache.dataset(batch_size=64, seed=0), epochs=240)  # doctest: +SKIP
    """

    def __init__(self, teacher: keras.Model, batch_size: int = 256):
        if not isinstance(teacher, keras.layers.Layer):
            raise TypeError(f"`teacher` must be a Keras model; got {type(teacher).__name__}.")
        self.teacher = teacher
        self.batch_size = self._check_batch_size("batch_size", batch_size)
        self.inputs = None
        self.labels = None
        self.sample_weight = None
        self.logits: np.ndarray | None = None
        self.loaded_from_file = False

    @staticmethod
    def _check_batch_size(name: str, value) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
        return int(value)

    # ------------------------------------------------------------ building
    def build(
        self,
        x,
        y=None,
        sample_weight=None,
        batch_size: int | None = None,
        path: str | os.PathLike | None = None,
    ) -> TeacherCache:
        """Computes (or loads) the teacher's logits for `x`.

        Args:
            x: the inputs: an array (or a dict/list of arrays), or a
                deterministic `tf.data.Dataset` of batches `x`, `(x, y)` or
                `(x, y, sample_weight)`; its first batch is drawn twice to
                check it. Datasets are read into memory.
            y: labels for array inputs (None for datasets, which bring theirs).
            sample_weight: per-sample weights for array inputs.
            batch_size: the teacher's batch size; the constructor's when None.
            path: an `.npz` file: if it exists, the logits are loaded from it
                after checking it against its record (size, SHA-256) and its
                fingerprint against `teacher` and `x`; otherwise they are
                computed and saved there, atomically, with the record.

        Returns:
            The cache itself, built.

        Raises:
            ValueError: `x` is not deterministic or empty, `y` does not match
                `x`, or the file at `path` belongs to another teacher or data.
            CorruptFileError: the file at `path` is truncated, corrupted or has
                no record (a ValueError too).
        """
        batch_size = self.batch_size if batch_size is None else batch_size
        batch_size = self._check_batch_size("batch_size", batch_size)
        if _is_tf_dataset(x):
            if y is not None or sample_weight is not None:
                raise ValueError(
                    "`y` and `sample_weight` must be None when `x` is a tf.data.Dataset: "
                    "the dataset's elements bring them, as `(x, y[, sample_weight])`."
                )
            _check_deterministic(x)
            inputs, labels, weights = self._read_dataset(x)
        else:
            inputs, labels, weights = self._read_arrays(x, y, sample_weight)
        self.inputs, self.labels, self.sample_weight = inputs, labels, weights
        fingerprints = {
            "teacher_fingerprint": teacher_fingerprint(self.teacher),
            "data_fingerprint": data_fingerprint(inputs),
        }
        self.loaded_from_file = False
        if path is not None and os.path.exists(path):
            self.logits = self._load(path, fingerprints)
            self.loaded_from_file = True
        else:
            self.logits = self._predict(inputs, batch_size)
            if path is not None:
                self._save(path, fingerprints)
        return self

    @staticmethod
    def _read_arrays(x, y, sample_weight):
        if x is None or isinstance(x, (Iterator, keras.utils.PyDataset)):
            raise TypeError(
                "`x` must be an array (or a dict/list of arrays) or a tf.data.Dataset; got "
                f"{type(x).__name__}. Generators and PyDatasets cannot be checked for "
                "determinism: convert them to arrays or a tf.data.Dataset."
            )
        inputs = keras.tree.map_structure(np.asarray, x)
        lengths = {len(a) for a in keras.tree.flatten(inputs)}
        if len(lengths) != 1:
            raise ValueError(f"The arrays of `x` have different lengths: {sorted(lengths)}.")
        length = lengths.pop()
        if length == 0:
            raise ValueError("`x` is empty: there is nothing to cache.")
        for name, value in (("y", y), ("sample_weight", sample_weight)):
            if value is not None and len(value) != length:
                raise ValueError(f"`{name}` has {len(value)} entries but `x` has {length}.")
        if sample_weight is not None and y is None:
            raise ValueError("`sample_weight` needs labels: pass `y` too.")
        labels = None if y is None else np.asarray(y)
        weights = None if sample_weight is None else np.asarray(sample_weight)
        return inputs, labels, weights

    @staticmethod
    def _read_dataset(dataset):
        parts = ([], [], [])
        for element in dataset.as_numpy_iterator():
            for store, value in zip(parts, _split_element(element), strict=True):
                store.append(value)
        if not parts[0]:
            raise ValueError("`x` is an empty tf.data.Dataset: there is nothing to cache.")
        first = parts[0][0]
        if any(np.ndim(a) == 0 for a in keras.tree.flatten(first)):
            raise ValueError(
                "`x` must yield batches (call `dataset.batch(n)` first): its inputs are scalars."
            )
        inputs = keras.tree.map_structure(lambda *a: np.concatenate(a), *parts[0])
        labels = None if parts[1][0] is None else np.concatenate(parts[1])
        weights = None if parts[2][0] is None else np.concatenate(parts[2])
        return inputs, labels, weights

    def _predict(self, inputs, batch_size: int) -> np.ndarray:
        """The teacher's float32 logits, through its compiled predict step.

        The last batch is padded to `batch_size` (and the padding dropped) so
        the step is compiled once.
        """
        length = len(keras.tree.flatten(inputs)[0])
        chunks = []
        for start in range(0, length, batch_size):
            stop = min(start + batch_size, length)

            def take(a, start=start, stop=stop):
                batch = a[start:stop]
                if stop - start < batch_size and length > batch_size:
                    pad = np.repeat(batch[-1:], batch_size - (stop - start), axis=0)
                    batch = np.concatenate([batch, pad])
                return batch

            logits = self.teacher.predict_on_batch(keras.tree.map_structure(take, inputs))
            logits = np.asarray(keras.ops.convert_to_numpy(logits), dtype=np.float32)
            chunks.append(logits[: stop - start])
        logits = np.concatenate(chunks)
        if not np.all(np.isfinite(logits)):
            bad = int(np.sum(~np.all(np.isfinite(logits), axis=-1)))
            raise ValueError(
                f"The teacher gave NaN or inf logits for {bad} input(s) of `x`: check the "
                "teacher's weights and the inputs' preprocessing before caching."
            )
        return logits

    # --------------------------------------------------------------- files
    def _save(self, path, fingerprints: dict) -> None:
        """Writes the file atomically, with a size and SHA-256 record (`keras_kdcap.files`)."""
        files.save_arrays_verified(
            path,
            logits=self.logits,
            format=np.int64(CACHE_FORMAT),
            **{k: np.array(v) for k, v in fingerprints.items()},
        )

    def _load(self, path, fingerprints: dict) -> np.ndarray:
        try:
            stored = files.load_arrays_verified(path)
        except files.CorruptFileError as err:
            raise files.CorruptFileError(
                f"`path`={os.fspath(path)!r} is not a TeacherCache file written to the end "
                f"by this version: {err}"
            ) from None
        missing = {"logits", "format", *fingerprints} - set(stored)
        if missing:
            raise ValueError(
                f"`path`={os.fspath(path)!r} is not a TeacherCache file (it lacks "
                f"{sorted(missing)}): name another file."
            )
        if int(stored["format"]) != CACHE_FORMAT:
            raise ValueError(
                f"`path`={os.fspath(path)!r} has cache format {int(stored['format'])}, "
                f"this version reads {CACHE_FORMAT}: delete it to rebuild the cache."
            )
        for key, what in (
            ("teacher_fingerprint", "another teacher (its weights differ)"),
            ("data_fingerprint", "other inputs (their length or content differ)"),
        ):
            if str(stored[key]) != fingerprints[key]:
                raise ValueError(
                    f"`path`={os.fspath(path)!r} holds teacher logits for {what}: "
                    "delete the file to rebuild the cache, or name another `path`."
                )
        return np.asarray(stored["logits"], dtype=np.float32)

    # ------------------------------------------------------------- serving
    def _check_built(self) -> None:
        if self.logits is None:
            raise ValueError("The cache is empty: call `cache.build(x, y)` first.")

    def __len__(self) -> int:
        return 0 if self.logits is None else len(self.logits)

    def arrays(self):
        """The cached data as arrays for `distiller.fit(x, y, sample_weight=...)`.

        Returns:
            `(x, y, sample_weight)` with `x = {"inputs": inputs,
            "teacher_logits": logits}`; `y` and `sample_weight` are None when
            the cache has none.

        Example:
            >>> x, y, w = cache.arrays()  # doctest: +SKIP
            >>> distiller.fit(x, y, sample_weight=w, batch_size=64)  # doctest: +SKIP
        """
        self._check_built()
        return with_teacher_logits(self.inputs, self.logits), self.labels, self.sample_weight

    def dataset(
        self,
        batch_size: int,
        shuffle: bool = True,
        seed: int | None = None,
        drop_remainder: bool = False,
    ):
        """The cached data as a batched `tf.data.Dataset` for `distiller.fit`.

        Every pass is reshuffled (if `shuffle`), inputs and logits together.

        Args:
            batch_size: samples per batch.
            shuffle: shuffle on every pass.
            seed: seed of the shuffle (reproducible order per pass).
            drop_remainder: drop the last incomplete batch (e.g. for data
                parallelism, see `keras_kdcap.distribution.check_batch_size`).

        Returns:
            A dataset of `({"inputs": x, "teacher_logits": f}, y[, sample_weight])`.
        """
        self._check_built()
        batch_size = self._check_batch_size("batch_size", batch_size)
        tf = _tensorflow()
        inputs, labels, weights = self.arrays()
        element = (inputs,) if labels is None else (inputs, labels)
        if weights is not None:
            element = (inputs, labels, weights)
        dataset = tf.data.Dataset.from_tensor_slices(element if len(element) > 1 else inputs)
        if shuffle:
            dataset = dataset.shuffle(len(self), seed=seed, reshuffle_each_iteration=True)
        return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
