"""Trained teachers kept in a folder, one subfolder per training key: train once, then load.

A teacher's key is a JSON-ready dict of every setting that changes it (model,
data, epochs, loss, seed, ...). Its folder `<folder>/<prefix>-<digest>` holds
`teacher.keras` (verified, see `keras_kdcap.files`) and `meta.json` with the
key and the training record, written last: a teacher whose `meta.json` holds
its key is finished. A kill part-way leaves no `meta.json` (the training
resumes from its backups in the same folder); a file cut short or altered is
retrained with a message, never loaded.

Example:
    >>> store = TeacherStore("runs/teachers")  # doctest: +SKIP
    >>> model, info = store.get({"model": "resnet8", "epochs": 2}, train)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from keras_kdcap import files

#: `train(folder) -> (model, history)`: trains the teacher, checkpointing in `folder`.
Train = Callable[[Path], tuple[keras.Model, dict[str, list[float]]]]


def key_digest(key: dict[str, Any]) -> str:
    """The first 10 hex digits of the SHA-1 of `key` as sorted JSON."""
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


class TeacherStore:
    """Teachers trained once per key and loaded, verified, afterwards.

    Args:
        folder: where the teachers' folders go.
        prefix: key -> the start of a teacher's folder name (default: its `"model"`).
        meta_key: the name of the key's entry in `meta.json`.
        relative_to: the folder `info["path"]` is relative to (default: the working
            directory), so that results never record absolute paths.
    """

    MODEL_FILE = "teacher.keras"
    META_FILE = "meta.json"

    def __init__(
        self,
        folder: str | os.PathLike,
        prefix: Callable[[dict[str, Any]], str] = lambda key: str(key["model"]),
        meta_key: str = "key",
        relative_to: str | os.PathLike | None = None,
    ):
        self.folder = Path(folder)
        self.prefix = prefix
        self.meta_key = meta_key
        self.relative_to = relative_to

    def folder_of(self, key: dict[str, Any]) -> Path:
        """The folder of the teacher trained with `key`: `<folder>/<prefix>-<digest>`."""
        return self.folder / f"{self.prefix(key)}-{key_digest(key)}"

    def load(self, key: dict[str, Any], label: str = "teacher") -> tuple[keras.Model, dict] | None:
        """The finished teacher of `key` and its training record, or None.

        A damaged model or `meta.json` is reported and its `meta.json` removed, so
        that the teacher is trained again.

        Args:
            key: the training key.
            label: names the teacher in messages.

        Returns:
            `(model, training record)`, or None when there is no finished teacher.
        """
        folder = self.folder_of(key)
        meta = folder / self.META_FILE
        if not ((folder / self.MODEL_FILE).is_file() and meta.is_file()):
            return None
        try:  # verified: a file cut short by a kill is retrained, never loaded
            info = files.load_json(meta)
            if info.get(self.meta_key) != key:
                return None
            model = files.load_model_verified(folder / self.MODEL_FILE, compile=False)
        except files.CorruptFileError as error:
            print(f"[{label}] {error} Retraining it.", flush=True)
            meta.unlink()
            return None
        print(f"[{label}] cached: {folder}", flush=True)
        return model, info["training"]

    def get(
        self, key: dict[str, Any], train: Train, label: str = "teacher"
    ) -> tuple[keras.Model, dict[str, Any]]:
        """Loads the teacher of `key`, or trains it with `train` and stores it.

        Args:
            key: every setting that changes the teacher (JSON-ready).
            train: `train(folder) -> (model, history)`; `history` has per-epoch
                `loss` and `accuracy` lists. It may checkpoint in `folder` (and save
                `teacher.keras` there itself, as `train_teacher` does).
            label: names the teacher in messages.

        Returns:
            `(model, info)`: `info` has `train_seconds`, `final_loss`,
            `final_augmented_train_accuracy`, `cached` and `path` (the teacher's
            folder, relative).
        """
        folder = self.folder_of(key)
        found = self.load(key, label)
        if found is not None:
            return found[0], {**found[1], "cached": True, "path": self._relative(folder)}
        start = time.perf_counter()
        model, history = train(folder)
        training = {
            "train_seconds": time.perf_counter() - start,
            "final_loss": float(history["loss"][-1]),
            "final_augmented_train_accuracy": float(history["accuracy"][-1]),
        }
        if not files.verify_file(folder / self.MODEL_FILE):
            files.save_model_verified(model, folder / self.MODEL_FILE)
        files.write_json(folder / self.META_FILE, {self.meta_key: key, "training": training})
        return model, {**training, "cached": False, "path": self._relative(folder)}

    def _relative(self, path: Path) -> str:
        return os.path.relpath(path.resolve(), Path(self.relative_to or Path.cwd()).resolve())
