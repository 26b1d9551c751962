"""`PolicyEpochCallback`: deprecated, `Distiller.fit` now tells the policy the epoch."""

from __future__ import annotations

import warnings

import keras


class PolicyEpochCallback(keras.callbacks.Callback):
    """Deprecated: `Distiller.fit` calls `policy.on_epoch_begin(epoch)` itself.

    Kept for one release. With a keras_kdcap Distiller it does nothing (the
    Distiller's own `PolicyEpoch` callback advances the policy, so the epoch
    is never set twice); with another model that has a `policy`, it calls
    `policy.on_epoch_begin(epoch)`.
    """

    def __init__(self):
        super().__init__()
        warnings.warn(
            "PolicyEpochCallback is deprecated: Distiller.fit advances epoch-driven policies "
            "(DKD, CTKD) itself. Remove it from `callbacks`; it goes in the next release.",
            DeprecationWarning,
            stacklevel=2,
        )

    def on_epoch_begin(self, epoch, logs=None):
        from keras_kdcap.distiller import Distiller

        if isinstance(self.model, Distiller):
            return
        policy = getattr(self.model, "policy", None)
        if policy is None:
            raise ValueError(
                "PolicyEpochCallback needs a compiled keras_kdcap Distiller (a model with a "
                f"`policy`); got {type(self.model).__name__}."
            )
        if hasattr(policy, "on_epoch_begin"):
            policy.on_epoch_begin(int(epoch))
