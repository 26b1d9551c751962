"""`PolicyEpochCallback`: the training epoch for policies that schedule by epoch."""

from __future__ import annotations

import keras


class PolicyEpochCallback(keras.callbacks.Callback):
    """Calls `distiller.policy.set_epoch(epoch)` at the start of every epoch.

    DKD's warm-up and CTKD's curriculum read the epoch from a non-trainable
    variable of the policy; this callback advances it, on every backend
    (the assignment happens between epochs, outside the compiled step).
    Policies without `set_epoch` are left alone. The epoch is Keras's
    0-based one, counted from `initial_epoch` when training resumes.

    Example:
        >>> distiller.fit(data, epochs=240, callbacks=[PolicyEpochCallback()])  # doctest: +SKIP
    """

    def on_epoch_begin(self, epoch, logs=None):
        policy = getattr(self.model, "policy", None)
        if policy is None:
            raise ValueError(
                "PolicyEpochCallback needs a compiled keras_kdcap Distiller (a model with a "
                f"`policy`); got {type(self.model).__name__}."
            )
        if hasattr(policy, "set_epoch"):
            policy.set_epoch(int(epoch))
