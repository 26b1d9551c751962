"""Files written atomically and verified on load.

A file is written to a temporary name in its folder, flushed to disk and
renamed over its final name, so a process killed at any point leaves the old
file or the new one, never half of one. A small record, `<path>.record.json`
with the file's size and SHA-256, is written last; loading checks the file
against it. A file without a record (its writer was stopped before the end,
or another program wrote it) or one whose size or checksum differ (truncated
or corrupted since) raises `CorruptFileError`, naming the file.

Example:
    >>> save_model_verified(model, "runs/teacher.keras")  # doctest: +SKIP
    >>> teacher = load_model_verified("runs/teacher.keras", compile=False)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: suffix of the record written beside a verified file.
RECORD_SUFFIX = ".record.json"
#: version of the record's layout.
RECORD_FORMAT = 1
_CHUNK = 1 << 20


class CorruptFileError(ValueError):
    """A file is missing its record, or its size or checksum differ from the record."""


def record_path(path: str | os.PathLike) -> Path:
    """The record of `path`: `<path>.record.json`.

    Args:
        path: the verified file.

    Returns:
        The record's path.
    """
    path = Path(path)
    return path.with_name(path.name + RECORD_SUFFIX)


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform opens folders
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


@contextlib.contextmanager
def _temporary_beside(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A fresh temporary name in `path`'s folder; removed unless it was renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _sync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _publish(tmp: Path, path: Path) -> None:
    """Flushes `tmp` to disk and renames it over `path` (atomic on POSIX and Windows)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # the mode of a plain `open(path, "w")`, not mkstemp's 0600
    _sync_file(tmp)
    os.replace(tmp, path)
    _fsync_folder(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file and a rename.

    Args:
        path: the destination; its folder is created if needed.
        data: the content.
    """
    path = Path(path)
    with _temporary_beside(path) as tmp:
        tmp.write_bytes(bytes(data))
        _publish(tmp, path)


def atomic_write_json(
    path: str | os.PathLike,
    obj: Any,
    default: Callable[[Any], Any] | None = None,
) -> None:
    """Writes `obj` as indented JSON to `path`, atomically.

    Args:
        path: the destination.
        obj: a JSON-serialisable value.
        default: `json.dumps`'s hook for other values.
    """
    text = json.dumps(obj, indent=2, default=default) + "\n"
    atomic_write_bytes(path, text.encode())


def jsonable(value: Any) -> Any:
    """`value` with JSON-ready leaves: numpy values and paths to Python, NaN/inf to None.

    Args:
        value: nested mappings, lists and tuples of numbers, arrays, paths and strings.

    Returns:
        The same structure as dicts (string keys) and lists; strict JSON.
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def relative_paths(value: Any, root: str | os.PathLike) -> Any:
    """The strings of `value` with the absolute paths near `root` made relative to it.

    Every absolute path under `root`'s parent folder, also inside a longer string
    such as a recorded command line, is rewritten relative to `root`
    (`<root>/runs/x` -> `runs/x`, `<root>/../shared/d` -> `../shared/d`).

    Args:
        value: nested dicts and lists of JSON-ready leaves.
        root: the folder the paths become relative to (a repository).

    Returns:
        The same structure.
    """
    root = Path(root).resolve()
    # not a part of a relative path ("../tmp/x/work/y" when the parent is /work), nor /workspace
    pattern = re.compile(
        r"(?<![\w.~/-])" + re.escape(str(root.parent)) + r"(?![^/\s\"',;])[^\s\"',;]*"
    )

    def rewrite(item: Any) -> Any:
        if isinstance(item, dict):
            return {k: rewrite(v) for k, v in item.items()}
        if isinstance(item, list):
            return [rewrite(v) for v in item]
        if isinstance(item, str) and str(root.parent) in item:
            return pattern.sub(lambda m: os.path.relpath(Path(m.group(0)).resolve(), root), item)
        return item

    return rewrite(value)


def write_json(
    path: str | os.PathLike, value: Any, relative_to: str | os.PathLike | None = None
) -> Path:
    """Writes `value` as indented strict JSON, atomically (see `jsonable`).

    Args:
        path: the destination; its folder is created if needed.
        value: the content.
        relative_to: when given, absolute paths near this folder are recorded
            relative to it (see `relative_paths`).

    Returns:
        The path written.
    """
    value = jsonable(value)
    if relative_to is not None:
        value = relative_paths(value, relative_to)
    atomic_write_bytes(path, (json.dumps(value, indent=2, allow_nan=False) + "\n").encode())
    return Path(path)


def load_json(path: str | os.PathLike) -> Any:
    """The content of a JSON file written by `atomic_write_json`.

    Args:
        path: the file.

    Returns:
        The decoded value.

    Raises:
        FileNotFoundError: there is no such file.
        CorruptFileError: the file is not valid JSON.
    """
    path = Path(path)
    try:
        with open(path) as handle:
            return json.load(handle)
    except ValueError as err:
        raise CorruptFileError(
            f"{path} cannot be trusted: it is not valid JSON ({err}). Delete it to rebuild it."
        ) from None


def atomic_copy(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Copies `source` to `path` through a temporary file and a rename.

    Args:
        source: the file to copy.
        path: the destination.
    """
    path = Path(path)
    with _temporary_beside(path) as tmp:
        shutil.copyfile(source, tmp)
        _publish(tmp, path)


def file_digest(path: str | os.PathLike) -> tuple[int, str]:
    """The size in bytes and the hex SHA-256 of a file.

    Args:
        path: the file.

    Returns:
        `(size, sha256)`.
    """
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def write_record(path: str | os.PathLike) -> None:
    """Writes `<path>.record.json` with the file's size and SHA-256 (atomically).

    Args:
        path: a complete file.
    """
    size, sha256 = file_digest(path)
    record = {"format": RECORD_FORMAT, "file": Path(path).name, "size": size, "sha256": sha256}
    atomic_write_json(record_path(path), record)


def verification_problem(path: str | os.PathLike) -> str | None:
    """Why `path` fails verification, or None when it passes.

    Args:
        path: a file written with a record.

    Returns:
        A short reason ("it has no record ...", "it has N bytes, ..."), or None.
    """
    path = Path(path)
    if not path.is_file():
        return "it does not exist"
    try:
        with open(record_path(path)) as handle:
            record = json.load(handle)
        size, sha256 = int(record["size"]), str(record["sha256"])
    except FileNotFoundError:
        return (
            f"it has no record {record_path(path).name} (its writer was stopped before the "
            "end, or another program wrote it)"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return f"its record {record_path(path).name} is unreadable"
    actual_size, actual_sha256 = file_digest(path)
    if actual_size != size:
        return f"it has {actual_size} bytes, its record says {size} (truncated or overwritten)"
    if actual_sha256 != sha256:
        return "its SHA-256 differs from its record (corrupted or overwritten)"
    return None


def verify_file(path: str | os.PathLike) -> bool:
    """Whether `path` exists and matches its record.

    Args:
        path: a file written with a record.

    Returns:
        True when the size and SHA-256 match the record.
    """
    return verification_problem(path) is None


def check_file(path: str | os.PathLike) -> None:
    """Raises `CorruptFileError` unless `path` matches its record.

    Args:
        path: a file written with a record.

    Raises:
        CorruptFileError: the file or its record is missing, or they differ.
    """
    path = Path(path)
    problem = verification_problem(path)
    if problem is not None:
        raise CorruptFileError(
            f"{path} cannot be trusted: {problem}. Delete it (and {record_path(path).name}) "
            "to rebuild it."
        )


def _remove_record(path: Path) -> None:
    record_path(path).unlink(missing_ok=True)


def save_model_verified(model, path: str | os.PathLike) -> None:
    """`model.save` to a temporary `.keras` file, renamed over `path`, then its record.

    Args:
        model: a Keras model.
        path: a `.keras` file.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"`path` must end in .keras; got {path}.")
    _remove_record(path)  # a file without its record is never taken for verified
    with _temporary_beside(path, suffix=".keras") as tmp:
        model.save(tmp)
        _publish(tmp, path)
    write_record(path)


def load_model_verified(path: str | os.PathLike, **load_kwargs):
    """`keras.saving.load_model` of a file saved by `save_model_verified`, once verified.

    Args:
        path: the `.keras` file.
        **load_kwargs: passed to `keras.saving.load_model` (`compile`, `custom_objects`).

    Returns:
        The model.

    Raises:
        CorruptFileError: the file does not match its record.
    """
    import keras

    check_file(path)
    return keras.saving.load_model(path, **load_kwargs)


def save_weights_verified(model, path: str | os.PathLike) -> None:
    """`model.save_weights` to a temporary `.weights.h5` file, renamed over `path`, then
    its record.

    Args:
        model: a Keras model (or layer).
        path: a `.weights.h5` file.
    """
    path = Path(path)
    if not path.name.endswith(".weights.h5"):
        raise ValueError(f"`path` must end in .weights.h5; got {path}.")
    _remove_record(path)
    with _temporary_beside(path, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)
        _publish(tmp, path)
    write_record(path)


def save_arrays_verified(path: str | os.PathLike, **arrays) -> None:
    """Writes `np.savez` of `arrays` to `path` atomically, then its record.

    Args:
        path: the destination (no `.npz` is appended).
        **arrays: named arrays.
    """
    path = Path(path)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    _remove_record(path)
    atomic_write_bytes(path, buffer.getvalue())
    write_record(path)


def load_arrays_verified(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of an `.npz` written by `save_arrays_verified`, once verified.

    Args:
        path: the file.

    Returns:
        `{name: array}`, read into memory (no pickles).

    Raises:
        CorruptFileError: the file does not match its record.
    """
    check_file(path)
    with np.load(path, allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


def remove_verified(path: str | os.PathLike) -> None:
    """Removes a verified file and its record (the record first)."""
    path = Path(path)
    _remove_record(path)
    path.unlink(missing_ok=True)
