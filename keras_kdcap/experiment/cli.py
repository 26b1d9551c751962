"""Command-line flags (absl) of the example scripts, and their one-line error handling."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags

from keras_kdcap.experiment.config import (
    DEFAULT_PRESET,
    LEGACY_POLICY_FLAGS,
    MIX_CHOICES,
    MIX_LAYERS,
    PRESETS,
    ExperimentConfig,
    UsageError,
    check_config,
    default_output_dir,
    one_line,
    typed_policy_args,
)
from keras_kdcap.policies.registry import POLICIES, parse_policy_args

#: exit status of a usage error (as argparse), and of an interrupted run.
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull", "-?")
#: the first policies of a comparison, then every other registered one.
POLICY_ORDER = ("kd", "ats", "isats", "fgcr")


class ShowHelp(Exception):  # noqa: N818 - a signal, not an error
    """Raised by the parser when `--help` is asked for; carries the help text."""


def policy_names() -> tuple[str, ...]:
    """Every registered policy name, the paper's first (kd, ats, isats, fgcr)."""
    rest = sorted(name for name in POLICIES if name not in POLICY_ORDER)
    return tuple(name for name in POLICY_ORDER if name in POLICIES) + tuple(rest)


def _positive(flag_values: flags.FlagValues, *names: str) -> None:
    for name in names:
        flags.register_validator(
            name,
            lambda value: value is None or value > 0,
            message=f"--{name} must be > 0",
            flag_values=flag_values,
        )


PRESET_NOTE = " Default: from --preset."


def define_flags(flag_values: flags.FlagValues, compare: bool = False) -> None:
    """Defines the experiment flags on `flag_values`.

    Preset-controlled flags default to None: the preset fills them unless set.

    Args:
        flag_values: a fresh `absl.flags.FlagValues`.
        compare: define `--policies`/`--seeds` (compare_policies.py) instead of
            `--policy`/`--seed`/`--base_policy`.
    """
    fv = flag_values
    preset_help = "; ".join(
        f"{name}: "
        + ", ".join(f"{k}={'CRD default' if v is None else v}" for k, v in values.items())
        for name, values in PRESETS.items()
    )
    flags.DEFINE_enum(
        "preset",
        DEFAULT_PRESET,
        list(PRESETS),
        f"Defaults of the run; explicit flags override them ({preset_help}).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "teacher",
        None,
        "Teacher: a zoo model name (trained first) or the path of a saved .keras teacher."
        + PRESET_NOTE,
        flag_values=fv,
    )
    flags.DEFINE_string("student", None, "Student: a zoo model name." + PRESET_NOTE, flag_values=fv)
    names = policy_names()
    if compare:
        flags.DEFINE_string(
            "policies", ",".join(names), "Comma list of policies to compare.", flag_values=fv
        )
        flags.DEFINE_string("seeds", "0,1", "Comma list of student seeds.", flag_values=fv)
    else:
        flags.DEFINE_string(
            "policy", "isats", f"Temperature policy: {', '.join(names)}.", flag_values=fv
        )
        flags.DEFINE_string(
            "base_policy",
            None,
            "Base policy of a policy that wraps another (ls, sckd); --policy_args apply to it too.",
            flag_values=fv,
        )
        flags.DEFINE_integer(
            "seed",
            0,
            "Seed of initialisation, shuffling and augmentation.",
            lower_bound=0,
            flag_values=fv,
        )
    flags.DEFINE_string(
        "policy_args",
        "",
        "Constructor arguments of the policy, as a name=value comma list, e.g. "
        "--policy=dkd --policy_args=tckd_weight=1,nckd_weight=8 (docs/policies/<name>.md "
        "lists them; the policy checks their values). Each also goes to --base_policy if it "
        "takes it.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "policy_module",
        None,
        "Comma list of Python modules to import first: policies they define (with a "
        "`registry_name`) can then be named in --policy.",
        flag_values=fv,
    )
    define = {
        "float": flags.DEFINE_float,
        "int": flags.DEFINE_integer,
        "bool": flags.DEFINE_bool,
        "string": flags.DEFINE_string,
    }
    for flag, (kind, argument) in LEGACY_POLICY_FLAGS.items():
        define[kind](
            flag,
            None,
            f"Deprecated: use --policy_args={argument}=<value>.",
            flag_values=fv,
        )
    flags.DEFINE_float(
        "alpha",
        None,
        "Weight of the student's cross-entropy." + PRESET_NOTE,
        lower_bound=0.0,
        flag_values=fv,
    )
    flags.DEFINE_float(
        "beta", None, "Weight of the KD term." + PRESET_NOTE, lower_bound=0.0, flag_values=fv
    )
    flags.DEFINE_bool(
        "temperature_scaling",
        True,
        "Multiply the KD term by s^2 (Hinton); --notemperature_scaling is the ATS code's way.",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "regt", False, "Train the teacher with RegT (keras_kdcap.losses.RegTLoss).", flag_values=fv
    )
    flags.DEFINE_float("regt_gamma", 0.1, "RegT's gamma.", lower_bound=0.0, flag_values=fv)
    flags.DEFINE_float("regt_temperature", 4.0, "RegT's temperature.", flag_values=fv)
    _positive(fv, "regt_temperature")
    flags.DEFINE_integer(
        "epochs", None, "Student epochs." + PRESET_NOTE, lower_bound=1, flag_values=fv
    )
    flags.DEFINE_integer(
        "teacher_epochs", None, "Teacher epochs." + PRESET_NOTE, lower_bound=1, flag_values=fv
    )
    flags.DEFINE_integer(
        "batch_size", None, "Training batch size." + PRESET_NOTE, lower_bound=1, flag_values=fv
    )
    flags.DEFINE_float(
        "lr",
        None,
        "Initial SGD learning rate (default: the CRD one of each model)." + PRESET_NOTE,
        flag_values=fv,
    )
    _positive(fv, "lr")
    flags.DEFINE_float(
        "weight_decay",
        None,
        "PyTorch-style (coupled) weight decay." + PRESET_NOTE,
        lower_bound=0.0,
        flag_values=fv,
    )
    flags.DEFINE_string(
        "data_dir",
        None,
        "Folder of the offline CIFAR-100 copy (train.npz, test.npz) or a tfds data dir. "
        "Default: $KDCAP_CIFAR100_DIR, else tensorflow-datasets (downloads when online).",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "pipeline",
        "auto",
        ["auto", "tfdata", "numpy"],
        "Input pipeline: tf.data, or NumPy in a keras.utils.PyDataset (no TensorFlow needed; "
        "npz copy only); auto picks tf.data when TensorFlow is installed.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "per_class",
        None,
        "Training images per class (0: all 500)." + PRESET_NOTE,
        lower_bound=0,
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "test_per_class",
        None,
        "Test images per class (0: all 100)." + PRESET_NOTE,
        lower_bound=0,
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "teacher_per_class",
        None,
        "Training images per class of the teacher (0: all 500), a superset of the students' "
        "(default: --per_class)." + PRESET_NOTE,
        lower_bound=0,
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "num_classes",
        None,
        "Keep the first N classes of CIFAR-100 (100: all)." + PRESET_NOTE,
        lower_bound=2,
        upper_bound=100,
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "baseline",
        None,
        "Also train the student without a teacher (CE only, same data, seed and optimizer) "
        "and print both accuracies." + PRESET_NOTE,
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "mix",
        "none",
        list(MIX_CHOICES),
        "MixUp or CutMix of the student's training batches (soft labels; the teacher sees "
        "the same mixed images). The teacher is trained without it.",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "mix_layers",
        "kdcap",
        list(MIX_LAYERS),
        "Whose MixUp/CutMix: kdcap (exact labels, keras_kdcap.data.mix_batches), keras "
        "(keras.layers.MixUp/CutMix) or keras_cv (needs keras-cv).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "output_dir",
        None,
        "Folder of every output (default: runs/<preset>_<teacher>_<student>_<policy>_seed<seed>"
        + ("; comparisons: runs/compare_<preset>_<teacher>_<student>)" if compare else ")"),
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "analysis",
        True,
        "Teacher statistics (non-target variance, tau* histogram) and PNG plots.",
        flag_values=fv,
    )
    flags.DEFINE_bool("tensorboard", True, "Write TensorBoard logs.", flag_values=fv)
    flags.DEFINE_bool(
        "restart",
        False,
        "Replace a previous run in --output_dir instead of reusing or resuming it.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "verbose",
        1,
        "Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch.",
        lower_bound=0,
        upper_bound=2,
        flag_values=fv,
    )


def parse(argv: Sequence[str], compare: bool = False) -> tuple[flags.FlagValues, set[str]]:
    """Parses a command line into fresh flag values.

    Args:
        argv: `sys.argv`-style list (program name first).
        compare: the comparison script's flags.

    Returns:
        `(flag_values, explicit)`: the parsed flags and the names of those set.

    Raises:
        ShowHelp: `--help` was given.
        UsageError: an unknown flag, a bad value or a stray argument.
    """
    fv = flags.FlagValues()
    define_flags(fv, compare=compare)
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        raise ShowHelp(fv.get_help())
    try:
        rest = fv(list(argv))
    except flags.Error as err:
        raise UsageError(one_line(err)) from None
    if len(rest) > 1:
        raise UsageError(f"unexpected argument {rest[1]!r} (flags are --name=value)")
    explicit = {name for name in fv if fv[name].present}
    import_policy_modules(fv.policy_module)
    return fv, explicit


def import_policy_modules(text: str | None) -> None:
    """Imports the `--policy_module` modules, registering the policies they define.

    Args:
        text: comma list of module names, or None.

    Raises:
        UsageError: a module cannot be imported.
    """
    for module in split_list(text or ""):
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise UsageError(
                f"--policy_module={module}: cannot import it ({one_line(err)})"
            ) from None


def policy_args_from_flags(fv: flags.FlagValues, explicit: set[str]) -> dict[str, Any]:
    """`--policy_args` merged with the deprecated per-argument flags (which warn).

    Args:
        fv: parsed flags.
        explicit: names of the flags set on the command line.

    Returns:
        Argument name -> value (text from `--policy_args`, typed from old flags).

    Raises:
        UsageError: a malformed `--policy_args`, or one argument set twice.
    """
    try:
        args: dict[str, Any] = parse_policy_args(fv.policy_args or "")
    except ValueError as err:
        raise UsageError(f"--policy_args: {err}") from None
    for flag, (_, argument) in LEGACY_POLICY_FLAGS.items():
        if flag not in explicit:
            continue
        if argument in args:
            raise UsageError(f"--{flag} and --policy_args both set {argument!r}: keep one")
        print(
            f"warning: --{flag} is deprecated, use --policy_args={argument}=<value> "
            "(the old flag goes in the next release)",
            file=sys.stderr,
            flush=True,
        )
        args[argument] = fv[flag].value
    return args


def build_config(fv: flags.FlagValues, explicit: set[str], **overrides: Any) -> ExperimentConfig:
    """The configuration from parsed flags: preset values, then explicit flags.

    Args:
        fv: parsed flags.
        explicit: names of the flags set on the command line.
        **overrides: fields to set directly (e.g. `policy`, `seed` in comparisons).

    Returns:
        The `ExperimentConfig` (not checked yet).
    """
    preset = PRESETS[fv.preset]
    values = {
        key: (fv[key].value if key in explicit else default) for key, default in preset.items()
    }
    for name in (
        "policy",
        "base_policy",
        "seed",
        "temperature_scaling",
        "regt",
        "regt_gamma",
        "regt_temperature",
        "data_dir",
        "pipeline",
        "mix",
        "mix_layers",
        "analysis",
        "tensorboard",
        "restart",
        "verbose",
    ):
        if name in fv:
            values[name] = fv[name].value
    values["preset"] = fv.preset
    values.update(overrides)
    policy_names = (values.get("policy"), values.get("base_policy"))
    values["policy_args"] = typed_policy_args(policy_names, policy_args_from_flags(fv, explicit))
    if fv.output_dir:
        values["output_dir"] = fv.output_dir
    else:
        values["output_dir"] = default_output_dir(
            fv.preset,
            values["teacher"],
            values["student"],
            values.get("policy", "isats"),
            values.get("seed", 0),
        )
    if values.get("data_dir"):
        values["data_dir"] = os.path.expanduser(values["data_dir"])
    return ExperimentConfig(**values)


def parse_experiment(argv: Sequence[str]) -> ExperimentConfig:
    """Parses and checks the command line of `examples/cifar100_isats.py`.

    Args:
        argv: `sys.argv`-style list.

    Returns:
        A checked `ExperimentConfig`.

    Raises:
        ShowHelp: `--help` was given.
        UsageError: bad input, with a one-line message.
    """
    fv, explicit = parse(argv)
    config = build_config(fv, explicit)
    check_config(config, explicit)
    return config


def define_flag_table(flag_values: flags.FlagValues, table: dict[str, tuple]) -> None:
    """Defines a script's flags from one table, each flag's type from its default.

    A bool default makes a bool flag, an int an integer flag, a float a float flag,
    a string or None a string flag; a third item, the choices, makes an enum flag.

    Args:
        flag_values: the script's `absl.flags.FlagValues`.
        table: name -> `(default, help)` or `(default, help, choices)`.

    Example:
        >>> fv = flags.FlagValues()
        >>> define_flag_table(fv, {"epochs": (30, "Epochs."), "mode": ("a", "Mode.", ["a", "b"])})
        >>> fv(["script", "--epochs=2"]) and (fv.epochs, fv.mode)
        (2, 'a')
    """
    kinds = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float}
    for name, (default, help_text, *choices) in table.items():
        if choices:
            flags.DEFINE_enum(name, default, choices[0], help_text, flag_values=flag_values)
        else:
            define = kinds.get(type(default), flags.DEFINE_string)
            define(name, default, help_text, flag_values=flag_values)


def preset_then_flags(fv: flags.FlagValues, preset: dict[str, Any]) -> dict[str, Any]:
    """Every setting: the preset's value, unless the flag was given on the command line.

    Args:
        fv: parsed flags.
        preset: the chosen preset's values by flag name.

    Returns:
        Every setting by flag name.
    """
    values = dict(preset)
    for name in fv:
        if name not in values or fv[name].present:
            values[name] = fv[name].value
    return values


def split_list(text: str) -> list[str]:
    """The items of a comma list, blanks dropped: `"kd, ats,"` -> `["kd", "ats"]`.

    Args:
        text: the list.

    Returns:
        The stripped items.
    """
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_list(flag: str, value: str, kind: Callable[[str], Any] = str) -> list[Any]:
    """Splits a comma list flag.

    Args:
        flag: its name, for the message.
        value: the text.
        kind: converts each item.

    Returns:
        The items (no empty ones, no duplicates).

    Raises:
        UsageError: an empty list, a bad or a repeated item.
    """
    try:
        parsed = [kind(item) for item in split_list(value)]
    except ValueError:
        raise UsageError(f"--{flag}={value}: expected a comma list of {kind.__name__}") from None
    if not parsed:
        raise UsageError(f"--{flag} is empty")
    if len(set(parsed)) != len(parsed):
        raise UsageError(f"--{flag}={value}: an item is repeated")
    return parsed


def guarded(
    main: Callable[[Sequence[str]], Any], argv: Sequence[str], usage: str | None = None
) -> int:
    """Runs `main(argv)`, turning bad input into one `error: ...` line on stderr.

    Args:
        main: the script's body.
        argv: `sys.argv`-style list.
        usage: text printed above the flags by `--help` (the script's docstring).

    Returns:
        The exit status: 0, `EXIT_USAGE` after a `UsageError`, `EXIT_INTERRUPTED`
        after Ctrl-C (the run resumes when started again with the same flags).
    """
    try:
        main(argv)
    except ShowHelp as help_text:
        if usage:
            print(usage.strip() + "\n")
        print(f"usage: {os.path.basename(argv[0]) if argv else 'script'} [--flag=value ...]")
        print(help_text)
        return 0
    except UsageError as err:
        sys.stdout.flush()
        print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stdout.flush()
        print(
            "\ninterrupted: run the same command again to resume from the last finished epoch",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_INTERRUPTED
    return 0
