"""examples/distill_causal_lm.py: its corpus split, byte windows, masked CE and smoke path."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras_hub")

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "distill_causal_lm.py"
STDLIB = Path(os.path.dirname(os.__file__))

#: the smoke preset, tinier: one short epoch of each model (seconds of training).
TINY = [
    "--preset=smoke",
    "--seq_len=16",
    "--train_sequences=64",
    "--eval_sequences=24",
    "--batch_size=16",
    "--teacher_epochs=1",
    "--student_epochs=1",
    "--teacher_layers=1",
    "--teacher_hidden=16",
    "--teacher_heads=2",
    "--student_hidden=8",
    "--student_heads=2",
    "--analysis_tokens=200",
    "--verbose=0",
]


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("distill_causal_lm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _reference_cross_entropy(logits, labels, mask):
    """Float64 NumPy: sum of -log softmax(logits)[label] over unmasked tokens, and their count."""
    keep = mask != 0
    rows = logits[keep].astype(np.float64)
    top = rows.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(rows - top).sum(axis=-1)) + top[:, 0]
    picked = rows[np.arange(len(rows)), labels[keep]]
    return float(np.sum(log_z - picked)), int(keep.sum())


def test_masked_cross_entropy_matches_float64_reference_and_skips_masked_tokens(example):
    rng = np.random.default_rng(0)
    logits = (4.0 * rng.normal(size=(3, 6, 11))).astype(np.float32)
    labels = rng.integers(0, 11, size=(3, 6))
    mask = (rng.random((3, 6)) > 0.35).astype(np.float32)
    mask[0, -2:] = 0.0  # padding at the end of a sequence
    assert 0 < mask.sum() < mask.size
    reference = _reference_cross_entropy(logits, labels, mask)
    # whatever a masked token holds counts for nothing: an "ignore" label, NaN logits
    labels[mask == 0] = -100
    logits[mask == 0] = np.nan
    total, count = example.masked_cross_entropy(logits, labels, mask)
    assert count == reference[1] == int(mask.sum())
    np.testing.assert_allclose(total, reference[0], rtol=1e-5)
    # dropping the masked tokens changes nothing; unmasking them changes the sum
    unmasked = example.masked_cross_entropy(
        np.nan_to_num(logits), np.clip(labels, 0, 10), np.ones_like(mask)
    )
    assert unmasked[1] == mask.size and unmasked[0] > total


def test_masked_cross_entropy_refuses_an_unmasked_invalid_label(example):
    logits = np.zeros((1, 3, 4), np.float32)
    with pytest.raises(ValueError, match=r"outside \[0, 4\)"):
        example.masked_cross_entropy(logits, np.array([[0, 4, 1]]), np.ones((1, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        example.masked_cross_entropy(
            np.full((1, 3, 4), np.nan, np.float32), np.zeros((1, 3), int), np.ones((1, 3))
        )


def test_byte_windows_follow_the_causal_lm_layout(example):
    windows = example.byte_windows(b"abcdefg", 4)  # 7 bytes: 6 next-byte predictions
    assert windows.token_ids.tolist() == [list(b"abcd"), [*b"efg", 0]]
    assert windows.labels.tolist() == [list(b"bcde"), [*b"fg", 0, 0]]
    assert windows.padding_mask.tolist() == [[True] * 4, [True, True, True, False]]
    assert windows.sample_weight.tolist() == [[1.0] * 4, [1.0, 1.0, 0.0, 0.0]]
    full = example.byte_windows(b"abcde", 4)
    assert full.labels.tolist() == [list(b"bcde")] and full.sample_weight.all()
    for data in (b"", b"a"):
        assert example.byte_windows(data, 4).labels.shape == (0, 4)


def test_load_windows_keeps_evenly_spaced_windows_of_the_files_in_order(example, tmp_path):
    texts = {"a.py": b"0123456789", "b.py": b"x", "c.py": b"abcdefghij"}
    for name, data in texts.items():
        (tmp_path / name).write_bytes(data)
    files = [Path(name) for name in texts]
    every = example.load_windows(tmp_path, files, 3, 0)  # 3 + 0 + 3 windows
    assert every.token_ids.tolist()[3] == list(b"abc")
    assert every.sample_weight.sum() == 9 + 9
    kept = example.load_windows(tmp_path, files, 3, 2)
    assert kept.token_ids.tolist() == [every.token_ids.tolist()[0], every.token_ids.tolist()[3]]


def test_corpus_split_is_deterministic_disjoint_and_by_path(example):
    files = example.corpus_files(STDLIB)
    assert files == sorted(files) and "os.py" in {path.as_posix() for path in files}
    assert not any({"site-packages", "dist-packages"} & set(path.parts) for path in files)
    train, heldout = example.split_files(files, 10)
    assert (train, heldout) == example.split_files(example.corpus_files(STDLIB), 10)
    assert not set(train) & set(heldout) and set(train) | set(heldout) == set(files)
    assert 0.05 < len(heldout) / len(files) < 0.15
    # a file's side depends on its own path only, not on the other files
    _, heldout_half = example.split_files(files[::2], 10)
    assert heldout_half == [path for path in files[::2] if path in set(heldout)]


def test_bad_corpus_and_flags_are_refused_naming_the_flag(example, tmp_path):
    (tmp_path / "notes.txt").write_text("not python")
    with pytest.raises(SystemExit, match="--corpus_dir=.*no .py files"):
        example.main(["x", f"--corpus_dir={tmp_path}", f"--output_dir={tmp_path}"])
    with pytest.raises(SystemExit, match="--corpus_dir=.*no such folder"):
        example.main(["x", f"--corpus_dir={tmp_path / 'missing'}"])
    with pytest.raises(SystemExit, match="--teacher_heads=3 does not divide"):
        example.settings(["x", "--teacher_heads=3"])
    (tmp_path / "only.py").write_text("x = 1\n")
    with pytest.raises(SystemExit, match="--heldout_percent=10 leaves"):
        example.main(["x", f"--corpus_dir={tmp_path}", f"--output_dir={tmp_path}"])


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


@pytest.mark.slow
def test_smoke_path_writes_finite_held_out_cross_entropy_per_model(example, tmp_path, capsys):
    output = tmp_path / "run"
    assert example.main(["distill_causal_lm.py", *TINY, f"--output_dir={output}"]) == 0
    text = (output / "results.json").read_text()
    results = json.loads(text)
    assert str(tmp_path) not in text and str(STDLIB) not in text
    assert not any(os.path.isabs(s) for s in _strings(results))
    models = results["models"]
    assert list(models) == ["teacher", "ce", "kd", "isats"]
    heldout_tokens = results["corpus"]["tokens"]["heldout"]
    assert 0 < heldout_tokens <= 24 * 16
    for name, row in models.items():
        assert math.isfinite(row["cross_entropy"]) and row["cross_entropy"] > 0, name
        assert row["perplexity"] == pytest.approx(math.exp(row["cross_entropy"]))
        assert row["tokens"] == heldout_tokens  # every valid held-out token, padding excluded
        assert 0.0 <= row["top1"] <= 1.0 and row["non_target_variance_t4"] >= 0.0
        assert row["cross_entropy"] < 2 * math.log(256), name  # not diverged
    assert models["ce"]["params"] < models["teacher"]["params"]
    assert models["ce"]["params"] == models["kd"]["params"] == models["isats"]["params"]
    tau = results["teacher_tau_star"]
    correct = round((1.0 - tau["misclassified"]) * results["analysis_tokens"])
    assert sum(tau["histogram"]["correct_tokens"]) == correct
    assert results["analysis_tokens"] == min(200, heldout_tokens)
    assert results["corpus"]["files"]["heldout"] > 0 and results["wall_time_s"] > 0
    out = capsys.readouterr().out
    assert "| isats |" in out and "teacher tau*" in out
