"""files.jsonable and files.write_json: strict JSON, relative paths, atomic."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from keras_kdcap import files


def test_jsonable_converts_numpy_paths_and_non_finite_numbers():
    value = {
        1: np.float32(0.5),
        "a": (np.arange(3), [np.int64(2), math.nan]),
        "p": Path("runs") / "x",
        "inf": np.float64("inf"),
        "ok": [True, None, "s"],
    }
    assert files.jsonable(value) == {
        "1": 0.5,
        "a": [[0, 1, 2], [2, None]],
        "p": "runs/x",
        "inf": None,
        "ok": [True, None, "s"],
    }


def test_write_json_is_strict_and_relative(tmp_path):
    tmp_path = tmp_path.resolve()
    root = tmp_path / "repo"
    payload = {
        "folder": str(root / "runs" / "a"),
        "command": f"run --data_dir={tmp_path / 'shared' / 'd'} -v",
        "elsewhere": "/not/near/it",
        "x": np.float32("nan"),
    }
    path = files.write_json(tmp_path / "out" / "r.json", payload, relative_to=root)
    text = path.read_text()
    assert text.endswith("\n") and "NaN" not in text
    assert json.loads(text) == {
        "folder": "runs/a",
        "command": "run --data_dir=../shared/d -v",
        "elsewhere": "/not/near/it",
        "x": None,
    }
    files.write_json(path, {"p": str(root)})  # without relative_to: as given
    assert json.loads(path.read_text()) == {"p": str(root)}
