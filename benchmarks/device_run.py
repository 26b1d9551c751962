"""One-command GPU run: pack what the accelerator machine lacks, then run the benchmarks there.

Two modes, chosen by the first argument:

- `pack` (on the developer machine): builds a bundle folder inside the repository
  (`--bundle_dir`, default `.device/bundle`, ignored by git) of at most 64 MiB:
  the wheels of the Python packages the accelerator machine lacks (its package
  list, `DEVICE_PACKAGES`, is the nvidia-h200 image's as the device notes give it;
  `pip download --no-deps --only-binary=:all:` for the device's Python, at the
  versions installed here) and the CIFAR-100 arrays the capacity protocol reads,
  cut to its class subset and images per class (`cifar100/train.npz`, `test.npz`,
  in the format of `keras_kdcap.data.load_cifar100_arrays`). It writes
  `bundle.json` (the sizes, the wheels and the device call) and prints the
  bundle's size and the exact device call: command, `carry` and `timeout_s`.
- `run` (on the accelerator machine): installs the carried wheels into
  `--site_dir`, then runs, each in its own subprocess with its own timeout and
  all within `--budget_s`: `step_time.py` for every `--backends` entry on the
  small and realistic pairs, then `capacity_mismatch.py` sized to fit (its
  estimate printed before it starts). The JSON files go to `benchmarks/results/`
  tagged `_<--tag>` (default `gpu_h200`), with `device_run_<tag>.json`
  recording every sub-run; all of them and the logs are copied to `$OUT` when it
  is set. Paths in the results are relative to the repository.

`--dry_run` runs the same sequence with tiny sizes on the CPU (seconds per
sub-run), writing into a temporary folder instead of `benchmarks/results/`;
the tests use it.

    python benchmarks/device_run.py pack                       # here: the bundle
    PYTHONUNBUFFERED=1 python3 benchmarks/device_run.py run    # there, carry .device/bundle
    python benchmarks/device_run.py pack --dry_run --no_wheels --bundle_dir=/tmp/b
    python benchmarks/device_run.py run --dry_run --bundle_dir=/tmp/b --backends=jax
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
MODES = ("pack", "run")
MIB = 1024 * 1024
#: what one device call carries at most (working tree and carried paths together).
BUNDLE_LIMIT = 64 * MIB
COMMAND_LIMIT = 2000
OUT_FILES_LIMIT = 8
#: the device tool's timeout for one command; the run's own budget stays below it.
DEVICE_TIMEOUT_S = 600
DEVICE_PYTHON = "3.12"
DEVICE_PYTHON_FULL = "3.12.3"
DEVICE_PLATFORMS = tuple(f"manylinux_2_{n}_x86_64" for n in (39, 35, 34, 31, 28, 27, 24, 17)) + (
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
#: the nvidia-h200 image's Python packages (the device notes, KINDS.md, read on 2026-11-17);
#: `pack` reads the notes themselves where this machine has them.
_DEVICE_PACKAGES_TEXT = """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
    botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
    coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
    diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
    frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
    hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib
    jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator
    lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
    mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx
    ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
    nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
    nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
    nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
    opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
    pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf
    psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
    pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
    pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
    scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
    shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
    tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz
    torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers
    treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug
    wheel wrapt xarray xxhash yarl zipp"""
DEVICE_PACKAGES = frozenset(_DEVICE_PACKAGES_TEXT.split())
#: what keras-kdcap and the benchmarks import on the jax and torch backends.
ROOT_PACKAGES = ("keras", "numpy", "absl-py", "scipy")
#: GPU builds the image holds: never carried (a CPU wheel from here would replace them).
NEVER_CARRY = frozenset({"torch", "jax", "jaxlib", "tensorflow", "triton"})
DEFAULT_SOURCE_DIR = os.environ.get("KDCAP_CIFAR100_DIR") or str(
    REPO.parent / "shared" / "data" / "cifar100"
)
DEFAULT_BUNDLE_DIR = ".device/bundle"
DEFAULT_WORK_DIR = ".device/work"

#: step_time.py on the device: the ratio form of docs/benchmarks.md (82 s on JAX and
#: 46 s on torch in an earlier H200 run, compilation included).
STEP_TIME = {
    "pairs": "small,realistic",
    "repeats": "8",
    "steps": "5",
    "warmup": "3",
    "nodiagnose": None,
}
STEP_TIME_DRY = {
    "pairs": "resnet8:resnet8",
    "batch_size": "8",
    "repeats": "1",
    "steps": "1",
    "warmup": "0",
    "policies": "kd",
    "nodiagnose": None,
    "nokeras_distiller": None,
    "threads": "1",
}
#: capacity_mismatch.py on the device: 20 classes x 200 images, the large teacher's
#: kd / tuned kd / isats and the small teacher's kd, 2 seeds (estimate below).
CAPACITY = {
    "classes": "20",
    "per_class": "200",
    "val_per_class": "50",
    "test_per_class": "0",
    "teacher_epochs": "40",
    "epochs": "30",
    "batch_size": "64",
    "eval_every": "10",
    "seeds": "0,1",
    "methods": "ce,kd,kd_tuned,isats",
    "small_methods": "kd",
    "tune_kd_temperatures": "1,2,4,8",
    "pipeline": "numpy",
    "noresume": None,
}
CAPACITY_DRY = {
    "classes": "8",  # >= 6: the teacher report ranks the top 5 non-target classes
    "per_class": "4",
    "val_per_class": "2",
    "test_per_class": "2",
    "teacher_epochs": "1",
    "epochs": "1",
    "batch_size": "8",
    "eval_every": "1",
    "seeds": "0",
    "methods": "kd,kd_tuned",
    "small_methods": "kd",
    "tune_kd_temperatures": "2,4",
    "student": "resnet8",
    "small_teacher": "resnet8",
    "large_teacher": "resnet8",
    "pipeline": "numpy",
    "noresume": None,
    "threads": "1",
}
#: flags the capacity protocol cannot run without (the bundle's data is cut to them).
CAPACITY_REQUIRED = ("classes", "per_class", "val_per_class", "test_per_class")
#: the capacity_mismatch.py defaults that the estimate needs when a flag is not given.
CAPACITY_DEFAULTS = {
    "teacher_roles": "small,large",
    "tune_seeds": "0",
    "tune_kd_temperatures": "1,2,3,4,6,8",
    "tune_ats": "4:2,3:2,2:1,6:4,8:4,2:2",
    "eval_every": "5",
}
#: H200 cost model of the capacity protocol on JAX, in seconds. Steps: the measured
#: step times (student 1.3 ms, Distiller 2.4 ms, teacher inference 1.3-2.1 ms at
#: batch 64) plus the NumPy input pipeline; overheads: compilation, evaluation.
COST = {
    "start": 25.0,
    "teacher_overhead": 20.0,
    "teacher_step": 0.004,
    "student_overhead": 8.0,
    "student_step": 0.003,
    "eval_step": 0.0015,
}
#: per sub-run: an expected time on an H200 (s) and its own timeout (s).
STEP_TIME_EXPECTED = {"jax": 95.0, "torch": 60.0, "tensorflow": 120.0}
STEP_TIME_TIMEOUT = {"jax": 200, "torch": 150, "tensorflow": 200}
#: seconds left for the sub-runs' bookkeeping (copying, the summary) within --budget_s.
RESERVE_S = 15.0

FLAGS = flags.FlagValues()
flags.DEFINE_string(
    "bundle_dir",
    DEFAULT_BUNDLE_DIR,
    "The bundle folder (relative paths are taken from the repository root).",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "source_dir", DEFAULT_SOURCE_DIR, "pack: the full CIFAR-100 npz folder.", flag_values=FLAGS
)
flags.DEFINE_bool(
    "no_wheels",
    False,
    "pack: no wheel download (offline; the device must then hold every package).",
    flag_values=FLAGS,
)
flags.DEFINE_bool(
    "dry_run",
    False,
    "Tiny sizes on the CPU, results in a temporary folder (the tests' mode).",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "capacity_flags",
    "",
    "Extra capacity_mismatch.py flags, e.g. '--seeds=0,1,2 --epochs=40' (they win over the "
    "defaults; pack stores them in the bundle and run reads them from there).",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "step_time_flags",
    "",
    "run: extra step_time.py flags (win over the defaults).",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "backends",
    None,
    "run: step_time backends (default jax,torch; --dry_run: $KERAS_BACKEND).",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "capacity_backend",
    None,
    "run: the capacity protocol's backend (default jax; --dry_run: $KERAS_BACKEND).",
    flag_values=FLAGS,
)
flags.DEFINE_float(
    "budget_s",
    540.0,
    "run: seconds for all sub-runs together (the device tool stops a command at 600).",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "work_dir",
    None,
    "run: teacher cache and logs (default .device/work; --dry_run: a new temporary folder).",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "output_dir",
    None,
    "run: results folder (default benchmarks/results; --dry_run: <work_dir>/results).",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "tag", None, "run: result tag (default gpu_h200; --dry_run: dryrun).", flag_values=FLAGS
)
flags.DEFINE_string(
    "site_dir", "/tmp/site", "run: where the carried wheels are installed.", flag_values=FLAGS
)


def _common():
    """benchmarks/_common.py, imported late: it imports Keras, which the device lacks at first.

    The repository goes on the path too: keras_kdcap is not installed on the device.
    """
    for folder in (REPO, BENCHMARKS):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    import _common

    return _common


def in_repo(path: str | os.PathLike) -> Path:
    """`path` as an absolute path; relative paths are taken from the repository root."""
    path = Path(path)
    return path if path.is_absolute() else REPO / path


def rel(path: str | os.PathLike) -> str:
    """`path` relative to the repository root (what the results files record)."""
    return os.path.relpath(Path(path).resolve(), REPO.resolve())


def folder_bytes(folder: Path) -> int:
    """Total bytes of the files under `folder`."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def sha256(path: Path) -> str:
    """The file's SHA-256, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------- flag lists
def parse_flag_text(text: str) -> dict[str, str | None]:
    """`--name=value --nobool` text to an ordered dict (value None for bare booleans).

    Args:
        text: flags as on a command line (shell quoting allowed).

    Returns:
        name -> value.

    Raises:
        app.UsageError: an item that is not a `--flag`.
    """
    result: dict[str, str | None] = {}
    for item in shlex.split(text or ""):
        if not item.startswith("--") or len(item) < 3:
            raise app.UsageError(f"{item!r} is not a --flag (use --name=value).")
        name, sep, value = item[2:].partition("=")
        result[name] = value if sep else None
    return result


def merge_flags(base: dict[str, str | None], extra: dict[str, str | None]) -> dict[str, Any]:
    """`base` updated with `extra`; `--x` / `--nox` replace each other."""
    merged = dict(base)
    for name, value in extra.items():
        other = name[2:] if name.startswith("no") else f"no{name}"
        if value is None:
            merged.pop(other, None)
        merged[name] = value
    return merged


def flag_args(values: dict[str, str | None]) -> list[str]:
    """The command-line items of a flag dict."""
    return [f"--{k}" if v is None else f"--{k}={v}" for k, v in values.items()]


def script_flags(script: Path) -> set[str]:
    """The flag names a benchmark script defines (read from its source, no import).

    Counts `flags.DEFINE_*("name", ...)` calls, the keys of a
    `define_flag_table(FLAGS, {"name": ...})` table and `define_threads_flag`.
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if called.startswith("DEFINE_") and node.args:
            names.add(getattr(node.args[0], "value", None))
        elif called == "define_flag_table" and len(node.args) > 1:
            table = node.args[1]
            names.update(getattr(k, "value", None) for k in getattr(table, "keys", []))
        elif called == "define_threads_flag":
            names.add("threads")
    return {n for n in names if isinstance(n, str)}


def known_flags(values: dict[str, Any], script: Path) -> tuple[dict[str, Any], list[str]]:
    """Drops the flags `script` does not define (printing them); the required ones must exist.

    Args:
        values: flag name -> value (`no<name>` for false booleans).
        script: the benchmark script.

    Returns:
        `(kept flags, dropped flag names)`.

    Raises:
        SystemExit: a flag of `CAPACITY_REQUIRED` is missing from the capacity script.
    """
    defined = script_flags(script)
    kept, dropped = {}, []
    for name, value in values.items():
        base = name[2:] if value is None and name.startswith("no") else name
        if base in defined or name in defined:
            kept[name] = value
        else:
            dropped.append(name)
    missing = [n for n in CAPACITY_REQUIRED if n in dropped]
    if missing and script.name == "capacity_mismatch.py":
        sys.exit(f"[device_run] {script.name} lacks the flags {missing}; the bundle needs them.")
    if dropped:
        print(f"[device_run] {script.name} does not define {dropped}: left out.", flush=True)
    return kept, dropped


def capacity_settings(dry_run: bool, extra: str) -> dict[str, Any]:
    """The capacity protocol's flags of a mode, with `extra` flag text on top."""
    return merge_flags(CAPACITY_DRY if dry_run else CAPACITY, parse_flag_text(extra))


def data_sizes(settings: dict[str, Any]) -> dict[str, int]:
    """The bundle's data cut from the capacity flags.

    Returns:
        `{"classes", "train_per_class", "test_per_class"}` (test 0: all).

    Raises:
        app.UsageError: a size flag missing or not an integer in range.
    """
    try:
        classes = int(settings["classes"])
        train = int(settings["per_class"]) + int(settings["val_per_class"])
        test = int(settings["test_per_class"])
    except (KeyError, TypeError, ValueError) as err:
        raise app.UsageError(
            f"the capacity flags need integer {CAPACITY_REQUIRED}; got {err}"
        ) from None
    if not 2 <= classes <= 100 or train < 1 or test < 0:
        raise app.UsageError(
            f"capacity sizes out of range: classes={classes} (2..100), per_class + "
            f"val_per_class={train} (>= 1), test_per_class={test} (>= 0)."
        )
    return {"classes": classes, "train_per_class": min(train, 500), "test_per_class": test}


# ------------------------------------------------------------------------ pack
def first_per_class(labels: np.ndarray, classes: int, per_class: int) -> np.ndarray:
    """Indices of the first `per_class` examples of each class below `classes`, in order.

    The same selection `stratified_indices` makes after the capacity script keeps
    the first `classes` classes, so the cut arrays give it the same images.

    Args:
        labels: the full split's labels.
        classes: keep labels `0..classes-1`.
        per_class: examples per class (0: all).

    Returns:
        Sorted int64 indices.
    """
    labels = np.asarray(labels).reshape(-1)
    picked = []
    for c in range(classes):
        where = np.flatnonzero(labels == c)
        picked.append(where if per_class == 0 else where[:per_class])
    return np.sort(np.concatenate(picked)).astype(np.int64)


def cut_cifar100(source: Path, target: Path, sizes: dict[str, int]) -> dict[str, Any]:
    """Writes `train.npz` / `test.npz` cut to `sizes` into `target`.

    Args:
        source: the full CIFAR-100 npz folder (`images` uint8 NHWC, `labels`).
        target: the output folder.
        sizes: `data_sizes` output.

    Returns:
        Per split: images, bytes and SHA-256 of the written file.
    """
    for name in ("train.npz", "test.npz"):
        if not (source / name).is_file():
            sys.exit(
                f"[device_run] {source / name} not found: pass --source_dir=<folder with "
                "train.npz and test.npz> or set KDCAP_CIFAR100_DIR."
            )
    target.mkdir(parents=True, exist_ok=True)
    record = {}
    for split in ("train", "test"):
        per_class = sizes[f"{split}_per_class"]
        with np.load(source / f"{split}.npz") as npz:
            images, labels = npz["images"], npz["labels"].reshape(-1)
        keep = first_per_class(labels, sizes["classes"], per_class)
        path = target / f"{split}.npz"
        np.savez_compressed(path, images=np.asarray(images[keep], np.uint8), labels=labels[keep])
        record[split] = {"images": len(keep), "bytes": path.stat().st_size, "sha256": sha256(path)}
    return record


def device_packages(text: str | None = None) -> frozenset[str]:
    """The device's package names: `DEVICE_PACKAGES`, or those listed in a notes text.

    Args:
        text: a device notes text with a line `nvidia-h200: ... Packages: a, b, c.`;
            None: the built-in list.

    Returns:
        Normalized names.
    """
    if text:
        match = re.search(r"nvidia-h200:[^\n]*?Packages:([^\n]*)", text)
        if match:
            return frozenset(_norm(n) for n in match.group(1).strip(" .").split(","))
    return frozenset(_norm(n) for n in DEVICE_PACKAGES)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def missing_packages(have: frozenset[str]) -> dict[str, str]:
    """The packages our code needs on the device that it lacks, at the versions installed here.

    Follows the installed requirements of `ROOT_PACKAGES` (markers evaluated for
    the device's Python on Linux x86-64; extras left out).

    Args:
        have: the device's normalized package names.

    Returns:
        name -> version, in the order found.

    Raises:
        SystemExit: a needed package is not installed here, or is a GPU build.
    """
    from packaging.requirements import Requirement

    env = {
        "python_version": DEVICE_PYTHON,
        "python_full_version": DEVICE_PYTHON_FULL,
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "os_name": "posix",
        "extra": "",
    }
    missing: dict[str, str] = {}
    seen: set[str] = set()
    queue = list(ROOT_PACKAGES)
    while queue:
        name = _norm(queue.pop(0))
        if name in seen:
            continue
        seen.add(name)
        try:
            version = metadata.version(name)
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            if name in have:
                continue
            sys.exit(f"[device_run] {name} is needed on the device but not installed here.")
        if name not in have:
            if name in NEVER_CARRY:
                sys.exit(f"[device_run] {name} is missing on the device: a GPU build, not carried.")
            missing[name] = version
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(env):
                queue.append(requirement.name)
    return missing


def download_wheels(packages: dict[str, str], folder: Path) -> list[dict[str, Any]]:
    """`pip download`s the device's wheels of `packages` into `folder`.

    Returns:
        Per wheel: file, bytes, SHA-256.

    Raises:
        SystemExit: pip failed (offline, or no wheel for the device); the message says so.
    """
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--python-version", DEVICE_PYTHON, "--implementation", "cp",
        *[item for p in DEVICE_PLATFORMS for item in ("--platform", p)],
        "-d", str(folder), *[f"{n}=={v}" for n, v in packages.items()],
    ]  # fmt: skip
    print("[device_run] " + " ".join(command[2:5]) + " " + " ".join(command[-len(packages) :]))
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(
            f"[device_run] pip download failed (rc {done.returncode}):\n{done.stderr[-2000:]}\n"
            "Offline? Pack with --no_wheels only if the device holds every package."
        )
    wheels = sorted(folder.glob("*.whl"))
    names = {_norm(w.name.split("-")[0]) for w in wheels}
    lacking = [n for n in packages if n not in names]
    if lacking:
        sys.exit(f"[device_run] pip saved no wheel for {lacking}.")
    return [{"file": w.name, "bytes": w.stat().st_size, "sha256": sha256(w)} for w in wheels]


def device_call(bundle: Path) -> dict[str, Any]:
    """The device tool's arguments for the run: command, carry and timeout_s."""
    carry = rel(bundle)
    command = (
        f"PYTHONUNBUFFERED=1 python3 benchmarks/device_run.py run --bundle_dir={shlex.quote(carry)}"
    )
    return {"command": command, "carry": [carry], "timeout_s": DEVICE_TIMEOUT_S}


def tree_bytes() -> int | None:
    """Bytes of the working tree a device call sends (tracked and untracked, not ignored)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=REPO, capture_output=True, check=True,
        ).stdout.decode().split("\0")  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return sum((REPO / p).stat().st_size for p in listed if p and (REPO / p).is_file())


def pack(cfg: dict[str, Any]) -> dict[str, Any]:
    """Builds the bundle and prints its size and the device call.

    Args:
        cfg: `dry_run`, `bundle_dir`, `source_dir`, `no_wheels`, `capacity_flags`,
            `kinds_text` (device notes or None).

    Returns:
        The manifest (also written to `<bundle>/bundle.json`).
    """
    bundle = in_repo(cfg["bundle_dir"])
    settings = capacity_settings(cfg["dry_run"], cfg["capacity_flags"])
    sizes = data_sizes(settings)
    if bundle.exists():
        shutil.rmtree(bundle)
    bundle.mkdir(parents=True)
    data = cut_cifar100(Path(cfg["source_dir"]), bundle / "cifar100", sizes)
    packages = {} if cfg["no_wheels"] else missing_packages(device_packages(cfg["kinds_text"]))
    wheels = download_wheels(packages, bundle / "wheels") if packages else []
    call = device_call(bundle)
    manifest = {
        "dry_run": cfg["dry_run"],
        "data": {**sizes, **data},
        "capacity_flags": cfg["capacity_flags"],
        "packages": packages,
        "wheels": wheels,
        "no_wheels": cfg["no_wheels"],
        "device_python": DEVICE_PYTHON,
        "device_call": call,
    }
    _common().write_json(bundle / "bundle.json", manifest)
    size = folder_bytes(bundle)
    tree = tree_bytes()
    manifest["bundle_bytes"] = size
    _common().write_json(bundle / "bundle.json", manifest)
    print(f"[device_run] bundle {rel(bundle)}: {size / MIB:.2f} MiB", flush=True)
    for name, version in packages.items():
        print(f"    wheel {name}=={version}")
    print(
        f"    data: {sizes['classes']} classes, train {data['train']['images']} images, "
        f"test {data['test']['images']} images"
    )
    if tree is not None:
        print(f"    with the working tree: {(size + tree) / MIB:.2f} MiB (limit 64 MiB)")
    if size > BUNDLE_LIMIT or (tree is not None and size + tree > BUNDLE_LIMIT):
        sys.exit(
            f"[device_run] the bundle ({size / MIB:.1f} MiB) and the working tree "
            f"({(tree or 0) / MIB:.1f} MiB) exceed 64 MiB: cut --capacity_flags (fewer classes "
            "or images per class) or leave a package out."
        )
    text = json.dumps(call)
    if len(call["command"]) > COMMAND_LIMIT:
        sys.exit(f"[device_run] the command has {len(call['command'])} characters (limit 2000).")
    print("[device_run] device call (run):")
    print(text, flush=True)
    return manifest


# ------------------------------------------------------------------------- run
@dataclass
class SubRun:
    """One benchmark subprocess of the run."""

    name: str
    backend: str
    argv: list[str]
    output: Path
    timeout: float
    expected: float
    dropped: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)


def _ints(text: Any) -> list[str]:
    return [t for t in str(text).split(",") if t.strip()]


def capacity_estimate(settings: dict[str, Any]) -> dict[str, Any]:
    """Seconds the capacity protocol should take on an H200 (`COST` model).

    Counts the teachers, the student and tuning runs of `capacity_mismatch.py`'s
    plan and multiplies by the per-step and per-run costs.

    Args:
        settings: the capacity flags.

    Returns:
        `{"seconds", "teachers", "student_runs", "tuning_runs", "steps_per_epoch"}`.
    """
    s = {**CAPACITY_DEFAULTS, **settings}
    methods = _ints(s.get("methods", "ce,kd,kd_tuned,ats,fgcr,isats,regt_kd"))
    small = _ints(s["small_methods"]) if s.get("small_methods") is not None else methods
    roles = _ints(s["teacher_roles"])
    seeds = len(_ints(s.get("seeds", "0,1")))
    tune_seeds = len(_ints(s["tune_seeds"]))
    classes, per_class = int(s["classes"]), int(s["per_class"])
    batch = int(s.get("batch_size", 64))
    steps = max(1, classes * per_class // batch)
    teachers = 2 + ("regt_kd" in methods) + ("large_flat" in roles)
    runs_per_seed = ("ce" in methods) + ("regt_kd" in methods)
    tuning = 0
    for role in roles:
        chosen = small if role == "small" else methods
        runs_per_seed += sum(m not in ("ce", "regt_kd") for m in chosen)
        tuning += tune_seeds * (
            ("kd_tuned" in chosen) * len(_ints(s["tune_kd_temperatures"]))
            + ("ats_tuned" in chosen) * len(_ints(s["tune_ats"]))
        )
    student_runs = seeds * runs_per_seed + tuning
    epochs, teacher_epochs = int(s.get("epochs", 30)), int(s.get("teacher_epochs", 80))
    test = int(s.get("test_per_class", 0)) or 100
    eval_images = classes * (int(s.get("val_per_class", 10)) + test)
    evals = epochs // int(s["eval_every"]) + 1
    seconds = (
        COST["start"]
        + teachers * (COST["teacher_overhead"] + teacher_epochs * steps * COST["teacher_step"])
        + student_runs
        * (
            COST["student_overhead"]
            + epochs * steps * COST["student_step"]
            + evals * (eval_images / batch) * COST["eval_step"]
        )
    )
    return {
        "seconds": round(seconds, 1),
        "teachers": teachers,
        "student_runs": student_runs,
        "tuning_runs": tuning,
        "steps_per_epoch": steps,
    }


def plan_runs(cfg: dict[str, Any], manifest: dict[str, Any], out_dir: Path, work: Path) -> list:
    """The sub-runs of `run`, in order: step_time per backend, then the capacity protocol."""
    dry, tag = cfg["dry_run"], cfg["tag"]
    runs = []
    step_flags = merge_flags(
        STEP_TIME_DRY if dry else STEP_TIME, parse_flag_text(cfg["step_time_flags"])
    )
    for backend in cfg["backends"]:
        values = dict(step_flags)
        if dry and backend == "tensorflow":
            values.setdefault("jit_compile", "false")
        output = out_dir / f"step_time_{backend}_{tag}.json"
        values["output"] = rel(output)
        values, dropped = known_flags(values, BENCHMARKS / "step_time.py")
        runs.append(
            SubRun(
                f"step_time_{backend}",
                backend,
                ["benchmarks/step_time.py", *flag_args(values)],
                output,
                STEP_TIME_TIMEOUT.get(backend, 200),
                STEP_TIME_EXPECTED.get(backend, 120.0),
                dropped,
            )
        )
    settings = capacity_settings(dry, manifest.get("capacity_flags", ""))
    settings = merge_flags(settings, parse_flag_text(cfg["capacity_flags"]))
    check_data(settings, manifest)
    backend = cfg["capacity_backend"]
    output = out_dir / f"capacity_mismatch_{backend}_{tag}.json"
    values = {
        **settings,
        "data_dir": rel(in_repo(cfg["bundle_dir"]) / "cifar100"),
        "cache_dir": rel(work / "cache"),
        "output": rel(output),
    }
    values, dropped = known_flags(values, BENCHMARKS / "capacity_mismatch.py")
    estimate = capacity_estimate(settings)
    runs.append(
        SubRun(
            f"capacity_mismatch_{backend}",
            backend,
            ["benchmarks/capacity_mismatch.py", *flag_args(values)],
            output,
            cfg["budget_s"],  # the rest of the budget
            estimate["seconds"],
            dropped,
            {"estimate": estimate},
        )
    )
    return runs


def check_data(settings: dict[str, Any], manifest: dict[str, Any]) -> None:
    """The capacity sizes must fit the bundle's data cut (else: repack)."""
    need, have = data_sizes(settings), manifest["data"]
    problems = []
    if need["classes"] > have["classes"]:
        problems.append(f"classes {need['classes']} > {have['classes']}")
    if need["train_per_class"] > have["train_per_class"]:
        problems.append(
            f"per_class + val_per_class {need['train_per_class']} > {have['train_per_class']}"
        )
    if have["test_per_class"] and not 0 < need["test_per_class"] <= have["test_per_class"]:
        problems.append(f"test_per_class {need['test_per_class']} vs {have['test_per_class']}")
    if problems:
        sys.exit(
            "[device_run] the bundle's data does not fit the capacity flags ("
            + "; ".join(problems)
            + "): pack again with the same --capacity_flags."
        )


def install_wheels(bundle: Path, site: Path, dry_run: bool) -> list[str]:
    """Installs the bundle's wheels into `site` (the device's missing packages).

    Returns:
        The installed wheel files (none in a dry run: this machine has the packages).

    Raises:
        SystemExit: pip failed.
    """
    wheels = sorted((bundle / "wheels").glob("*.whl"))
    if not wheels:
        return []
    if dry_run:
        print(f"[device_run] dry run: {len(wheels)} wheels not installed (present here).")
        return []
    command = [
        sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
        "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels),
    ]  # fmt: skip
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        sys.exit(f"[device_run] installing the wheels failed (rc {done.returncode}).")
    print(f"[device_run] installed {len(wheels)} wheels into {site}", flush=True)
    return [w.name for w in wheels]


def _pump(stream: Any, log: Any) -> None:
    for line in iter(stream.readline, ""):
        sys.stdout.write(line)
        sys.stdout.flush()
        log.write(line)
    stream.close()


def execute(run: SubRun, env: dict[str, str], timeout: float, log_path: Path) -> dict[str, Any]:
    """Runs one sub-run as a subprocess (its own session), killed at `timeout`.

    Its output goes to this process's stdout and to `log_path`.

    Returns:
        `{"rc", "seconds", "timed_out", "timeout_s"}`.
    """
    print(f"\n[device_run] {run.name} (timeout {timeout:.0f} s): {' '.join(run.argv)}", flush=True)
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            [sys.executable, *run.argv],
            cwd=REPO,
            env={**env, "KERAS_BACKEND": run.backend},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        reader = threading.Thread(target=_pump, args=(process.stdout, log), daemon=True)
        reader.start()
        timed_out = False
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        reader.join(timeout=10)
    seconds = time.perf_counter() - start
    print(f"[device_run] {run.name}: rc {process.returncode}, {seconds:.0f} s", flush=True)
    return {
        "rc": process.returncode,
        "seconds": round(seconds, 1),
        "timed_out": timed_out,
        "timeout_s": round(timeout, 1),
    }


def gpu_name() -> str | None:
    """The first GPU's name and driver from nvidia-smi (None without one)."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout else None


def copy_out(paths: Sequence[Path], out: Path) -> list[str]:
    """Copies at most `OUT_FILES_LIMIT` existing files into `out` (the device tool's $OUT)."""
    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in paths:
        if not path.is_file():
            continue
        if len(copied) == OUT_FILES_LIMIT:
            print(f"[device_run] $OUT holds {OUT_FILES_LIMIT} files: {path.name} left out.")
            continue
        shutil.copy2(path, out / path.name)
        copied.append(path.name)
    return copied


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Installs the carried wheels, runs every sub-run within the budget, writes the summary.

    Args:
        cfg: the run settings (`config_from_flags`).

    Returns:
        The summary (also `device_run_<tag>.json` in the output folder).
    """
    start = time.perf_counter()
    bundle = in_repo(cfg["bundle_dir"])
    manifest_path = bundle / "bundle.json"
    if not manifest_path.is_file():
        sys.exit(f"[device_run] {rel(manifest_path)} not found: run `pack` and carry the bundle.")
    manifest = json.loads(manifest_path.read_text())
    work = Path(cfg["work_dir"])
    out_dir = Path(cfg["output_dir"])
    logs = work / "logs"
    for folder in (work, out_dir, logs):
        folder.mkdir(parents=True, exist_ok=True)
    site = Path(cfg["site_dir"])
    installed = install_wheels(bundle, site, cfg["dry_run"])
    paths = [str(site)] if installed else []
    paths += [str(REPO), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if installed:
        sys.path[:0] = [str(site)]
    os.environ["KERAS_BACKEND"] = cfg["backends"][0] if cfg["backends"] else cfg["capacity_backend"]
    common = _common()
    runs = plan_runs(cfg, manifest, out_dir, work)
    estimate = runs[-1].record["estimate"]
    total = sum(r.expected for r in runs)
    print(
        f"[device_run] plan ({'dry run' if cfg['dry_run'] else 'H200 estimate'}): "
        + ", ".join(f"{r.name} ~{r.expected:.0f} s" for r in runs)
        + f"; total ~{total:.0f} s of a {cfg['budget_s']:.0f} s budget",
        flush=True,
    )
    print(
        f"[device_run] capacity estimate: {estimate['seconds']:.0f} s = {estimate['teachers']} "
        f"teachers + {estimate['student_runs']} student runs ({estimate['tuning_runs']} tuning), "
        f"{estimate['steps_per_epoch']} steps/epoch (cost model {COST})",
        flush=True,
    )
    deadline = start + cfg["budget_s"] - RESERVE_S
    records = []
    for sub in runs:
        left = deadline - time.perf_counter()
        timeout = min(sub.timeout, left)
        if timeout < 20:
            result = {"rc": None, "skipped": f"{left:.0f} s of the budget left"}
            print(f"[device_run] {sub.name} skipped: {result['skipped']}", flush=True)
        else:
            result = execute(sub, env, timeout, logs / f"{sub.name}.log")
        record = {
            "name": sub.name,
            "backend": sub.backend,
            "command": f"KERAS_BACKEND={sub.backend} python " + " ".join(sub.argv),
            "expected_seconds": sub.expected,
            "flags_left_out": sub.dropped,
            **sub.record,
            **result,
            "output": rel(sub.output),
            "produced": sub.output.is_file(),
        }
        if sub.output.is_file():
            record["complete"] = json.loads(sub.output.read_text()).get("complete", True)
        records.append(record)
    summary = {
        "benchmark": "device_run",
        "dry_run": cfg["dry_run"],
        "tag": cfg["tag"],
        "gpu": gpu_name(),
        "python": sys.version.split()[0],
        "bundle": {k: manifest[k] for k in ("data", "packages", "capacity_flags") if k in manifest},
        "wheels_installed": installed,
        "budget_seconds": cfg["budget_s"],
        "runs": records,
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    summary_path = common.write_json(out_dir / f"device_run_{cfg['tag']}.json", summary)
    print(f"\n[device_run] wrote {rel(summary_path)}")
    for r in records:
        state = "ok" if r["produced"] and r.get("rc") == 0 else "FAILED"
        print(
            f"    {r['name']}: {state}, rc {r.get('rc')}, {r.get('seconds', 0):.0f} s "
            f"(expected {r['expected_seconds']:.0f} s) -> {r['output']}"
        )
    if os.environ.get("OUT"):
        files = [summary_path, *(r.output for r in runs), *(logs / f"{r.name}.log" for r in runs)]
        copied = copy_out(files, Path(os.environ["OUT"]))
        print(f"[device_run] copied to $OUT: {', '.join(copied)}")
    return summary


# ------------------------------------------------------------------------ main
def config_from_flags(mode: str) -> dict[str, Any]:
    """The settings of `mode` from the parsed flags (dry-run defaults filled in).

    Args:
        mode: `pack` or `run`.

    Returns:
        A dict of settings.
    """
    dry = FLAGS.dry_run
    current = os.environ.get("KERAS_BACKEND", "tensorflow")
    backends = FLAGS.backends
    if backends is None:
        backends = current if dry else "jax,torch"
    backends = [b.strip() for b in backends.split(",") if b.strip()]
    capacity_backend = FLAGS.capacity_backend or (current if dry else "jax")
    for backend in [*backends, capacity_backend]:
        if backend not in ("jax", "torch", "tensorflow"):
            raise app.UsageError(f"backend {backend!r}: use jax, torch or tensorflow.")
    if FLAGS.budget_s <= 0:
        raise app.UsageError("--budget_s must be > 0.")
    if mode == "run" and FLAGS.budget_s > DEVICE_TIMEOUT_S - 30 and not dry:
        print(f"[device_run] note: --budget_s over {DEVICE_TIMEOUT_S - 30} s risks the 600 s stop")
    work = FLAGS.work_dir or (tempfile.mkdtemp(prefix="device_run_") if dry else DEFAULT_WORK_DIR)
    work = in_repo(work)
    output = FLAGS.output_dir or (str(work / "results") if dry else "benchmarks/results")
    kinds = Path("/work/.library/device/KINDS.md")
    return {
        "mode": mode,
        "dry_run": dry,
        "bundle_dir": FLAGS.bundle_dir,
        "source_dir": FLAGS.source_dir,
        "no_wheels": FLAGS.no_wheels,
        "capacity_flags": FLAGS.capacity_flags,
        "step_time_flags": FLAGS.step_time_flags,
        "backends": backends,
        "capacity_backend": capacity_backend,
        "budget_s": FLAGS.budget_s,
        "work_dir": str(work),
        "output_dir": str(in_repo(output)),
        "tag": FLAGS.tag or ("dryrun" if dry else "gpu_h200"),
        "site_dir": FLAGS.site_dir,
        "kinds_text": kinds.read_text(encoding="utf-8") if kinds.is_file() else None,
    }


def main(argv: Sequence[str]) -> dict[str, Any]:
    """Parses `argv` (program name, mode, flags) and runs the mode.

    Args:
        argv: e.g. `["device_run", "pack", "--dry_run"]`.

    Returns:
        The manifest (pack) or the summary (run).
    """
    FLAGS.unparse_flags()
    rest = FLAGS(list(argv))
    if len(rest) != 2 or rest[1] not in MODES:
        raise app.UsageError(f"give one mode, {' or '.join(MODES)}; got {rest[1:]}.")
    cfg = config_from_flags(rest[1])
    return pack(cfg) if cfg["mode"] == "pack" else run(cfg)


if __name__ == "__main__":
    try:
        summary = main(sys.argv)
    except app.UsageError as error:
        sys.exit(f"[device_run] usage: {error}")
    if isinstance(summary, dict) and "runs" in summary:
        ok = all(r["produced"] and r.get("rc") == 0 for r in summary["runs"])
        sys.exit(0 if ok else 1)
