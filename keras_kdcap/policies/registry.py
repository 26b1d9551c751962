"""Policies by name, and their constructor arguments from text (command-line flags).

A policy class registers itself by declaring `registry_name` (see
`TemperaturePolicy`); nothing here lists the methods.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from types import UnionType
from typing import Any, Union, get_args, get_origin

#: registry name -> policy class, filled as the policy modules are imported.
POLICIES: dict[str, type] = {}
#: constructor parameters that are not settings of the method.
_NOT_ARGUMENTS = frozenset({"self", "name", "dtype", "base_policy"})
_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")
#: `float | None` is a types.UnionType, `Optional[float]` a typing.Union.
_UNIONS = (Union, UnionType)


def register_policy(cls: type, name: str | None = None) -> type:
    """Registers a policy class under a name (done by `registry_name` on subclassing).

    Args:
        cls: a `TemperaturePolicy` subclass.
        name: the registry name; `cls.registry_name` when None.

    Returns:
        `cls`, so this also works as a decorator.

    Raises:
        ValueError: the name is empty or taken by another class.
    """
    name = name or getattr(cls, "registry_name", None)
    if not name or not isinstance(name, str) or not name.isidentifier():
        raise ValueError(
            f"{cls.__name__}: a policy's registry name must be an identifier; got {name!r}."
        )
    known = POLICIES.get(name)
    same = known is not None and (known.__module__, known.__qualname__) == (
        cls.__module__,
        cls.__qualname__,
    )
    if known is not None and not same:
        raise ValueError(
            f"Policy name {name!r} is taken by {known.__module__}.{known.__qualname__}; "
            f"give {cls.__qualname__} another `registry_name`."
        )
    POLICIES[name] = cls  # a re-imported module replaces its own class
    return cls


def policy_class(name: str) -> type:
    """The class registered under `name`.

    Args:
        name: a registry name (e.g. "kd", "isats", "dkd").

    Returns:
        The policy class.

    Raises:
        ValueError: no policy has that name; the message lists the names.
    """
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(
            f"Unknown policy {name!r}: choose one of {', '.join(get_policy_names())}."
        ) from None


def get_policy(name: str, **kwargs) -> Any:
    """Builds a policy from its registry name.

    Args:
        name: one of `get_policy_names()` (e.g. "kd", "ats", "isats", "fgcr").
        **kwargs: the policy's constructor arguments.

    Returns:
        The policy instance.
    """
    return policy_class(name)(**kwargs)


def get_policy_names() -> tuple[str, ...]:
    """The registry names `get_policy` accepts, sorted."""
    return tuple(sorted(POLICIES))


def policy_arguments(cls: type) -> dict[str, inspect.Parameter]:
    """The settings a policy takes: its constructor's named parameters.

    `name`, `base_policy` and `**kwargs` are left out (`base_policy` is a
    policy, not a value).

    Args:
        cls: a policy class.

    Returns:
        Parameter name -> `inspect.Parameter` (annotations evaluated where possible).
    """
    try:
        signature = inspect.signature(cls.__init__, eval_str=True)
    except (NameError, TypeError, SyntaxError):
        signature = inspect.signature(cls.__init__)
    return {
        name: param
        for name, param in signature.parameters.items()
        if name not in _NOT_ARGUMENTS
        and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
    }


def parse_policy_args(text: str) -> dict[str, str]:
    """Splits `"name=value,name=value"` into a dict of strings.

    Args:
        text: the comma list (empty items are skipped).

    Returns:
        Argument name -> value text, in the given order.

    Raises:
        ValueError: an item without `=`, an empty name or a repeated name.
    """
    args: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"{item!r} is not name=value (e.g. temperature=4)")
        if name in args:
            raise ValueError(f"{name!r} is given twice")
        args[name] = value.strip()
    return args


def _kinds(annotation: Any, default: Any) -> tuple[tuple[type, ...], bool]:
    """The accepted value types of a parameter, and whether None is allowed."""
    if annotation is inspect.Parameter.empty or isinstance(annotation, str):
        if default is None or default is inspect.Parameter.empty:
            return (), default is None
        return (type(default),), False
    options = get_args(annotation) if get_origin(annotation) in _UNIONS else (annotation,)
    allows_none = type(None) in options
    return tuple(o for o in options if o is not type(None)), allows_none


def convert_argument(cls: type, name: str, value: Any) -> Any:
    """One constructor argument from text, typed by the parameter's annotation.

    Values that are not strings are returned unchanged (the constructor
    checks them). Bounds are left to the constructor.

    Args:
        cls: the policy class.
        name: the argument name.
        value: its value, usually text from the command line.

    Returns:
        The typed value.

    Raises:
        ValueError: `cls` takes no such argument, or the text is not of its type.
    """
    params = policy_arguments(cls)
    label = getattr(cls, "registry_name", None) or cls.__name__
    if name not in params:
        takes = ", ".join(params) or "none"
        raise ValueError(f"{label} takes no argument {name!r} (its arguments: {takes})")
    if not isinstance(value, str):
        return value
    kinds, allows_none = _kinds(params[name].annotation, params[name].default)
    if allows_none and value.lower() in ("none", "null"):
        return None
    if not kinds or str in kinds:
        return value
    for kind in (bool, int, float):
        if kind not in kinds:
            continue
        if kind is bool:
            if value.lower() in _TRUE + _FALSE:
                return value.lower() in _TRUE
            continue
        try:
            return kind(value)
        except ValueError:
            continue
    expected = " or ".join(k.__name__ for k in kinds) + (" or none" if allows_none else "")
    raise ValueError(f"{name}={value} of {label}: expected {expected}")


def convert_arguments(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """`convert_argument` over a dict of arguments.

    Args:
        cls: the policy class.
        values: argument name -> value.

    Returns:
        Argument name -> typed value.
    """
    return {name: convert_argument(cls, name, value) for name, value in values.items()}
