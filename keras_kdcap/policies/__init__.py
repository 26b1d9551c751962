"""Temperature policies: one file per distillation method."""

from keras_kdcap.policies.ats import ATS
from keras_kdcap.policies.base import TemperaturePolicy
from keras_kdcap.policies.fgcr import FGCR
from keras_kdcap.policies.fixed import FixedTemperature
from keras_kdcap.policies.isats import ISATS
from keras_kdcap.policies.registry import POLICIES, get_policy, get_policy_names

__all__ = [
    "ATS",
    "FGCR",
    "POLICIES",
    "FixedTemperature",
    "ISATS",
    "TemperaturePolicy",
    "get_policy",
    "get_policy_names",
]
