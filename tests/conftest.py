"""Shared fixtures: the backend under test, seeded data, a small teacher and the CIFAR-100 copy."""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import classification_data, mlp


def cifar100_dir() -> Path:
    """The offline CIFAR-100 copy: $KDCAP_CIFAR100_DIR or ../shared beside the checkout."""
    env = os.environ.get("KDCAP_CIFAR100_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar100"


@pytest.fixture
def cifar100_path() -> Path:
    path = cifar100_dir()
    if not (path / "train.npz").exists():
        pytest.skip(f"offline CIFAR-100 not found at {path} (set KDCAP_CIFAR100_DIR)")
    return path


#: the backend that runs the tests marked `one_backend` (script orchestration: flags,
#: files, resume). Set KDCAP_ONE_BACKEND=all to run them on every backend.
ONE_BACKEND = os.environ.get("KDCAP_ONE_BACKEND", "torch")


def pytest_collection_modifyitems(config, items):
    if ONE_BACKEND in ("all", keras.backend.backend()):
        return
    skip = pytest.mark.skip(reason=f"one_backend: runs on {ONE_BACKEND} only")
    for item in items:
        if item.get_closest_marker("one_backend"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    yield


def pytest_report_header(config):
    return f"keras backend: {keras.backend.backend()}, keras {keras.__version__}"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def data(rng) -> tuple[np.ndarray, np.ndarray]:
    """64 rows of `helpers.classification_data`; a module may define its own `data`."""
    return classification_data(rng, 64)


@pytest.fixture
def teacher() -> keras.Model:
    """An untrained `helpers.mlp(16, seed=1)`; a module may define its own `teacher`."""
    return mlp(16, seed=1)


def pytest_terminal_summary(terminalreporter):
    from helpers import MAX_RELATIVE_ERROR

    if not MAX_RELATIVE_ERROR:
        return
    terminalreporter.section(f"max relative error vs float64 reference ({keras.backend.backend()})")
    for name, value in sorted(MAX_RELATIVE_ERROR.items()):
        terminalreporter.write_line(f"{name:<40s} {value:.3e}")
