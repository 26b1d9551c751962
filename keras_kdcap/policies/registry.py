"""Policies by name, for command-line flags and benchmark configs."""

from __future__ import annotations

from keras_kdcap.policies.ats import ATS
from keras_kdcap.policies.base import TemperaturePolicy
from keras_kdcap.policies.ctkd import CTKD
from keras_kdcap.policies.dkd import DKD
from keras_kdcap.policies.fgcr import FGCR
from keras_kdcap.policies.fixed import FixedTemperature
from keras_kdcap.policies.isats import ISATS
from keras_kdcap.policies.logit_standardization import LogitStandardization
from keras_kdcap.policies.sckd import SCKD

#: flag name -> policy class. Add a method here when it gets its own file.
POLICIES: dict[str, type[TemperaturePolicy]] = {
    "kd": FixedTemperature,
    "ats": ATS,
    "isats": ISATS,
    "fgcr": FGCR,
    "dkd": DKD,
    "ls": LogitStandardization,
    "ctkd": CTKD,
    "sckd": SCKD,
}


def get_policy(name: str, **kwargs) -> TemperaturePolicy:
    """Builds a policy from its flag name.

    Args:
        name: one of `POLICIES` (e.g. "kd", "ats", "isats", "fgcr").
        **kwargs: the policy's constructor arguments.

    Returns:
        The policy instance.
    """
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(
            f"Unknown policy {name!r}: choose one of {', '.join(sorted(POLICIES))}."
        ) from None
    return cls(**kwargs)


def get_policy_names() -> tuple[str, ...]:
    """The flag names `get_policy` accepts, sorted."""
    return tuple(sorted(POLICIES))
