"""FGCR: fusing global class relations into the per-sample teacher target."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_kdcap import labels as kd_labels
from keras_kdcap import ops as kd_ops
from keras_kdcap import outputs as kd_outputs
from keras_kdcap.batches import iterate_batches
from keras_kdcap.policies.base import TemperaturePolicy
from keras_kdcap.validation import check_fraction, check_int_at_least, check_positive


def _row_stochastic(relations) -> bool:
    """Whether `relations` holds finite, non-negative rows summing to 1.

    True inside a traced function, where the value cannot be read (the
    eager check before `fit` has run by then).
    """
    try:
        values = np.asarray(ops.convert_to_numpy(relations), dtype="float64")
    except Exception:  # noqa: BLE001 - a symbolic value: nothing to check here
        return True
    return bool(
        np.all(np.isfinite(values))
        and np.all(values >= 0)
        and np.allclose(values.sum(axis=1), 1.0, atol=1e-4)
    )


#: where `FGCR.prepare` takes the class relations from.
RELATION_SOURCES = ("auto", "data", "classifier")


@keras.saving.register_keras_serializable(package="keras_kdcap")
class FGCR(TemperaturePolicy):
    """`t(x) = (1 - w) softmax(f(x) / T) + w R_y`, student at `T`.

    `R` is a `[C, C]` row-stochastic matrix of class relations, set before
    distillation by `adapt(teacher, dataset)` (each class's mean teacher
    probability vector at `T`) or by `set_classifier_relations(kernel)`
    (softmax of cosine similarities between classifier weight vectors; no
    data pass). The exact form in the paper could not be read: this is the
    project's definition (docs/policies/fgcr.md).

    The target class is the label, the arg-max of a soft label row (MixUp,
    CutMix), or without labels (`alpha=0`) the teacher's top class.

    Args:
        weight: `w` in [0, 1].
        temperature: `T`, > 0, for the per-sample part, the class means and
            the student.
        num_classes: C; creates the relations variable now (needed to load
            a saved Distiller). Inferred by `adapt`/`set_relations` if None.
        relation_source: how `prepare(teacher, data)` sets `R`: "data"
            (`adapt` on `data`), "classifier" (`set_classifier_relations`
            from the teacher's Dense layer named "classifier") or "auto"
            (data when given, else the classifier).
        relation_temperature: the softmax temperature of classifier
            relations, > 0.
        name: layer name.
    """

    registry_name = "fgcr"

    metric_names = ()

    def __init__(
        self,
        weight: float = 0.5,
        temperature: float = 4.0,
        num_classes: int | None = None,
        relation_source: str = "auto",
        relation_temperature: float = 0.25,
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if relation_source not in RELATION_SOURCES:
            raise ValueError(
                f"`relation_source` must be one of {RELATION_SOURCES}; got {relation_source!r}."
            )
        self.relation_source = relation_source
        self.relation_temperature = check_positive("relation_temperature", relation_temperature)
        self.weight = check_fraction("weight", weight)
        self.temperature = check_positive("temperature", temperature)
        self.num_classes = None
        self.relations = None
        if num_classes is not None:
            self._create_relations(check_int_at_least("num_classes", num_classes, 2))

    def _create_relations(self, num_classes: int) -> None:
        if self.num_classes is not None:
            if num_classes != self.num_classes:
                raise ValueError(
                    f"FGCR was built for num_classes={self.num_classes}; got relations "
                    f"for {num_classes} classes."
                )
            return
        self.num_classes = num_classes
        locked = self._tracker.locked
        self._tracker.unlock()
        try:
            self.relations = self.add_weight(
                name="relations",
                shape=(num_classes, num_classes),
                initializer="zeros",
                trainable=False,
                dtype="float32",
            )
        finally:
            if locked:
                self._tracker.lock()

    def set_relations(self, relations) -> None:
        """Sets `R` directly.

        Args:
            relations: `[C, C]` array, non-negative rows summing to 1.
        """
        relations = np.asarray(keras.ops.convert_to_numpy(relations), dtype="float64")
        if relations.ndim != 2 or relations.shape[0] != relations.shape[1]:
            raise ValueError(f"`relations` must be a square [C, C] matrix; got {relations.shape}.")
        if not np.all(np.isfinite(relations)) or np.any(relations < 0):
            raise ValueError("`relations` must be finite and non-negative.")
        if not np.allclose(relations.sum(axis=1), 1.0, atol=1e-4):
            raise ValueError("Each row of `relations` must sum to 1 (a probability vector).")
        self._create_relations(relations.shape[0])
        self.relations.assign(relations.astype("float32"))

    def adapt(
        self,
        teacher: keras.Model,
        dataset,
        steps: int | None = None,
        batch_size: int | None = None,
        teacher_outputs: str = "logits",
    ) -> None:
        """Sets `R_y` to the mean of `softmax(f(x) / T)` over class y's samples.

        A sample's class is its label, or the arg-max of a soft label row
        (MixUp/CutMix); in batches without labels, the teacher's top class
        (the Distiller's rule for unlabelled data).

        Args:
            teacher: the teacher model (called with `training=False`).
            dataset: what `fit` accepts: a tuple `(x, y)` of arrays, a
                `tf.data.Dataset`, a `keras.utils.PyDataset`, or any
                iterable of `(x, y)` batches.
            steps: number of batches to use; all when None.
            batch_size: batch size for arrays (32 when None).
            teacher_outputs: "logits" or "probabilities", as in `Distiller`.
        """
        kd_outputs.check_output_kind("teacher_outputs", teacher_outputs)
        sums = counts = None
        for x, y, _ in iterate_batches(dataset, batch_size=batch_size, steps=steps):
            outputs = teacher(x, training=False)
            if sums is None:
                kd_outputs.check_values("teacher", teacher, outputs, teacher_outputs)
            logits = kd_outputs.as_logits(outputs, teacher_outputs)
            num_classes = logits.shape[-1]
            if y is None:
                labels = kd_labels.teacher_labels(logits)
            else:
                labels = kd_labels.read_labels(y, num_classes)
            if not np.all(ops.convert_to_numpy(labels.valid)):
                raise ValueError(
                    f"`dataset` has invalid labels for FGCR.adapt: labels outside [0, "
                    f"{num_classes}), or label rows that are not probability vectors."
                )
            probs = ops.convert_to_numpy(kd_ops.tempered_softmax(logits, self.temperature))
            onehot = np.eye(num_classes)[ops.convert_to_numpy(labels.classes)]
            if sums is None:
                sums = np.zeros((num_classes, num_classes))
                counts = np.zeros(num_classes)
            sums += onehot.T @ probs.astype("float64")
            counts += onehot.sum(axis=0)
        if sums is None:
            raise ValueError("`dataset` yielded no batches: FGCR.adapt needs data.")
        missing = np.flatnonzero(counts == 0)
        if missing.size:
            raise ValueError(
                f"`dataset` has no samples of classes {missing[:10].tolist()}"
                f"{'...' if missing.size > 10 else ''}: FGCR.adapt needs every class. "
                "Use more data or `set_classifier_relations`."
            )
        self.set_relations(sums / counts[:, None])

    def prepare(self, teacher: keras.Model, data=None) -> None:
        """Sets `R` for `teacher` as `relation_source` says.

        Args:
            teacher: the teacher.
            data: `(x, y)` batches of un-augmented training data (for
                "data"; "auto" uses the classifier when None).
        """
        source = self.relation_source
        if source == "auto":
            source = "classifier" if data is None else "data"
        if source == "data":
            if data is None:
                raise ValueError(
                    "FGCR(relation_source='data').prepare needs `data`: pass labelled "
                    "training batches, or use relation_source='classifier'."
                )
            self.adapt(teacher, data)
            return
        try:
            kernel = getattr(teacher.get_layer("classifier"), "kernel", None)
        except ValueError:
            kernel = None
        if kernel is None:
            raise ValueError(
                f"FGCR classifier relations need a Dense layer named 'classifier' in the "
                f"teacher ({teacher.name} has none; every zoo model has one): pass `data` "
                "with relation_source='data'."
            )
        self.set_classifier_relations(kernel, self.relation_temperature)

    def set_classifier_relations(self, kernel, relation_temperature: float = 0.25) -> None:
        """Sets `R = softmax(cos(w_i, w_j) / relation_temperature)` row-wise.

        Args:
            kernel: the teacher classifier's `[D, C]` kernel (Keras Dense
                layout); column c is class c's weight vector.
            relation_temperature: temperature of the row softmax, > 0.
        """
        relation_temperature = check_positive("relation_temperature", relation_temperature)
        kernel = np.asarray(ops.convert_to_numpy(kernel), dtype="float64")
        if kernel.ndim != 2:
            raise ValueError(f"`kernel` must be a [D, C] matrix; got shape {kernel.shape}.")
        unit = kernel / np.maximum(np.linalg.norm(kernel, axis=0, keepdims=True), 1e-12)
        logits = unit.T @ unit / relation_temperature
        logits -= logits.max(axis=1, keepdims=True)
        relations = np.exp(logits)
        self.set_relations(relations / relations.sum(axis=1, keepdims=True))

    def check_ready(self) -> None:
        """Raises unless `relations` holds a row-stochastic matrix.

        Readiness is read from the variable itself, so relations restored from
        a weights file or a `BackupAndRestore` backup count as set.
        """
        if self.relations is not None and _row_stochastic(self.relations):
            return
        hint = ""
        if self.relations is None:
            hint = (
                " (or pass `num_classes=` to FGCR so that a saved model or a "
                "BackupAndRestore backup can restore them)"
            )
        raise ValueError(
            "FGCR has no class relations yet: call `policy.adapt(teacher, dataset)` or "
            "`policy.set_classifier_relations(teacher_classifier_kernel)` before "
            f"distilling{hint}."
        )

    def compute_target(self, teacher_logits, labels):
        if teacher_logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"FGCR relations are for {self.num_classes} classes, the teacher gives "
                f"{teacher_logits.shape[-1]}."
            )
        per_sample = kd_ops.tempered_softmax(teacher_logits, self.temperature)
        global_relations = ops.take(ops.convert_to_tensor(self.relations), labels, axis=0)
        probs = (1.0 - self.weight) * per_sample + self.weight * global_relations
        student_temperature = ops.full((ops.shape(teacher_logits)[0],), self.temperature)
        return probs, student_temperature, {}
