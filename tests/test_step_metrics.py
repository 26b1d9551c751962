"""One statistics metric per Distiller: its values against NumPy, its size, `policy_metrics`."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import reference as ref
from helpers import CLASSES, assert_close, mlp, to_numpy

from keras_kdcap import ISATS, Distiller, FixedTemperature
from keras_kdcap.step_metrics import StepStatistics

GUARDS = {"invalid_labels", "nonfinite_teacher"}


def test_step_statistics_match_numpy_over_uneven_batches(rng):
    stats = StepStatistics(means=("a", "b"), sums=("bad",))
    columns = [rng.normal(size=(n, 3)) for n in (7, 7, 3)]
    for batch in columns:
        stats.update_state(stats.totals_of(len(batch), list(batch.sum(axis=0))))
    everything = np.concatenate(columns)
    result = {k: float(to_numpy(v)) for k, v in stats.result().items()}
    assert list(result) == ["a", "b", "bad"]
    assert_close("StepStatistics.means", [result["a"], result["b"]], everything[:, :2].mean(0))
    assert_close("StepStatistics.sums", result["bad"], everything[:, 2].sum())
    stats.reset_state()
    assert all(float(to_numpy(v)) == 0.0 for v in stats.result().values())  # no 0/0
    with pytest.raises(ValueError, match="twice"):
        StepStatistics(means=("a",), sums=("a",))


@pytest.mark.parametrize("policy_metrics", [True, False])
def test_a_compiled_distiller_updates_one_statistics_variable(teacher, data, policy_metrics):
    x, y = data
    distiller = Distiller(teacher, mlp(8, seed=2))
    distiller.compile(
        "sgd", policy=ISATS(num_candidates=8), metrics=["accuracy"], policy_metrics=policy_metrics
    )
    history = distiller.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    # Keras's loss tracker, the compiled metrics, and one vector for everything of ours
    # (before: a Mean or Sum per statistic, with ISATS 8 trackers and 14 variables).
    assert [m.name for m in distiller.metrics] == ["loss", "compile_metrics", "statistics"]
    assert len(distiller.metrics_variables) == 2 + 2 + 1  # loss, accuracy, statistics
    statistics = distiller.metrics[-1]
    policy_names = ("target_first", "temperature", "fallback_rate", "target_cap_rate")
    expected = ("ce_loss", "kd_loss") + (policy_names if policy_metrics else ())
    assert statistics.names == (*expected, "invalid_labels", "nonfinite_teacher")
    assert tuple(statistics.totals.shape) == (1 + len(statistics.names),)
    assert float(to_numpy(statistics.totals)[0]) == len(y)  # samples of the epoch
    assert set(history) == {"loss", "accuracy", *expected, *GUARDS}


def test_history_keys_of_a_plain_kd_distiller(teacher, data):
    x, y = data
    distiller = Distiller(teacher, mlp(8, seed=2))
    distiller.compile("sgd")
    history = distiller.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert set(history) == {"loss", "ce_loss", "kd_loss", "target_first", *GUARDS}
    assert len(distiller.metrics_variables) == 2 + 1


def test_statistics_are_per_sample_means_over_uneven_batches(teacher, data):
    # batches of 24, 24 and 16: every sample counts once, whatever its batch
    x, y = data
    student = mlp(8, seed=2)
    distiller = Distiller(teacher, student)
    distiller.compile("sgd", policy=ISATS(num_candidates=16), alpha=0.3, beta=0.7)
    result = distiller.evaluate(x, y, batch_size=24, verbose=0, return_dict=True)
    f = to_numpy(teacher(x, training=False))
    g = to_numpy(student(x, training=False))
    t, tau2, _, fell, capped = ref.isats_target(f, y, 0.5, 20.0, 16, 2.0, 4.0, True)
    assert_close("StepStatistics.ce_loss", result["ce_loss"], np.mean(ref.cross_entropy(g, y)))
    assert_close("StepStatistics.kd_loss", result["kd_loss"], np.mean(ref.kl_kd(t, g, tau2)))
    assert_close("StepStatistics.temperature", result["temperature"], np.mean(tau2), rtol=1e-4)
    assert result["fallback_rate"] == pytest.approx(np.mean(fell), abs=1e-6)
    assert result["target_cap_rate"] == pytest.approx(np.mean(capped), abs=1e-6)
    assert result["target_first"] == pytest.approx(np.mean(np.argmax(t, 1) == y), abs=1e-6)
    assert result["invalid_labels"] == 0.0 and result["nonfinite_teacher"] == 0.0


def test_policy_metrics_off_changes_no_loss_and_survives_saving(teacher, data, tmp_path):
    x, y = data
    results = []
    for policy_metrics in (True, False):
        distiller = Distiller(teacher, mlp(8, seed=2))
        distiller.compile("sgd", policy=ISATS(num_candidates=8), policy_metrics=policy_metrics)
        results.append(distiller.evaluate(x, y, batch_size=16, verbose=0, return_dict=True))
    for key in ("loss", "ce_loss", "kd_loss"):
        assert results[1][key] == pytest.approx(results[0][key], rel=1e-6)
    assert "temperature" not in results[1] and "target_first" not in results[1]
    path = tmp_path / "distiller.keras"
    distiller.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.policy_metrics is False
    assert "temperature" not in loaded.evaluate(x, y, verbose=0, return_dict=True)


class _Batches(keras.utils.PyDataset):
    """Two batches; the second one's labels are out of range (unseen by the pre-checks)."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def __len__(self):
        return 2

    def __getitem__(self, i):
        labels = self.y[:16] if i == 0 else np.full(16, CLASSES + 3, np.int32)
        return self.x[16 * i : 16 * (i + 1)], labels


def test_guard_stops_fit_without_policy_metrics(teacher, data):
    x, y = data
    distiller = Distiller(teacher, mlp(8, seed=2))
    distiller.compile("sgd", policy=FixedTemperature(4.0), policy_metrics=False)
    with pytest.raises(ValueError, match=r"16 sample\(s\) have invalid labels"):
        distiller.fit(_Batches(x, y), epochs=1, verbose=0)
    broken = mlp(8, seed=4)
    broken.layers[-1].bias.assign(np.array([0.0, np.inf, 0.0, 0.0, 0.0], np.float32))
    distiller = Distiller(broken, mlp(8, seed=2))
    distiller.compile("sgd", policy_metrics=False)
    with pytest.raises(ValueError, match=r"NaN or inf logits for 16 sample"):
        distiller.fit(x, y, batch_size=16, verbose=0)
