"""The configuration of one distillation experiment: presets, policy flags and checks.

Everything here is cheap: no data is read and no model is built, so a bad command
line fails in a fraction of a second with a `UsageError` that names the flag.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from absl import app

from keras_kdcap.models import ALIASES, MODEL_NAMES
from keras_kdcap.policies.base import TemperaturePolicy
from keras_kdcap.policies.registry import (
    POLICIES,
    convert_argument,
    get_policy,
    policy_arguments,
)


class UsageError(app.UsageError):
    """A bad command line or configuration: printed as one `error: ...` line, no traceback.

    An `absl.app.UsageError`, so the benchmarks' `app.run` reports it the same way.
    """


#: the values a preset sets; explicit flags override them.
PRESETS: dict[str, dict[str, Any]] = {
    # CRD/RepDistiller protocol (METHODS.md): 240 epochs, SGD lr 0.05 (0.01 for
    # MobileNetV2/ShuffleNet, lr=None picks it per model), momentum 0.9, coupled
    # weight decay 5e-4, x0.1 at 150/180/210, batch 64, alpha 0.1, beta 0.9, T=4
    # (the policies' default temperature).
    "paper": {
        "teacher": "resnet110",
        "student": "resnet20",
        "epochs": 240,
        "teacher_epochs": 240,
        "batch_size": 64,
        "lr": None,
        "weight_decay": 5e-4,
        "per_class": 0,
        "test_per_class": 0,
        "teacher_per_class": None,
        "num_classes": 100,
        "alpha": 0.1,
        "beta": 0.9,
        "baseline": False,
    },
    # The README's first command: under 5 minutes on 2 CPU cores, and it shows
    # distillation working. 10 of the 100 classes; the teacher learns from all 500
    # images of each, the students from the first 100 of them (the teacher is right on
    # most of those, so ISATS mostly does not fall back); the same student is also
    # trained without a teacher on the same images and both accuracies are printed.
    "smoke": {
        "teacher": "resnet14",
        "student": "resnet8",
        "epochs": 20,
        "teacher_epochs": 10,
        "batch_size": 64,
        "lr": None,
        "weight_decay": 5e-4,
        "per_class": 100,
        "test_per_class": 100,
        "teacher_per_class": 0,
        "num_classes": 10,
        "alpha": 0.1,
        "beta": 0.9,
        "baseline": True,
    },
}
DEFAULT_PRESET = "paper"
#: `--mix` values: no mixing, or MixUp / CutMix of the student's batches.
MIX_CHOICES = ("none", "mixup", "cutmix")
#: `--mix_layers`: whose MixUp / CutMix (see `keras_kdcap.data.mix`).
MIX_LAYERS = ("kdcap", "keras", "keras_cv")


#: Deprecated policy flags (one release): flag -> (absl kind, constructor argument).
#: Use `--policy_args=<argument>=<value>`; the policies' own constructors define
#: their arguments, so a new policy needs no entry here.
LEGACY_POLICY_FLAGS: dict[str, tuple[str, str]] = {
    "temperature": ("float", "temperature"),
    "target_temperature": ("float", "target_temperature"),
    "other_temperature": ("float", "other_temperature"),
    "student_temperature": ("float", "student_temperature"),
    "keep_target_first": ("bool", "keep_target_first"),
    "target_ratio": ("float", "target_ratio"),
    "min_temperature": ("float", "min_temperature"),
    "max_temperature": ("float", "max_temperature"),
    "num_candidates": ("int", "num_candidates"),
    "refine": ("bool", "refine"),
    "fallback_temperature": ("float", "fallback_temperature"),
    "fgcr_weight": ("float", "weight"),
    "fgcr_relations": ("string", "relation_source"),
    "fgcr_relation_temperature": ("float", "relation_temperature"),
    "dkd_alpha": ("float", "tckd_weight"),
    "dkd_beta": ("float", "nckd_weight"),
    "warmup_epochs": ("int", "warmup_epochs"),
    "initial_temperature": ("float", "initial_temperature"),
    "lambda_max": ("float", "lambda_max"),
    "curriculum_epochs": ("int", "curriculum_epochs"),
    "sckd_weighting": ("string", "weighting"),
    "ls_ddof": ("int", "ddof"),
}

#: configuration fields that do not change what is trained (left out of fingerprints).
_NOT_TRAINING = frozenset(
    {
        "output_dir",
        "data_dir",
        "pipeline",
        "preset",
        "verbose",
        "restart",
        "analysis",
        "tensorboard",
        "baseline",
    }
)
#: the fields that determine the teacher, when it is trained here.
_TEACHER_FIELDS = (
    "teacher",
    "teacher_epochs",
    "regt",
    "regt_gamma",
    "regt_temperature",
    "batch_size",
    "lr",
    "weight_decay",
    "per_class",
    "teacher_per_class",
    "num_classes",
    "seed",
)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """All settings of one teacher -> student run.

    Args:
        teacher: a zoo model name (trained first) or the path of a `.keras` teacher.
        student: a zoo model name.
        policy: a `get_policy` name.
        policy_args: constructor arguments of the policy and its base (each goes to
            those that take it), argument name -> value (`--policy_args`).
        base_policy: the base policy of `ls`/`sckd`, or None.
        alpha: weight of the student's cross-entropy.
        beta: weight of the KD term.
        temperature_scaling: multiply the KD term by `s^2`.
        regt: train the teacher with `RegTLoss`.
        regt_gamma: RegT's gamma.
        regt_temperature: RegT's temperature.
        epochs: student epochs.
        teacher_epochs: teacher epochs.
        batch_size: training batch size.
        lr: initial learning rate; None uses the CRD default of each model.
        weight_decay: PyTorch-style coupled weight decay.
        seed: seed of initialisation, shuffling and augmentation.
        data_dir: offline npz folder or tfds data dir; None tries $KDCAP_CIFAR100_DIR, then tfds.
        per_class: training images per class (0: all).
        test_per_class: test images per class (0: all).
        teacher_per_class: training images per class of the teacher (0: all; None: the
            students' `per_class`); the students' images are among them.
        num_classes: keep the first N classes of CIFAR-100 (100: all).
        baseline: also train the student without a teacher (CE only, same data, seed,
            optimizer and epochs) and report its accuracy next to the distilled one.
        mix: "none", "mixup" or "cutmix" on the student's training batches (soft labels;
            the teacher sees the same mixed images).
        mix_layers: "kdcap" (`keras_kdcap.data.mix_batches`'s exact labels), "keras"
            (`keras.layers.MixUp`/`CutMix`) or "keras_cv" (keras-cv's layers).
        pipeline: "auto" (tf.data when TensorFlow is installed, else NumPy), "tfdata"
            or "numpy" (`keras_kdcap.data.ArrayImageDataset`, npz copy only).
        output_dir: where every output goes.
        preset: the preset the defaults came from.
        analysis: compute the teacher's temperature statistics and write the plots.
        tensorboard: write TensorBoard logs.
        restart: ignore (and replace) a previous run in `output_dir`.
        verbose: Keras `fit` verbosity.
    """

    teacher: str
    student: str
    policy: str = "isats"
    policy_args: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    base_policy: str | None = None
    alpha: float = 0.1
    beta: float = 0.9
    temperature_scaling: bool = True
    regt: bool = False
    regt_gamma: float = 0.1
    regt_temperature: float = 4.0
    epochs: int = 240
    teacher_epochs: int = 240
    batch_size: int = 64
    lr: float | None = None
    weight_decay: float = 5e-4
    seed: int = 0
    data_dir: str | None = None
    per_class: int = 0
    test_per_class: int = 0
    teacher_per_class: int | None = None
    num_classes: int = 100
    baseline: bool = False
    mix: str = "none"
    mix_layers: str = "kdcap"
    pipeline: str = "auto"
    output_dir: str = "runs/cifar100_isats"
    preset: str = DEFAULT_PRESET
    analysis: bool = True
    tensorboard: bool = True
    restart: bool = False
    verbose: int = 1

    @property
    def teacher_is_file(self) -> bool:
        """Whether `teacher` names a saved model rather than a zoo model."""
        return is_model_path(self.teacher)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-ready values."""
        values = dataclasses.asdict(self)
        values["policy_args"] = dict(self.policy_args)
        return values

    def replace(self, **changes: Any) -> ExperimentConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def teacher_fingerprint(self) -> dict[str, Any]:
        """What determines the teacher: equal fingerprints mean a saved teacher can be reused."""
        if self.teacher_is_file:
            path = Path(self.teacher).resolve()
            stat = path.stat() if path.exists() else None
            return {
                "teacher_file": str(path),
                "mtime_ns": stat.st_mtime_ns if stat else None,
                "size": stat.st_size if stat else None,
            }
        values = self.to_dict()
        return {key: values[key] for key in _TEACHER_FIELDS}

    def student_fingerprint(self) -> dict[str, Any]:
        """What determines the student run: equal fingerprints mean it can resume."""
        values = {k: v for k, v in self.to_dict().items() if k not in _NOT_TRAINING}
        values.pop("teacher")
        values["teacher"] = self.teacher_fingerprint()
        return values


def is_model_path(value: str) -> bool:
    """Whether a `--teacher` value is a file path (ends in `.keras` or has a folder part).

    Args:
        value: the flag value.

    Returns:
        True for paths, False for zoo names.
    """
    return value.endswith(".keras") or os.sep in value or "/" in value


def default_output_dir(preset: str, teacher: str, student: str, policy: str, seed: int) -> str:
    """`runs/<preset>_<teacher>_<student>_<policy>_seed<seed>` (a teacher file gives its stem)."""
    teacher_name = Path(teacher).stem if is_model_path(teacher) else teacher
    return os.path.join("runs", f"{preset}_{teacher_name}_{student}_{policy}_seed{seed}")


def check_model_name(flag: str, name: str) -> str:
    """Checks a zoo model name.

    Args:
        flag: the flag, for the message.
        name: the value.

    Returns:
        The name.

    Raises:
        UsageError: the zoo has no such model.
    """
    if name.lower() in MODEL_NAMES or name.lower() in ALIASES:
        return name
    raise UsageError(
        f"--{flag}={name}: unknown model; choose one of {', '.join(MODEL_NAMES)}"
        + (" or give the path of a .keras file" if flag == "teacher" else "")
    )


def takes_base_policy(policy_name: str) -> bool:
    """Whether a policy wraps another one (its constructor takes `base_policy`)."""
    return "base_policy" in inspect.signature(POLICIES[policy_name].__init__).parameters


def applicable_policy_args(policy_name: str) -> tuple[str, ...]:
    """The `--policy_args` a policy takes: its constructor's arguments.

    Args:
        policy_name: a `get_policy` name.

    Returns:
        Argument names, in the constructor's order.
    """
    return tuple(policy_arguments(POLICIES[policy_name]))


def policy_kwargs(policy_name: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor arguments of a policy from the policy args that apply to it.

    Args:
        policy_name: a `get_policy` name.
        values: argument name -> value (text or typed; those it does not take are
            skipped).

    Returns:
        Keyword arguments for `get_policy(policy_name, ...)`, typed by its constructor.
    """
    cls = POLICIES[policy_name]
    applicable = set(applicable_policy_args(policy_name))
    return {
        name: convert_argument(cls, name, value)
        for name, value in values.items()
        if name in applicable
    }


def typed_policy_args(names: Iterable[str | None], values: Mapping[str, Any]) -> dict[str, Any]:
    """Policy args typed by the first of `names` whose constructor takes each.

    Args:
        names: policy names (unknown ones and None are skipped).
        values: argument name -> value; those no policy takes stay as they are
            (`check_config` rejects them).

    Returns:
        Argument name -> typed value.

    Raises:
        UsageError: a value is not of its argument's type.
    """
    known = [name for name in names if name in POLICIES]
    typed = {}
    for arg, value in values.items():
        owner = next((n for n in known if arg in applicable_policy_args(n)), None)
        try:
            typed[arg] = value if owner is None else convert_argument(POLICIES[owner], arg, value)
        except ValueError as err:
            raise UsageError(f"--policy_args: {one_line(err)}") from None
    return typed


def make_policy(config: ExperimentConfig) -> TemperaturePolicy:
    """Builds the configured policy (and its base policy).

    Args:
        config: the experiment configuration.

    Returns:
        A fresh policy instance.

    Raises:
        UsageError: the policy rejects its arguments; the message names the policy.
    """
    names = [config.policy] + ([config.base_policy] if config.base_policy else [])
    try:
        kwargs = policy_kwargs(config.policy, config.policy_args)
        if config.base_policy:
            kwargs["base_policy"] = get_policy(
                config.base_policy, **policy_kwargs(config.base_policy, config.policy_args)
            )
        return get_policy(config.policy, **kwargs)
    except (TypeError, ValueError) as err:
        raise UsageError(f"--policy {'/'.join(names)}: {one_line(err)}") from None


def one_line(err: BaseException | str) -> str:
    """An error message folded onto one line."""
    return " ".join(str(err).split())


def _check_policy_args(config: ExperimentConfig) -> None:
    if config.base_policy and not takes_base_policy(config.policy):
        wrappers = ", ".join(sorted(n for n in POLICIES if takes_base_policy(n)))
        raise UsageError(
            f"--base_policy does not apply to --policy {config.policy} (policies with a base: "
            f"{wrappers})"
        )
    if config.base_policy == config.policy:
        raise UsageError(f"--base_policy {config.base_policy} cannot be the policy itself")
    names = [config.policy] + ([config.base_policy] if config.base_policy else [])
    applicable = {arg for name in names for arg in applicable_policy_args(name)}
    for arg in config.policy_args:
        if arg not in applicable:
            takes = ", ".join(sorted(applicable)) or "none"
            raise UsageError(
                f"--policy_args: {'/'.join(names)} takes no argument {arg!r} (its arguments: "
                f"{takes})"
            )


def check_data_source(config: ExperimentConfig) -> None:
    """Fails fast when CIFAR-100 can come from nowhere (no npz copy, no tfds data, offline).

    Args:
        config: the configuration (`data_dir`, `pipeline`).

    Raises:
        UsageError: no offline copy, no prepared tfds `cifar100` and the download host
            unreachable; or the NumPy pipeline (asked for, or chosen because TensorFlow
            is missing) without the npz copy; or `--pipeline=tfdata` without TensorFlow.
    """
    from keras_kdcap.data.cifar import resolve_cifar100_source
    from keras_kdcap.data.splits import resolve_pipeline
    from keras_kdcap.data.tfds_sources import DOWNLOAD_HOSTS, host_reachable
    from keras_kdcap.experiment.data import check_npz_source

    try:
        pipeline = resolve_pipeline(config.pipeline)
    except ValueError as err:
        raise UsageError(f"--{err}") from None
    if pipeline == "numpy":
        check_npz_source(config.data_dir)
        return
    source, folder = resolve_cifar100_source(config.data_dir)
    if source == "npz":
        return
    root = Path(folder or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")
    if (root.expanduser() / "cifar100").is_dir() or host_reachable(*DOWNLOAD_HOSTS["cifar100"]):
        return  # prepared (tfds checks the rest) or downloadable
    where = f"--data_dir={config.data_dir}" if config.data_dir else "no --data_dir"
    raise UsageError(
        f"{where}: no CIFAR-100 there (train.npz/test.npz or a prepared tfds cifar100) and "
        f"its download host is unreachable; pass --data_dir=<folder with train.npz and "
        f"test.npz> or set KDCAP_CIFAR100_DIR"
    )


def check_config(config: ExperimentConfig, explicit: Iterable[str] = ()) -> TemperaturePolicy:
    """Checks a configuration before anything heavy runs.

    Args:
        config: the configuration.
        explicit: names of the flags the user set (a set flag that does not apply
            to the policy, or to a teacher loaded from file, is an error).

    Returns:
        The policy built from the configuration (so that its own argument checks ran).

    Raises:
        UsageError: with a one-line message naming the flag.
    """
    explicit = set(explicit)
    if config.policy not in POLICIES:
        raise UsageError(
            f"--policy={config.policy}: unknown policy; choose one of {', '.join(sorted(POLICIES))}"
        )
    if config.base_policy is not None and config.base_policy not in POLICIES:
        raise UsageError(
            f"--base_policy={config.base_policy}: unknown policy; choose one of "
            f"{', '.join(sorted(POLICIES))}"
        )
    if config.teacher_is_file:
        path = Path(config.teacher)
        if not config.teacher.endswith(".keras"):
            raise UsageError(f"--teacher={config.teacher}: a teacher file must be a .keras model")
        if not path.is_file():
            raise UsageError(f"--teacher={config.teacher}: no such file")
        for flag in ("teacher_epochs", "regt", "regt_gamma", "regt_temperature"):
            if flag in explicit:
                raise UsageError(
                    f"--{flag} trains the teacher, but --teacher={config.teacher} is loaded from "
                    "file; give a zoo model name to train one"
                )
    else:
        check_model_name("teacher", config.teacher)
    check_model_name("student", config.student)
    if not 2 <= config.num_classes <= 100:
        raise UsageError(f"--num_classes={config.num_classes}: choose 2 to 100 (CIFAR-100)")
    if config.mix not in MIX_CHOICES:
        raise UsageError(f"--mix={config.mix}: choose one of {', '.join(MIX_CHOICES)}")
    if config.mix_layers not in MIX_LAYERS:
        raise UsageError(f"--mix_layers={config.mix_layers}: choose one of {', '.join(MIX_LAYERS)}")
    if config.mix_layers == "keras_cv" and config.mix != "none":
        import importlib.util

        if importlib.util.find_spec("keras_cv") is None:
            raise UsageError("--mix_layers=keras_cv needs keras-cv: pip install keras-kdcap[cv]")
    for flag in ("regt_gamma", "regt_temperature"):
        if flag in explicit and not config.regt:
            raise UsageError(f"--{flag} needs --regt (RegT teacher training)")
    if config.data_dir is not None and not Path(config.data_dir).is_dir():
        raise UsageError(
            f"--data_dir={config.data_dir}: no such folder (give the folder of train.npz/"
            "test.npz, a tfds data dir, or leave it out to use tensorflow-datasets)"
        )
    if Path(config.output_dir).exists() and not Path(config.output_dir).is_dir():
        raise UsageError(f"--output_dir={config.output_dir} exists and is not a folder")
    _check_policy_args(config)
    policy = make_policy(config)
    check_data_source(config)  # last: it may probe the network for tfds
    return policy
