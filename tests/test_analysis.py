"""Dark-knowledge analysis metrics against float64 NumPy / SciPy references.

The references are independent of the library: sample-by-sample loops with
`np.var`, `scipy.stats.spearmanr` / `kendalltau` (tau-b), Python sorting for
the top-k sets and `arccos` for the angles. Inputs include ties and are given
as backend tensors, so every backend's conversion path is exercised.
"""

from __future__ import annotations

import sys

import keras
import numpy as np
import pytest
from scipy import stats as sps

from keras_kdcap import analysis
from keras_kdcap.analysis import plots

C = 20
N = 96


def _softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _logits(rng, n=N, c=C, scale=3.0):
    return (rng.standard_normal((n, c)) * scale).astype(np.float32)


def _tied_logits(rng, n=N, c=C):
    """Integer logits in a small range: many ties among the non-target classes."""
    return rng.integers(-3, 4, size=(n, c)).astype(np.float32)


def _report(name, error):
    print(f"[{keras.backend.backend()}] {name}: max error {error:.3g}")


# --- distinctness -----------------------------------------------------------------


def _reference_stats(f, y, tau):
    p = _softmax(np.asarray(f, np.float64) / tau)
    v = np.array([np.var(np.delete(p[i], y[i])) for i in range(len(y))])
    return {
        "variance": v.mean(),
        "std": np.sqrt(v).mean(),
        "derived_average": np.mean([(1 - p[i, y[i]]) / (f.shape[1] - 1) for i in range(len(y))]),
        "target_probability": np.mean([p[i, y[i]] for i in range(len(y))]),
        "accuracy": np.mean([np.argmax(f[i]) == y[i] for i in range(len(y))]),
    }


@pytest.mark.parametrize("tau", [0.5, 1.0, 4.0, 10.0])
def test_non_target_stats_matches_reference(rng, tau):
    f = _logits(rng)
    y = rng.integers(0, C, size=N)
    got = analysis.non_target_stats(keras.ops.convert_to_tensor(f), y, tau)
    want = _reference_stats(f, y, tau)
    worst = 0.0
    for key, value in want.items():
        rel = abs(got[key] - value) / max(abs(value), 1e-30)
        worst = max(worst, rel)
        assert got[key] == pytest.approx(value, rel=2e-5, abs=1e-12), key
    _report(f"non_target_stats T={tau} (relative)", worst)
    assert got["temperature"] == tau and got["num_samples"] == N


def test_non_target_stats_one_hot_labels_and_chunks(rng):
    f = _logits(rng)
    y = rng.integers(0, C, size=N)
    one_hot = np.eye(C, dtype=np.float32)[y]
    a = analysis.non_target_stats(f, one_hot, 2.0, batch_size=7)
    b = analysis.non_target_stats(f, y[:, None], 2.0)
    for key in ("variance", "std", "derived_average", "target_probability", "accuracy"):
        assert a[key] == pytest.approx(b[key], rel=1e-6)


def test_derived_average_keeps_precision_for_confident_teachers():
    f = np.zeros((2, C), np.float32)
    f[:, 0] = 40.0  # p_y = 1 - 19 e^-40: 1 - p_y is 0 in float32
    got = analysis.non_target_stats(f, np.zeros(2, int), 1.0)
    want = np.exp(-40.0) / (1 + (C - 1) * np.exp(-40.0))
    assert got["derived_average"] == pytest.approx(want, rel=1e-5)


def test_non_target_profile_orders_temperatures(rng):
    f = _logits(rng)
    y = np.argmax(f, axis=-1)
    rows = analysis.non_target_profile(f, y, (1.0, 4.0))
    assert [r["temperature"] for r in rows] == [1.0, 4.0]


def test_stats_reject_bad_input(rng):
    with pytest.raises(ValueError, match="temperature"):
        analysis.non_target_stats(_logits(rng), np.zeros(N, int), 0.0)
    with pytest.raises(ValueError, match="labels"):
        analysis.non_target_stats(_logits(rng), np.full(N, C), 1.0)
    with pytest.raises(ValueError, match="same length"):
        analysis.non_target_stats(_logits(rng), np.zeros(N - 1, int), 1.0)


def test_tau_star_matches_brute_force(rng):
    f = _logits(rng, n=48)
    y = rng.integers(0, C, size=48)
    y[:24] = np.argmax(f[:24], axis=-1)  # half classified correctly
    got = analysis.tau_star_stats(keras.ops.convert_to_tensor(f), y, 0.5, 20.0, 16, batch_size=10)
    grid = np.exp(np.linspace(np.log(0.5), np.log(20.0), 16))
    values = np.array(
        [[np.var(np.delete(_softmax(f[i] / t), y[i])) for t in grid] for i in range(48)]
    )
    chosen = values[np.arange(48), np.searchsorted(grid, got["tau_star"] * (1 - 1e-5))]
    gap = np.max((values.max(axis=1) - chosen) / values.max(axis=1))
    _report("tau* variance gap to brute force (relative)", gap)
    assert gap < 1e-4
    assert got["mean"] == pytest.approx(got["tau_star"].mean())
    assert got["misclassified"] == pytest.approx(np.mean(np.argmax(f, -1) != y))
    assert 0.0 <= got["at_min"] <= 1.0


# --- affinity ---------------------------------------------------------------------


def _reference_affinity(fa, fb, y, ks):
    rho, tau, overlaps = [], [], {k: [] for k in ks}
    for i in range(len(y)):
        a = np.delete(np.asarray(fa[i], np.float64), y[i])
        b = np.delete(np.asarray(fb[i], np.float64), y[i])
        rho.append(sps.spearmanr(a, b).statistic)
        tau.append(sps.kendalltau(a, b, variant="b").statistic)
        for k in ks:
            top_a = set(sorted(range(len(a)), key=lambda j, a=a: (-a[j], j))[:k])
            top_b = set(sorted(range(len(b)), key=lambda j, b=b: (-b[j], j))[:k])
            overlaps[k].append(len(top_a & top_b) / k)
    return np.array(rho), np.array(tau), {k: np.array(v) for k, v in overlaps.items()}


@pytest.mark.parametrize("tied", [False, True])
def test_rank_agreement_matches_scipy(rng, tied):
    make = _tied_logits if tied else _logits
    fa = make(rng)
    fb = fa + 0.7 * make(rng)  # correlated, not identical
    y = rng.integers(0, C, size=N)
    got = analysis.rank_agreement(
        keras.ops.convert_to_tensor(fa),
        keras.ops.convert_to_tensor(fb),
        y,
        k=(5, 10),
        chunk_size=13,
    )
    rho, tau, overlaps = _reference_affinity(fa, fb, y, (5, 10))
    assert not np.isnan(rho).any()
    assert got["spearman"] == pytest.approx(rho.mean(), abs=1e-12)
    assert got["kendall"] == pytest.approx(tau.mean(), abs=1e-12)
    assert got["overlap@5"] == pytest.approx(overlaps[5].mean(), abs=1e-12)
    assert got["overlap@10"] == pytest.approx(overlaps[10].mean(), abs=1e-12)
    assert got["num_undefined"] == 0
    err = max(abs(got["spearman"] - rho.mean()), abs(got["kendall"] - tau.mean()))
    _report(f"rank_agreement means (ties={tied})", err)


def test_per_sample_correlations_match_scipy(rng):
    a = _tied_logits(rng, n=40, c=12).astype(np.float64)
    b = _tied_logits(rng, n=40, c=12).astype(np.float64)
    rho = analysis.spearman_rows(a, b)
    tau = analysis.kendall_rows(a, b, chunk_size=7)
    want_rho = np.array([sps.spearmanr(a[i], b[i]).statistic for i in range(40)])
    want_tau = np.array([sps.kendalltau(a[i], b[i]).statistic for i in range(40)])
    ranks = analysis.average_ranks(a)
    want_ranks = np.stack([sps.rankdata(row) for row in a])
    err = max(np.abs(rho - want_rho).max(), np.abs(tau - want_tau).max())
    _report("per-sample spearman/kendall with ties", err)
    np.testing.assert_allclose(ranks, want_ranks, atol=0)
    np.testing.assert_allclose(rho, want_rho, atol=1e-12)
    np.testing.assert_allclose(tau, want_tau, atol=1e-12)


def test_constant_rows_are_left_out(rng):
    fa = _logits(rng, n=6)
    fb = fa.copy()
    y = np.zeros(6, int)
    fa[0, 1:] = 1.0  # constant non-target logits: correlation undefined
    got = analysis.rank_agreement(fa, fb, y, k=5)
    assert got["num_undefined"] == 1
    assert got["spearman"] == pytest.approx(1.0)
    assert got["kendall"] == pytest.approx(1.0)


def test_rank_agreement_rejects_bad_k(rng):
    with pytest.raises(ValueError, match="k"):
        analysis.rank_agreement(_logits(rng), _logits(rng), np.zeros(N, int), k=C)


def test_pairwise_agreement_is_symmetric(rng):
    base = _logits(rng)
    logits = {"a": base, "b": base + _logits(rng), "c": _logits(rng)}
    y = rng.integers(0, C, size=N)
    table = analysis.pairwise_agreement(logits, y, k=(5,))
    assert table["names"] == ["a", "b", "c"]
    m = table["spearman"]
    np.testing.assert_allclose(m, m.T)
    np.testing.assert_allclose(np.diag(m), 1.0)
    assert m[0, 1] == pytest.approx(analysis.rank_agreement(base, logits["b"], y)["spearman"])
    assert m[0, 1] > m[0, 2]


# --- geometry ---------------------------------------------------------------------


def _angle(u, v):
    cos = np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def test_feature_geometry_matches_reference(rng):
    classes, dim = 5, 8
    y = rng.integers(0, classes, size=60)
    centres = rng.standard_normal((classes, dim)) * 2
    feats = np.abs(centres[y] + rng.standard_normal((60, dim)))
    kernel = rng.standard_normal((dim, classes))
    got = analysis.feature_geometry(
        keras.ops.convert_to_tensor(feats.astype(np.float32)), y, kernel
    )
    feats64 = feats.astype(np.float32).astype(np.float64)
    means = {c: feats64[y == c].mean(axis=0) for c in range(classes)}
    intra = np.mean([_angle(feats64[i], means[y[i]]) for i in range(60)])
    pairs = [(i, j) for i in range(classes) for j in range(i + 1, classes)]
    inter = np.mean([_angle(means[i], means[j]) for i, j in pairs])
    weights = np.mean([_angle(kernel[:, i], kernel[:, j]) for i, j in pairs])
    err = max(
        abs(got["intra_class_angle"] - intra),
        abs(got["inter_class_angle"] - inter),
        abs(got["inter_class_weight_angle"] - weights),
    )
    _report("feature_geometry angles (degrees)", err)
    assert err < 1e-9


def test_geometry_skips_absent_classes_and_zero_features():
    feats = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    got = analysis.feature_geometry(feats, np.array([0, 0, 2]), num_classes=4)
    assert got["inter_class_angle"] == pytest.approx(90.0)
    assert got["intra_class_angle"] == pytest.approx(0.0, abs=1e-12)


# --- collection, tables, plots ----------------------------------------------------


def _tiny_model(num_classes=C):
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    logits = keras.layers.Dense(num_classes, name="classifier")(hidden)
    return keras.Model(inputs, logits)


def test_collect_outputs_matches_predict(rng):
    model = _tiny_model()
    x = rng.standard_normal((37, 6)).astype(np.float32)
    y = rng.integers(0, C, size=37)
    out = analysis.collect_outputs(model, (x, y), batch_size=16)
    np.testing.assert_allclose(out.logits, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    hidden = keras.Model(model.inputs, model.get_layer("hidden").output).predict(x, verbose=0)
    np.testing.assert_allclose(out.features, hidden, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.labels, y)
    batches = [(x[i : i + 10], np.eye(C)[y[i : i + 10]]) for i in range(0, 37, 10)]
    again = analysis.collect_outputs(model, batches)
    np.testing.assert_allclose(again.logits, out.logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(again.labels, y)


def test_compare_teachers_tidy_rows(rng):
    teachers = {"small": _tiny_model(), "large": _tiny_model()}
    x = rng.standard_normal((40, 6)).astype(np.float32)
    y = rng.integers(0, C, size=40)
    rows = analysis.compare_teachers(teachers, (x, y), temperatures=(1, 4))
    assert [(r["teacher"], r["temperature"]) for r in rows] == [
        ("small", 1.0),
        ("small", 4.0),
        ("large", 1.0),
        ("large", 4.0),
    ]
    for row in rows:
        for key in (
            "variance",
            "std",
            "derived_average",
            "accuracy",
            "target_probability",
            "tau_star_mean",
            "intra_class_angle",
            "inter_class_angle",
            "inter_class_weight_angle",
            "params",
        ):
            assert key in row and np.isfinite(row[key]), key
    logits = analysis.collect_outputs(teachers["small"], (x, y)).logits
    want = analysis.non_target_stats(logits, y, 4.0)
    assert rows[1]["variance"] == pytest.approx(want["variance"])


def test_plots_write_png(tmp_path, rng):
    pytest.importorskip("matplotlib")
    rows = [
        {
            "teacher": n,
            "params": p,
            "temperature": t,
            "variance": v / t,
            "std": v,
            "intra_class_angle": 30.0 + p / 1e3,
            "inter_class_angle": 60.0,
            "inter_class_weight_angle": 80.0,
        }
        for n, p, v in (("s", 1000, 1e-3), ("l", 5000, 5e-4))
        for t in (1.0, 4.0)
    ]
    paths = [
        plots.plot_variance_vs_temperature(rows, tmp_path / "vt.png"),
        plots.plot_variance_vs_size(rows, tmp_path / "vs.png"),
        plots.plot_agreement_heatmap(["s", "l"], [[1, 0.9], [0.9, 1]], tmp_path / "h.png"),
        plots.plot_tau_histogram({"s": rng.uniform(0.5, 20, 50)}, tmp_path / "t.png"),
        plots.plot_angles_vs_size(rows, tmp_path / "sub" / "a.png"),
    ]
    for path in paths:
        with open(path, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plots_without_matplotlib_say_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install keras-kdcap\[plot\]"):
        plots.plot_agreement_heatmap(["a"], [[1.0]], tmp_path / "x.png")
