"""Callbacks of the example runs: logging that must never stop a training run."""

from __future__ import annotations

import importlib.util
import os
import sys

import keras

_TENSORBOARD_WARNED = False
_HOOKS = (
    "on_train_begin",
    "on_train_end",
    "on_epoch_begin",
    "on_epoch_end",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_test_begin",
    "on_test_end",
    "on_test_batch_begin",
    "on_test_batch_end",
    "on_predict_begin",
    "on_predict_end",
    "on_predict_batch_begin",
    "on_predict_batch_end",
)


class GuardedCallback(keras.callbacks.Callback):
    """Runs another callback; the first exception it raises disables it, with a warning.

    For optional logging (TensorBoard) that may not work on every backend or
    installation: the run goes on without it.

    Args:
        callback: the wrapped callback.
        label: its name in the warning.

    Example:
        >>> board = keras.callbacks.TensorBoard("logs")  # doctest: +SKIP
        >>> guarded = GuardedCallback(board, "TensorBoard")  # doctest: +SKIP
    """

    def __init__(self, callback: keras.callbacks.Callback, label: str) -> None:
        super().__init__()
        self.callback = callback
        self.label = label
        self.failed: str | None = None

    def set_model(self, model) -> None:
        super().set_model(model)
        self._guard(self.callback.set_model, model)

    def set_params(self, params) -> None:
        super().set_params(params)
        self._guard(self.callback.set_params, params)

    def _guard(self, method, *args, **kwargs) -> None:
        if self.failed is not None:
            return
        try:
            method(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - optional logging must not stop training
            self.failed = f"{type(err).__name__}: {' '.join(str(err).split())}"
            print(
                f"warning: {self.label} disabled on the {keras.backend.backend()} backend "
                f"({self.failed[:300]})",
                file=sys.stderr,
                flush=True,
            )


def _make_hook(name: str):
    def hook(self, *args, **kwargs):
        self._guard(getattr(self.callback, name), *args, **kwargs)

    hook.__name__ = name
    hook.__doc__ = f"Calls the wrapped callback's `{name}`, unless it failed before."
    return hook


for _name in _HOOKS:
    setattr(GuardedCallback, _name, _make_hook(_name))


def tensorboard_callback(log_dir: str | os.PathLike) -> GuardedCallback | None:
    """A TensorBoard callback (epoch scalars) that disables itself if it fails.

    Args:
        log_dir: the log folder.

    Returns:
        The guarded callback, or None (with a warning, once per process) when the
        tensorboard package is missing or the callback cannot be created.
    """
    global _TENSORBOARD_WARNED
    if importlib.util.find_spec("tensorboard") is None:
        if not _TENSORBOARD_WARNED:
            print(
                "warning: TensorBoard logs skipped: the tensorboard package is not installed "
                "(pip install tensorboard)",
                file=sys.stderr,
                flush=True,
            )
            _TENSORBOARD_WARNED = True
        return None
    try:
        callback = keras.callbacks.TensorBoard(
            log_dir=os.fspath(log_dir), write_graph=False, update_freq="epoch", profile_batch=0
        )
    except Exception as err:  # noqa: BLE001 - e.g. TensorFlow missing on jax/torch
        print(
            f"warning: TensorBoard skipped on the {keras.backend.backend()} backend "
            f"({type(err).__name__}: {' '.join(str(err).split())[:300]})",
            file=sys.stderr,
            flush=True,
        )
        return None
    return GuardedCallback(callback, "TensorBoard")


class TestAccuracy(keras.callbacks.Callback):
    """Adds the test accuracy of a model to each epoch's logs as `val_accuracy`.

    Cheaper than `fit(validation_data=...)` on a `Distiller`, which would also run
    the teacher over the test set every epoch. Put it before `CSVLogger` in the
    callback list so the log has the column.

    Args:
        model_to_test: the model evaluated (e.g. the student inside the Distiller).
        dataset: `(x, y)` test batches.
        verbose: print one line per epoch.
    """

    def __init__(self, model_to_test: keras.Model, dataset, verbose: bool = True) -> None:
        super().__init__()
        self.model_to_test = model_to_test
        self.dataset = dataset
        self.verbose = verbose

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        from keras_kdcap.analysis import collect_outputs

        outputs = collect_outputs(self.model_to_test, self.dataset)
        value = float((outputs.logits.argmax(axis=-1) == outputs.labels).mean())
        if logs is not None:
            logs["val_accuracy"] = value
        if self.verbose:
            print(f"epoch {epoch + 1}: test accuracy {100 * value:.2f}%", flush=True)
