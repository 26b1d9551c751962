"""`Distiller`: a student trained from a frozen teacher through a temperature policy."""

from __future__ import annotations

import contextlib
import warnings

import keras
from keras import ops

from keras_kdcap import labels as kd_labels
from keras_kdcap import ops as kd_ops
from keras_kdcap import outputs as kd_outputs
from keras_kdcap import sequence as kd_sequence
from keras_kdcap.batches import has_labels, peek
from keras_kdcap.guards import GUARD_METRICS, InputGuard, TeacherSnapshot, check_fit_data
from keras_kdcap.hub import check_preprocessors
from keras_kdcap.policies.base import TemperaturePolicy
from keras_kdcap.policies.fixed import FixedTemperature
from keras_kdcap.step_metrics import StepStatistics
from keras_kdcap.validation import check_non_negative

try:  # Divides by the replica count under tf.distribute; identity elsewhere.
    from keras.src.losses.loss import scale_loss_for_distribution
except ImportError:  # pragma: no cover - older or newer Keras layouts

    def scale_loss_for_distribution(value):
        return value


#: metrics every Distiller reports, besides Keras's `loss` and the `GUARD_METRICS`
#: (per-epoch counts of samples with bad labels or teacher logits, which must stay 0).
BASE_METRICS = ("ce_loss", "kd_loss")
#: with `policy_metrics=True`: fraction of samples whose label tops the policy's target
#: (then the policy's own `metric_names`).
TARGET_FIRST = "target_first"
#: with `alpha == 0`: fraction of samples whose label is the teacher's top class.
PSEUDO_LABELS = "pseudo_labels"


#: keys of a batch dict holding precomputed teacher logits (see keras_kdcap.cache).
INPUTS_KEY = "inputs"
TEACHER_LOGITS_KEY = "teacher_logits"


def with_teacher_logits(inputs, logits) -> dict:
    """The batch `{"inputs": inputs, "teacher_logits": logits}` (`split_cached` undoes it).

    Args:
        inputs: the student's inputs.
        logits: the teacher's logits for them.

    Returns:
        The dict the Distiller takes in place of `x` to skip the teacher.
    """
    return {INPUTS_KEY: inputs, TEACHER_LOGITS_KEY: logits}


def split_cached(x):
    """Splits `{"inputs": x, "teacher_logits": f}` batches into `(x, f)`; else `(x, None)`."""
    if isinstance(x, dict) and TEACHER_LOGITS_KEY in x:
        return x[INPUTS_KEY], x[TEACHER_LOGITS_KEY]
    return x, None


class PolicyEpoch(keras.callbacks.Callback):
    """Tells the Distiller's policy each epoch (`policy.on_epoch_begin`), inside `fit`.

    `Distiller.fit` adds it itself: DKD's warm-up and CTKD's curriculum need
    no callback from the user. The assignment happens between epochs,
    outside the compiled step, on every backend.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self.model.policy.on_epoch_begin(int(epoch))


def _with_guard(callbacks):
    """The user's callbacks: `InputGuard` and `PolicyEpoch` first, a readiness check last."""
    extra = [_PolicyReadyAfterRestore()] if _backup_callback(callbacks) is not None else []
    if isinstance(callbacks, keras.callbacks.CallbackList):
        for callback in [InputGuard(), PolicyEpoch(), *extra]:
            callbacks.append(callback)
        return callbacks
    return [InputGuard(), PolicyEpoch(), *(callbacks or []), *extra]


def _backup_callback(callbacks):
    """The `keras.callbacks.BackupAndRestore` among `callbacks`, or None."""
    if isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks = callbacks.callbacks
    for callback in callbacks or []:
        if isinstance(callback, keras.callbacks.BackupAndRestore):
            return callback
    return None


class _PolicyReadyAfterRestore(keras.callbacks.Callback):
    """Checks the policy once the `BackupAndRestore` before it has restored its state.

    A restarted job's policy (FGCR's class relations) comes back from the
    backup, so `fit` checks readiness after the restore instead of before.
    """

    def on_train_begin(self, logs=None):
        self.model.policy.check_ready()


def _input_shape(model):
    """`model.input_shape` when it has one, else None."""
    try:
        return model.input_shape
    except (AttributeError, ValueError, RuntimeError):
        return None


def _validation_labelled(data):
    """`(labelled, data)` for `validation_data`; `labelled` is None when unknown."""
    if isinstance(data, tuple):
        return len(data) >= 2 and data[1] is not None, data
    labelled = has_labels(data)
    if labelled is None:
        first, data = peek(data)
        labelled = None if first is None else first[1] is not None
    return labelled, data


@contextlib.contextmanager
def _inference_scope(distiller):
    """No gradient tape on torch; the model's distribution strategy on TensorFlow."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        with torch.no_grad():
            yield
    elif backend == "tensorflow":
        with distiller.distribute_strategy.scope():
            yield
    else:
        yield


def _per_sample(value, like):
    """`value` as float32 `[B]` like `like` (a policy statistic may be a scalar)."""
    value = ops.cast(value, "float32")
    return value if len(value.shape) else ops.broadcast_to(value, ops.shape(like))


def _output_rank(model) -> int | None:
    """The rank of `model.output_shape` (2 for `[B, C]`, 3 for tokens), None when unknown."""
    try:
        shape = model.output_shape
    except (AttributeError, ValueError, RuntimeError):
        return None
    return len(shape) if isinstance(shape, tuple) else None


def _output_classes(model) -> int | None:
    try:
        shape = model.output_shape
    except (AttributeError, ValueError, RuntimeError):
        return None
    if isinstance(shape, tuple) and shape and isinstance(shape[-1], int):
        return shape[-1]
    return None


@keras.saving.register_keras_serializable(package="keras_kdcap")
class Distiller(keras.Model):
    """A student trained with `alpha * CE + beta * KD` from a frozen teacher.

    The KD term comes from a pluggable temperature policy (METHODS.md). The
    teacher is frozen: not trainable, called with `training=False`, its
    outputs behind `stop_gradient`, and its weights are bit-identical after
    `fit`. `call`, `predict` and the compiled metrics are the student's;
    `distiller.student` is the model to export.

    Both models must give one `[B, C]` tensor, or both one `[B, T, C]`
    tensor of token logits (keras_kdcap.sequence, docs/token_level.md): a
    backbone (feature maps), a dict or a tuple of outputs is refused,
    naming the model. Their outputs
    are checked on the first batch of `fit`/`evaluate`: rows that are
    non-negative and sum to 1 (a final softmax) are refused unless declared.

    Args:
        teacher: a trained Keras model giving `[B, C]` logits.
        student: the Keras model to train, giving `[B, C]` logits (a
            softmax student is refused: train it without, add it back for
            export).
        teacher_outputs: "logits" (default) or "probabilities": a teacher
            ending in a softmax; its outputs `p` are converted with `log p`,
            the logits up to a constant per row, so every softmax of them at
            any temperature is exact (ATS and ISATS, whose asymmetric
            temperatures depend on the logits' offset, see log-probabilities,
            all <= 0). A probability of exactly 0 (an underflowed softmax)
            has no finite logit: it is refused on the first batch, and a
            later batch that brings one stops `fit` like NaN logits do.
        name: model name.

    Example:
        >>> distiller = Distiller(teacher, student)  # doctest: +SKIP
        >>> distiller.compile("sgd", policy=ISATS(), metrics=["accuracy"])  # doctest: +SKIP
        >>> distiller.fit(train_ds, epochs=2)  # doctest: +SKIP
    """

    def __init__(
        self,
        teacher: keras.Model,
        student: keras.Model,
        teacher_outputs: str = "logits",
        name: str = "distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        for arg, model in (("teacher", teacher), ("student", student)):
            if not isinstance(model, keras.layers.Layer):
                raise TypeError(f"`{arg}` must be a Keras model; got {type(model).__name__}.")
        if teacher is student:
            raise ValueError("`teacher` and `student` must be different models.")
        self.teacher_outputs = kd_outputs.check_output_kind("teacher_outputs", teacher_outputs)
        kd_outputs.check_model("teacher", teacher)
        kd_outputs.check_model("student", student)
        self._outputs_checked = False
        teacher_classes, student_classes = _output_classes(teacher), _output_classes(student)
        if None not in (teacher_classes, student_classes) and teacher_classes != student_classes:
            raise ValueError(
                f"`teacher` gives {teacher_classes} classes but `student` gives "
                f"{student_classes}: both must predict the same classes."
            )
        teacher.trainable = False
        self.teacher = teacher
        self.student = student
        self.policy = None
        self.alpha = 0.1
        self.beta = 0.9
        self.temperature_scaling = True
        self.policy_metrics = True
        self._statistics: StepStatistics | None = None

    # ------------------------------------------------------------------ set-up
    def compile(
        self,
        optimizer="sgd",
        policy: TemperaturePolicy | None = None,
        alpha: float = 0.1,
        beta: float = 0.9,
        temperature_scaling: bool = True,
        metrics=None,
        policy_metrics: bool = True,
        **kwargs,
    ) -> None:
        """Configures the distillation.

        Args:
            optimizer: a Keras optimizer or its name.
            policy: the temperature policy; `FixedTemperature(4.0)` when None.
            alpha: weight of the student's cross-entropy, >= 0.
            beta: weight of the KD term, >= 0.
            temperature_scaling: multiply the KD term by `s^2` (Hinton); False
                reproduces the ATS code's convention.
            metrics: metrics of the student's predictions, e.g. `["accuracy"]`.
            policy_metrics: report the statistics of the policy's target each
                epoch: `target_first` and the policy's `metric_names` (e.g.
                ISATS's `temperature`). False leaves them out of the step and
                the History; `ce_loss`, `kd_loss` and the guard counts stay.
            **kwargs: passed to `keras.Model.compile` (`jit_compile`,
                `steps_per_execution`, ...). `loss` is not accepted: the
                policy defines it.
        """
        if "loss" in kwargs and kwargs["loss"] is not None:
            raise ValueError(
                "`loss` is not a Distiller argument: the loss is alpha * CE + beta * KD; "
                "choose the KD term with `policy=`."
            )
        kwargs.pop("loss", None)
        policy = FixedTemperature(4.0) if policy is None else policy
        if not isinstance(policy, TemperaturePolicy):
            raise TypeError(
                f"`policy` must be a keras_kdcap TemperaturePolicy (e.g. ISATS()); "
                f"got {type(policy).__name__}."
            )
        self.alpha = check_non_negative("alpha", alpha)
        self.beta = check_non_negative("beta", beta)
        self.temperature_scaling = bool(temperature_scaling)
        self.policy_metrics = bool(policy_metrics)
        self._set_tracked("policy", policy)
        if not policy.built:  # its own `build` (see TemperaturePolicy.__init__) has not run
            raise TypeError(
                f"{type(policy).__name__} defines `build`, which the Distiller never calls (it "
                "calls `compute_target`/`kd_loss`): create the policy's weights in `__init__` or "
                "`prepare`, or build it before compile: `policy.build((None, num_classes))`."
            )
        means = BASE_METRICS + ((PSEUDO_LABELS,) if self.alpha == 0 else ())
        if self.policy_metrics:
            means += (TARGET_FIRST, *policy.metric_names)
        self._set_tracked("_statistics", StepStatistics(means, GUARD_METRICS, name="statistics"))
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def _set_tracked(self, attribute: str, value) -> None:
        """Sets a tracked attribute, also after the model is built (recompile)."""
        old = getattr(self, attribute, None)
        locked = self._tracker.locked
        self._tracker.unlock()
        try:
            for item in old.values() if isinstance(old, dict) else [old]:
                if item is not None:
                    self._tracker.untrack(item)
            setattr(self, attribute, value)
        finally:
            if locked:
                self._tracker.lock()

    def get_compile_config(self) -> dict:
        config = super().get_compile_config()
        if self.compiled and self.policy is not None:
            config.update(
                policy=keras.saving.serialize_keras_object(self.policy),
                alpha=self.alpha,
                beta=self.beta,
                temperature_scaling=self.temperature_scaling,
                policy_metrics=self.policy_metrics,
            )
        return config

    def compile_from_config(self, config: dict) -> None:
        config = dict(config)
        policy = config.pop("policy", None)
        for key in ("loss", "loss_weights"):
            config.pop(key, None)
        config = keras.saving.deserialize_keras_object(config)
        if policy is not None:
            policy = keras.saving.deserialize_keras_object(policy)
        self.compile(policy=policy, **config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher_outputs": self.teacher_outputs,
        }

    @classmethod
    def from_config(cls, config: dict, custom_objects=None) -> Distiller:
        config = dict(config)
        teacher = keras.saving.deserialize_keras_object(
            config.pop("teacher"), custom_objects=custom_objects
        )
        student = keras.saving.deserialize_keras_object(
            config.pop("student"), custom_objects=custom_objects
        )
        return cls(teacher=teacher, student=student, **config)

    # -------------------------------------------------------------- forward
    def call(self, inputs, training=None):
        """The student's logits (of `inputs["inputs"]` for cached-teacher batches)."""
        inputs, _ = split_cached(inputs)
        return self.student(inputs, training=training)

    def build(self, input_shape) -> None:
        input_shape, _ = split_cached(input_shape)
        if not self.student.built:
            self.student.build(input_shape)
        if not self.teacher.built:
            self.teacher.build(input_shape)

    @property
    def metrics(self):
        tracked = list(super().metrics)
        extra = self._statistics
        return tracked + ([extra] if extra is not None and extra not in tracked else [])

    # --------------------------------------------------------------- the loss
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """`alpha * CE(y, student) + beta * KD(policy)`, reduced like Keras.

        Labels are read by `keras_kdcap.labels`: class indices, one-hot or
        soft `[B, C]` rows (a soft cross-entropy), or none when `alpha == 0`
        (the teacher's top class stands in). Samples with invalid labels or
        non-finite teacher logits contribute nothing and are counted in
        `invalid_labels` / `nonfinite_teacher`; `fit` then stops with an
        error naming them. All statistics go to one `StepStatistics` metric:
        one variable update per step.

        Token logits `[B, T, C]` are `B * T` rows of the same computation
        (keras_kdcap.sequence): the mask is `sample_weight` times the
        `padding_mask` of dict inputs, and the terms are averaged over the
        tokens it keeps (`sum(w * loss) / #{w != 0}`, 0 for none).
        """
        if y is None and self.alpha > 0:
            raise ValueError(kd_labels.missing_labels_message(self.alpha))
        if self.policy is None:
            raise ValueError("Call `distiller.compile(...)` before fit/evaluate.")
        student_logits = kd_ops.as_float32(y_pred)
        num_classes = student_logits.shape[-1]
        x, cached_logits = split_cached(x)
        if cached_logits is None:
            cached_logits = self.teacher(x, training=False)
        teacher_logits = ops.stop_gradient(
            kd_outputs.as_logits(cached_logits, self.teacher_outputs)
        )
        if teacher_logits.shape[-1] != num_classes:
            raise ValueError(
                f"`teacher` gives {teacher_logits.shape[-1]} classes but `student` gives "
                f"{num_classes}: both must predict the same classes."
            )
        if num_classes < 2:
            raise ValueError(
                f"The student gives {num_classes} class(es): distillation needs C >= 2 "
                "(a softmax over one class carries no knowledge)."
            )
        token_mask = None
        if len(student_logits.shape) == 3 or len(teacher_logits.shape) == 3:
            # [B, T, C]: every token is a row of the [B, C] path (keras_kdcap.sequence)
            tokens = kd_sequence.flatten_tokens(
                student_logits, teacher_logits, y, sample_weight, kd_sequence.padding_mask(x)
            )
            student_logits, teacher_logits, y = tokens[:3]
            sample_weight, token_mask = tokens.weights, tokens.mask
        finite = ops.isfinite(teacher_logits)
        teacher_ok = ops.all(finite, axis=-1)
        teacher_logits = ops.where(finite, teacher_logits, 0.0)
        if y is None:
            read = kd_labels.teacher_labels(teacher_logits)
        else:
            read = kd_labels.read_labels(y, num_classes)
        labels_ok = read.valid
        valid = ops.cast(ops.logical_and(labels_ok, teacher_ok), "float32")
        labels = read.classes

        weights = valid
        if sample_weight is not None:
            sample_weight = kd_ops.as_float32(sample_weight)
            weights = weights * ops.reshape(sample_weight, (-1,))
        batch_size = ops.cast(ops.shape(student_logits)[0], "float32")
        if token_mask is not None:  # tokens: averaged over those the mask keeps
            batch_size = tokens.count

        ce = kd_labels.cross_entropy(read, student_logits)
        kd, probs, stats = self.policy.kd_loss(
            teacher_logits, student_logits, labels, self.temperature_scaling
        )
        ce_sum = ops.sum(weights * ce)
        kd_sum = ops.sum(weights * kd)
        # divide_no_nan: a replica can get an empty last batch under tf.distribute.
        total = ops.divide_no_nan(self.alpha * ce_sum + self.beta * kd_sum, batch_size)
        regularization = self.student.losses
        if regularization:
            total = total + ops.sum([ops.cast(r, "float32") for r in regularization])

        # The batch's totals in the order of `StepStatistics.names`: the scalars
        # stacked, the per-sample columns stacked and summed once.
        scalars = [batch_size, ce_sum, kd_sum]
        if self.alpha == 0:  # pseudo_labels: every sample's label is the teacher's top class
            scalars.append(batch_size if y is None else ops.zeros_like(batch_size))
        columns = []
        if self.policy_metrics:
            columns.append(kd_ops.label_ranked_first(probs, labels))
            columns += [_per_sample(stats[name], ce) for name in self.policy.metric_names]
        columns += [1.0 - ops.cast(labels_ok, "float32"), 1.0 - ops.cast(teacher_ok, "float32")]
        if token_mask is not None:  # masked tokens (padding, label -100) count nowhere
            columns = [column * token_mask for column in columns]
        column_sums = ops.sum(ops.stack(columns, axis=-1), axis=0)
        self._statistics.update_state(ops.concatenate([ops.stack(scalars), column_sums]))
        return scale_loss_for_distribution(total)

    # ------------------------------------------------------------- training
    def train_step(self, *args):
        """Keras's train step; on torch the teacher runs first (see `_teacher_first`)."""
        if keras.backend.backend() == "torch":
            (data,) = args
            args = (self._teacher_first(data),)
        return super().train_step(*args)

    def _teacher_first(self, data):
        """Torch: the batch with the teacher's logits computed before the student's forward.

        Keras runs the student's forward before `compute_loss`. Eager torch
        would then run the teacher while the student's activations are held
        for backward, measured 18% slower on a CPU than running it first.
        Graph backends (TF, JAX) schedule the two forwards themselves.
        """
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        inputs, cached = split_cached(x)
        if cached is not None:
            return data
        import torch

        with torch.no_grad():
            logits = self.teacher(inputs, training=False)
        return keras.utils.pack_x_y_sample_weight(
            with_teacher_logits(inputs, logits), y, sample_weight
        )

    def fit(self, x=None, y=None, *args, callbacks=None, **kwargs):
        """`keras.Model.fit`, with the input checks and teacher protection.

        Checks in-memory data (labels in range, non-empty) before the first
        step, stops with a clear error if a batch brings bad labels or the
        teacher gives non-finite logits, and guarantees the teacher's
        weights survive any error raised during training.
        """
        self._check_compiled(callbacks)
        x = self._check_inputs(x, y, args, kwargs)
        with TeacherSnapshot(self):
            return super().fit(x, y, *args, callbacks=_with_guard(callbacks), **kwargs)

    def evaluate(self, x=None, y=None, *args, callbacks=None, **kwargs):
        """`keras.Model.evaluate`, with the same input checks as `fit`."""
        if isinstance(callbacks, keras.callbacks.CallbackList):
            # the validation pass inside `fit`: its callbacks hold fit's guard already
            return super().evaluate(x, y, *args, callbacks=callbacks, **kwargs)
        self._check_compiled()
        x = self._check_inputs(x, y, args, kwargs)
        with TeacherSnapshot(self):
            return super().evaluate(x, y, *args, callbacks=_with_guard(callbacks), **kwargs)

    # ------------------------------------------------------- inputs, outputs
    def _check_inputs(self, x, y, args: tuple, kwargs: dict):
        """Labels and the models' outputs, checked before Keras's own set-up.

        Reads the first batch (once per Distiller for the outputs; for the
        labels only where the data's structure does not tell). Returns the
        `x` to pass on: a generator is replaced by one that yields the batch
        read here first. Updates `kwargs["validation_data"]` the same way.
        """
        check_preprocessors(self.teacher, self.student, x, "x")
        val = kwargs.get("validation_data")
        check_preprocessors(self.teacher, self.student, val, "validation_data")
        student = self.student
        check_fit_data(x, y, _output_classes(student), "x", output_rank=_output_rank(student))
        labelled = has_labels(x, y)
        first = None
        if labelled is None or not self._outputs_checked:
            batch_size = kwargs.get("batch_size", args[0] if args else None)
            first, x = peek(x, y, kwargs.get("sample_weight"), batch_size)
            if labelled is None and first is not None:
                labelled = first[1] is not None
        if labelled is False and self.alpha > 0:
            raise ValueError(kd_labels.missing_labels_message(self.alpha))
        if labelled is False and getattr(self, "_compile_metrics", None) is not None:
            warnings.warn(
                "The data has no labels: the compiled `metrics=` (e.g. accuracy) are not "
                "computed on it, only on labelled data such as `validation_data`.",
                stacklevel=3,
            )
        if kwargs.get("validation_data") is not None and self.alpha > 0:
            labelled, kwargs["validation_data"] = _validation_labelled(kwargs["validation_data"])
            if labelled is False:
                raise ValueError(kd_labels.missing_labels_message(self.alpha, "validation_data"))
        if first is not None and not self._outputs_checked:
            self._check_outputs(first[0], first[1])
        return x

    def _check_outputs(self, inputs, labels=None) -> None:
        """Runs both models on one batch (inference mode) and checks their outputs.

        Token logits `[B, T, C]` need labels per token (`sequence.check_labels`).
        """
        inputs, cached = split_cached(inputs)
        with _inference_scope(self):
            teacher = self.teacher(inputs, training=False) if cached is None else cached
            student = self.student(inputs, training=False)
        kd_outputs.check_values("teacher", self.teacher, teacher, self.teacher_outputs)
        kd_outputs.check_values("student", self.student, student)
        kd_sequence.check_logits(student, teacher)
        if len(student.shape) == 3:
            kd_sequence.check_labels(labels, student)
        if teacher.shape[-1] != student.shape[-1]:
            raise ValueError(
                f"`teacher` gives {teacher.shape[-1]} classes but `student` gives "
                f"{student.shape[-1]}: both must predict the same classes."
            )
        self._outputs_checked = True

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Keras's metrics; the compiled ones (`metrics=`) skip batches without labels.

        Unlabelled data (`alpha == 0`) has no label to score the student
        against: `accuracy` and the like are left out of the logs of such
        batches and reported only for labelled (e.g. validation) data.
        """
        if y is not None:
            return super().compute_metrics(x, y, y_pred, sample_weight)
        return self._metrics_result(with_compiled=False)

    def get_metrics_result(self):
        compiled = getattr(self, "_compile_metrics", None)
        return self._metrics_result(with_compiled=compiled is None or compiled.built)

    def _metrics_result(self, with_compiled: bool) -> dict:
        compiled = getattr(self, "_compile_metrics", None)
        results = {}
        for metric in self.metrics:
            if metric is compiled and not with_compiled:
                continue
            result = metric.result()
            if isinstance(result, dict):
                results.update(result)
            else:
                results[metric.name] = result
        return results

    def _check_compiled(self, callbacks=None) -> None:
        if not self.compiled or self.policy is None:
            raise ValueError("Call `distiller.compile(optimizer, policy=...)` before fit.")
        if _backup_callback(callbacks) is None:
            self.policy.check_ready()
            return
        self._build_for_backup()
        if not self.policy.weights:  # nothing the backup could restore: check now
            self.policy.check_ready()
        # else `_PolicyReadyAfterRestore` checks it once the backup is loaded

    def _build_for_backup(self) -> None:
        """Builds the Distiller from its built teacher and student (`BackupAndRestore`).

        Keras's TF trainer builds a model only when tracing its first step, after
        the callback restores the weights; JAX and torch build it before.
        """
        if self.built:
            return
        models = (("teacher", self.teacher), ("student", self.student))
        unbuilt = [arg for arg, model in models if not model.built]
        if unbuilt:
            raise ValueError(
                f"BackupAndRestore restores weights into a built Distiller, but the "
                f"{' and '.join(unbuilt)} {'is' if len(unbuilt) == 1 else 'are'} not built: "
                "call `distiller.build((None, *input_shape))` (or the model on one batch) "
                "before fit."
            )
        self.build(_input_shape(self.student))
