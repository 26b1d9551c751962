"""Temperature policies: one file per distillation method.

A new policy is exported here (import and `__all__`); `keras_kdcap` re-exports
this `__all__`, and its `registry_name` registers it on import
(docs/policies/adding.md).
"""

from keras_kdcap.policies.ats import ATS
from keras_kdcap.policies.base import TemperaturePolicy
from keras_kdcap.policies.ctkd import CTKD
from keras_kdcap.policies.dkd import DKD
from keras_kdcap.policies.fgcr import FGCR
from keras_kdcap.policies.fixed import FixedTemperature
from keras_kdcap.policies.isats import ISATS
from keras_kdcap.policies.logit_standardization import LogitStandardization
from keras_kdcap.policies.registry import (
    POLICIES,
    get_policy,
    get_policy_names,
    register_policy,
)
from keras_kdcap.policies.sckd import SCKD

__all__ = [
    "ATS",
    "CTKD",
    "DKD",
    "FGCR",
    "POLICIES",
    "FixedTemperature",
    "ISATS",
    "LogitStandardization",
    "SCKD",
    "TemperaturePolicy",
    "get_policy",
    "get_policy_names",
    "register_policy",
]
