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

from keras_kdcap.models import ALIASES, MODEL_NAMES
from keras_kdcap.policies.base import TemperaturePolicy
from keras_kdcap.policies.registry import POLICIES, get_policy


class UsageError(Exception):
    """A bad command line or configuration: printed as one `error: ...` line, no traceback."""


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
        "alpha": 0.1,
        "beta": 0.9,
    },
    # Under 5 minutes on 2 CPU cores with real data on every backend, also when the
    # cores are shared: small models, 30 images per class, 10 test images per class,
    # a few epochs. Checks the plumbing, not accuracy.
    "smoke": {
        "teacher": "resnet14",
        "student": "resnet8",
        "epochs": 2,
        "teacher_epochs": 3,
        "batch_size": 64,
        "lr": None,
        "weight_decay": 5e-4,
        "per_class": 30,
        "test_per_class": 10,
        "alpha": 0.1,
        "beta": 0.9,
    },
}
DEFAULT_PRESET = "paper"


@dataclasses.dataclass(frozen=True)
class PolicyFlag:
    """A command-line flag that sets one constructor argument of a temperature policy.

    Args:
        name: the flag name.
        kind: "float", "int", "bool" or "string".
        help: the flag's help text.
        argument: the constructor argument it sets (default: `name`).
        policy: when set, the flag only applies to this policy name.
    """

    name: str
    kind: str
    help: str
    argument: str | None = None
    policy: str | None = None

    @property
    def target(self) -> str:
        """The constructor argument the flag sets."""
        return self.argument or self.name


#: Flags of the policies' constructor arguments. A flag applies to every policy
#: whose constructor takes its argument (and only to `policy` when that is set),
#: so a new policy file gets the matching flags without touching this table.
POLICY_FLAGS: tuple[PolicyFlag, ...] = (
    PolicyFlag("temperature", "float", "KD temperature T (kd, fgcr, dkd, ls, sckd)."),
    PolicyFlag(
        "target_temperature",
        "float",
        "tau1, the target class's temperature (ats; isats: fixed tau1 instead of the ratio rule).",
    ),
    PolicyFlag("other_temperature", "float", "tau2, the other classes' temperature (ats)."),
    PolicyFlag(
        "student_temperature",
        "float",
        "The student's temperature s (ats; isats: None matches tau* per sample).",
    ),
    PolicyFlag(
        "keep_target_first",
        "bool",
        "Cap tau1 per sample so the label stays ranked first (ats, isats).",
    ),
    PolicyFlag("target_ratio", "float", "tau1 = target_ratio * tau* (isats)."),
    PolicyFlag("min_temperature", "float", "Lower end of the temperature search (isats, ctkd)."),
    PolicyFlag("max_temperature", "float", "Upper end of the temperature search (isats, ctkd)."),
    PolicyFlag("num_candidates", "int", "Size of the log-spaced tau grid (isats)."),
    PolicyFlag("refine", "bool", "Refine tau* around the best grid point (isats)."),
    PolicyFlag(
        "fallback_temperature",
        "float",
        "Plain-KD temperature for samples the teacher misclassifies (isats).",
    ),
    PolicyFlag(
        "fgcr_weight", "float", "w, weight of the global class relations (fgcr).", "weight", "fgcr"
    ),
    PolicyFlag("dkd_alpha", "float", "Weight of DKD's target-class term (dkd).", "alpha", "dkd"),
    PolicyFlag("dkd_beta", "float", "Weight of DKD's non-target term (dkd).", "beta", "dkd"),
    PolicyFlag("warmup_epochs", "int", "Epochs of DKD's linear warm-up (dkd)."),
    PolicyFlag("initial_temperature", "float", "CTKD's temperature before training (ctkd)."),
    PolicyFlag("lambda_max", "float", "CTKD's final gradient-reversal strength (ctkd)."),
    PolicyFlag("curriculum_epochs", "int", "Epochs of CTKD's curriculum (ctkd)."),
    PolicyFlag(
        "sckd_weighting",
        "string",
        "SCKD's weight of the gradient cosine: binary, clip or affine (sckd).",
        "weighting",
        "sckd",
    ),
    PolicyFlag("ls_ddof", "int", "Delta degrees of freedom of the logit std (ls).", "ddof", "ls"),
)
POLICY_FLAG_NAMES = tuple(flag.name for flag in POLICY_FLAGS)

#: set-up flags of FGCR (not constructor arguments): how `R` is computed.
FGCR_SETUP_FLAGS = ("fgcr_relations", "fgcr_relation_temperature")
FGCR_RELATIONS = ("data", "classifier")

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
    "seed",
)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """All settings of one teacher -> student run.

    Args:
        teacher: a zoo model name (trained first) or the path of a `.keras` teacher.
        student: a zoo model name.
        policy: a `get_policy` name.
        policy_args: the explicitly set policy flags, flag name -> value.
        base_policy: the base policy of `ls`/`sckd`, or None.
        fgcr_relations: "data" (`FGCR.adapt` on the training set) or "classifier".
        fgcr_relation_temperature: temperature of the classifier-relation softmax.
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
    fgcr_relations: str = "data"
    fgcr_relation_temperature: float = 0.25
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


def _accepts(policy_name: str, argument: str) -> bool:
    cls = POLICIES[policy_name]
    return argument in inspect.signature(cls.__init__).parameters


def applicable_policy_flags(policy_name: str) -> tuple[str, ...]:
    """The policy flags a policy takes.

    Args:
        policy_name: a `get_policy` name.

    Returns:
        Flag names, in `POLICY_FLAGS` order.
    """
    names = [
        flag.name
        for flag in POLICY_FLAGS
        if flag.policy in (None, policy_name) and _accepts(policy_name, flag.target)
    ]
    if policy_name == "fgcr":
        names.extend(FGCR_SETUP_FLAGS)
    if _accepts(policy_name, "base_policy"):
        names.append("base_policy")
    return tuple(names)


def policy_kwargs(policy_name: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor arguments of a policy from the policy flags that apply to it.

    Args:
        policy_name: a `get_policy` name.
        values: flag name -> value (flags that do not apply are skipped).

    Returns:
        Keyword arguments for `get_policy(policy_name, ...)`.
    """
    applicable = set(applicable_policy_flags(policy_name))
    return {
        flag.target: values[flag.name]
        for flag in POLICY_FLAGS
        if flag.name in values and values[flag.name] is not None and flag.name in applicable
    }


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


def _check_policy_flags(config: ExperimentConfig, explicit: Iterable[str]) -> None:
    applicable = set(applicable_policy_flags(config.policy))
    if config.base_policy:
        applicable |= set(applicable_policy_flags(config.base_policy))
    policy = config.policy + (f" (base {config.base_policy})" if config.base_policy else "")
    for name in explicit:
        if (name in POLICY_FLAG_NAMES or name in FGCR_SETUP_FLAGS or name == "base_policy") and (
            name not in applicable
        ):
            takes = ", ".join(f"--{n}" for n in sorted(applicable)) or "none"
            raise UsageError(f"--{name} does not apply to --policy {policy} (its flags: {takes})")
    if config.base_policy == config.policy:
        raise UsageError(f"--base_policy {config.base_policy} cannot be the policy itself")
    args = config.policy_args
    lo = args.get("min_temperature")
    hi = args.get("max_temperature")
    if lo is not None and hi is not None and lo >= hi:
        raise UsageError(
            f"--min_temperature ({lo:g}) must be smaller than --max_temperature ({hi:g})"
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
    from keras_kdcap.data.tfds_sources import DOWNLOAD_HOSTS, host_reachable
    from keras_kdcap.experiment.data import check_npz_source, resolve_pipeline

    if resolve_pipeline(config.pipeline) == "numpy":
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
    _check_policy_flags(config, explicit)
    policy = make_policy(config)
    check_data_source(config)  # last: it may probe the network for tfds
    return policy
