"""The temperature-policy interface every distillation method implements."""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import keras

from keras_kdcap import ops as kd_ops
from keras_kdcap.losses import distillation_loss
from keras_kdcap.policies.registry import register_policy


class TemperaturePolicy(keras.layers.Layer):
    """Maps teacher logits (and labels) to a target and a student temperature.

    A policy is a Keras layer so that any state it owns (FGCR's relations, a
    learnable temperature) is tracked, saved and restored with the
    Distiller. It computes in float32 whatever the global dtype policy.

    Subclasses implement `compute_target`, or `kd_loss` for a KD term other
    than `s^2 KL(t || softmax(g/s))`, and may use the `prepare` and
    `on_epoch_begin` hooks. A `registry_name` registers the class
    (`get_policy`, the scripts' `--policy`); its constructor's arguments are
    its settings (`--policy_args`) and its config. docs/policies/adding.md
    walks through a new policy.
    """

    #: whether `compute_target` needs the labels.
    requires_labels: bool = True
    #: names of the per-sample statistics `compute_target` returns (averaged into the History).
    metric_names: tuple[str, ...] = ()
    #: the name `get_policy` and the scripts' `--policy` know the class by.
    registry_name: str | None = None
    #: constructor arguments stored under another attribute (argument -> attribute).
    config_attributes: Mapping[str, str] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "registry_name" in cls.__dict__ and cls.registry_name is not None:
            register_policy(cls)

    def __init__(self, name: str | None = None, **kwargs):
        kwargs.pop("dtype", None)
        super().__init__(name=name, dtype="float32", **kwargs)
        # A policy makes its state in __init__ or `prepare`, so it is built now, unless
        # its class has a `build` of its own. The Distiller never calls it as a layer, and
        # an unbuilt layer makes Keras's train_on_batch trace the whole model every call.
        self.built = type(self).build is keras.layers.Layer.build

    def compute_target(self, teacher_logits, labels):
        """Returns the target distribution, the student temperature and statistics.

        Args:
            teacher_logits: `[B, C]` teacher logits.
            labels: int32 `[B]` labels, or None for policies that need none.

        Returns:
            `(probs, student_temperature, stats)`: `[B, C]` probabilities
            whose rows sum to 1, float32 `[B]` temperatures, and a dict of
            float32 `[B]` statistics keyed by `metric_names`.
        """
        raise NotImplementedError

    def kd_loss(self, teacher_logits, student_logits, labels, temperature_scaling: bool = True):
        """Per-sample KD term and the target's statistics.

        Args:
            teacher_logits: `[B, C]` teacher logits (gradient stopped).
            student_logits: `[B, C]` student logits.
            labels: int32 `[B]` labels or None.
            temperature_scaling: multiply by `s^2`.

        Returns:
            `(loss, probs, stats)`: float32 `[B]` KD losses, the `[B, C]`
            teacher target, and the statistics dict.
        """
        probs, temperature, stats = self.compute_target(teacher_logits, labels)
        loss = distillation_loss(probs, student_logits, temperature, temperature_scaling)
        return loss, probs, stats

    def check_ready(self) -> None:
        """Raises if the policy needs preparation (`prepare`) before use."""

    def prepare(self, teacher: keras.Model, data=None) -> None:
        """Gets the policy ready for a teacher before distilling; nothing by default.

        Scripts call it on every policy, so none of them special-cases a
        method (FGCR computes its class relations here).

        Args:
            teacher: the (trained, frozen) teacher.
            data: `(x, y)` batches of un-augmented training data, or None
                when none is at hand.
        """

    def on_epoch_begin(self, epoch: int) -> None:
        """Called by the Distiller at the start of every training epoch; nothing by default.

        Args:
            epoch: Keras's 0-based epoch (counted on from `initial_epoch`
                when training resumes).
        """

    def call(self, teacher_logits, labels=None):
        """`probs, student_temperature = policy(teacher_logits, labels)`.

        Args:
            teacher_logits: `[B, C]` teacher logits.
            labels: `[B]`, `[B, 1]` or one-hot labels (required when
                `requires_labels`).

        Returns:
            `(probs, student_temperature)`, `[B, C]` and `[B]`.
        """
        self.check_ready()
        teacher_logits = kd_ops.as_float32(teacher_logits)
        labels = self._labels(labels, teacher_logits.shape[-1])
        probs, temperature, _ = self.compute_target(teacher_logits, labels)
        return probs, temperature

    def _labels(self, labels, num_classes: int):
        if labels is None:
            if self.requires_labels:
                raise ValueError(
                    f"{type(self).__name__} needs the labels: call it as "
                    "`policy(teacher_logits, labels)`."
                )
            return None
        return kd_ops.sparse_labels(labels, num_classes)

    def get_config(self) -> dict:
        """The layer's config and every constructor argument, read back from `self`.

        An argument `x` of this class's (or a policy base class's) `__init__`
        is the attribute `self.x`, or the one `config_attributes` names; one
        stored under neither keeps the value it was passed, where Keras
        recorded it (plain values only).
        """
        config = super().get_config()
        passed = getattr(getattr(self, "_auto_config", None), "config", {})
        for name in _arguments(type(self)):
            attribute = self.config_attributes.get(name, name)
            if hasattr(self, attribute):
                config[name] = getattr(self, attribute)
            elif name in passed:
                config[name] = passed[name]
        return config

    def compute_output_spec(self, teacher_logits, labels=None):
        batch = teacher_logits.shape[0]
        return (
            keras.KerasTensor(teacher_logits.shape, dtype="float32"),
            keras.KerasTensor((batch,), dtype="float32"),
        )


def _arguments(cls: type) -> list[str]:
    """The named constructor arguments of `cls` and its policy bases, bases first."""
    names: dict[str, None] = {}
    for klass in reversed(cls.__mro__):
        if not (issubclass(klass, TemperaturePolicy) and "__init__" in vars(klass)):
            continue
        for name, param in inspect.signature(klass.__init__).parameters.items():
            kinds = (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
            if param.kind in kinds and name not in ("self", "name", "dtype"):
                names[name] = None
    return list(names)
