"""`StepStatistics`: a training step's means and counts in one metric variable."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_kdcap")
class StepStatistics(keras.metrics.Metric):
    """Per-sample means and per-epoch counts kept in one vector, updated once a step.

    The vector holds the number of samples seen, then one running total per
    name. `result()` is a dict `{name: value}`: the totals of `means` divided
    by the sample count (0 before any sample), those of `sums` as they are.
    One `assign_add` per step replaces a `Mean` or `Sum` per statistic: on
    eager torch each of those costs several small ops per step, and on JAX's
    `train_on_batch` each of its variables is written back after every call.

    Args:
        means: names of statistics averaged over samples (e.g. `kd_loss`).
        sums: names of statistics summed over samples (e.g. guard counts).
        name: the metric's name.
        dtype: the variable's dtype (the backend's float type when None).

    Example:
        >>> stats = StepStatistics(means=("kd_loss",), sums=("invalid_labels",))
        >>> stats.update_state(stats.totals_of(4.0, [2.0, 1.0]))
        >>> {k: float(v) for k, v in stats.result().items()}
        {'kd_loss': 0.5, 'invalid_labels': 1.0}
    """

    def __init__(
        self,
        means: Sequence[str],
        sums: Sequence[str] = (),
        name: str = "step_statistics",
        dtype=None,
    ):
        super().__init__(name=name, dtype=dtype)
        self.means = tuple(means)
        self.sums = tuple(sums)
        names = self.means + self.sums
        if len(set(names)) != len(names):
            repeated = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"`means` and `sums` name a statistic twice: {repeated}.")
        self.totals = self.add_variable(
            shape=(1 + len(names),), initializer="zeros", name="totals", aggregation="sum"
        )

    @property
    def names(self) -> tuple[str, ...]:
        """The statistics' names, in the order of `totals_of` and `result()`."""
        return self.means + self.sums

    def totals_of(self, count, totals) -> keras.KerasTensor:
        """The vector `update_state` takes: `count`, then `totals` in the order of `names`.

        Args:
            count: the batch's number of samples (a scalar).
            totals: a list of scalars, or one `[len(names)]` vector, each a
                statistic's total over the batch's samples.

        Returns:
            A `[1 + len(names)]` tensor of the metric's dtype.
        """
        count = ops.reshape(ops.cast(count, self.dtype), (1,))
        if isinstance(totals, (list, tuple)):
            totals = ops.stack([ops.cast(t, self.dtype) for t in totals])
        return ops.concatenate([count, ops.cast(totals, self.dtype)])

    def update_state(self, totals) -> None:
        """Adds one batch.

        Args:
            totals: `[1 + len(names)]` values (see `totals_of`).
        """
        self.totals.assign_add(ops.cast(totals, self.dtype))

    def result(self) -> dict:
        totals = ops.convert_to_tensor(self.totals)
        split = 1 + len(self.means)
        values = ops.concatenate([ops.divide_no_nan(totals[1:split], totals[0]), totals[split:]])
        return dict(zip(self.names, ops.unstack(values, len(self.names)), strict=True))

    def get_config(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "means": self.means, "sums": self.sums}
