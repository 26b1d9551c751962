"""Argument checks that raise errors naming the argument and the fix."""

from __future__ import annotations

import math
import warnings


def _finite_float(name: str, value: float, positive: bool) -> float:
    """`value` as a float if it is finite and > 0 (`positive`) or >= 0, else raises."""
    bound = "> 0" if positive else ">= 0"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a number {bound}; got {value!r}.") from None
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ValueError(f"`{name}` must be a finite number {bound}; got {number}.")
    return number


def check_positive(name: str, value: float) -> float:
    """`value` as a float if it is finite and > 0; else a TypeError or ValueError naming `name`."""
    return _finite_float(name, value, positive=True)


def check_non_negative(name: str, value: float) -> float:
    """`value` as a float if it is finite and >= 0; else a TypeError or ValueError naming `name`."""
    return _finite_float(name, value, positive=False)


def check_fraction(name: str, value: float) -> float:
    """`value` as a float if it lies in [0, 1]; else a TypeError or ValueError naming `name`."""
    value = check_non_negative(name, value)
    if value > 1:
        raise ValueError(f"`{name}` must lie in [0, 1]; got {value}.")
    return value


def check_range(min_name: str, min_value: float, max_name: str, max_value: float):
    """`(min_value, max_value)` as floats if `0 < min_value < max_value`, else raises.

    The messages name the arguments `min_name` and `max_name`.
    """
    min_value = check_positive(min_name, min_value)
    max_value = check_positive(max_name, max_value)
    if min_value >= max_value:
        raise ValueError(
            f"`{min_name}` must be smaller than `{max_name}`; got {min_value} >= {max_value}."
        )
    return min_value, max_value


def check_int_at_least(name: str, value: int, minimum: int) -> int:
    """`value` as an int if it is an integer >= `minimum`; else a TypeError or ValueError."""
    if isinstance(value, bool) or int(value) != value:
        raise TypeError(f"`{name}` must be an integer; got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}; got {value}.")
    return int(value)


def renamed_argument(kwargs: dict, old: str, new: str, value, default, owner: str):
    """The value of a renamed argument, taking the old name for one release.

    Pops `old` from `kwargs`; if given, warns (`DeprecationWarning`) and
    returns it, unless `new` was given too (an error).

    Args:
        kwargs: the caller's `**kwargs` (modified).
        old: the deprecated name.
        new: the current name.
        value: the value passed as `new` (`default` when not passed).
        default: `new`'s default.
        owner: the class or function, for the messages.

    Returns:
        The value to use for `new`.
    """
    if old not in kwargs:
        return value
    old_value = kwargs.pop(old)
    if value is not default and value != default:
        raise TypeError(f"{owner}: pass `{new}` only (`{old}` is its deprecated name).")
    warnings.warn(
        f"{owner}: `{old}` is deprecated, use `{new}`; the old name goes in the next release.",
        DeprecationWarning,
        stacklevel=3,
    )
    return old_value


def deprecated_name(old: str, new: str, owner: str) -> None:
    """Warns that `owner.old` is deprecated in favour of `new` (`DeprecationWarning`)."""
    warnings.warn(
        f"{owner}.{old} is deprecated, use {owner}.{new}; the old name goes in the next release.",
        DeprecationWarning,
        stacklevel=3,
    )
