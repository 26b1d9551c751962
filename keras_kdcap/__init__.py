"""keras-kdcap: knowledge distillation under teacher-student capacity mismatch.

The public API: `Distiller`, the temperature policies, the losses and the
backend-agnostic numerics in `keras_kdcap.ops`.
"""

from keras_kdcap import (
    models,  # registers the zoo's initializer, so saved zoo models load
    ops,
)
from keras_kdcap.distiller import Distiller
from keras_kdcap.files import CorruptFileError
from keras_kdcap.losses import RegTLoss, SmoothedCrossEntropy, distillation_loss
from keras_kdcap.policies import (
    ATS,
    CTKD,
    DKD,
    FGCR,
    ISATS,
    SCKD,
    FixedTemperature,
    LogitStandardization,
    TemperaturePolicy,
    get_policy,
    get_policy_names,
)

__version__ = "0.1.0"

__all__ = [
    "ATS",
    "CTKD",
    "DKD",
    "SCKD",
    "LogitStandardization",
    "FGCR",
    "ISATS",
    "CorruptFileError",
    "Distiller",
    "FixedTemperature",
    "RegTLoss",
    "SmoothedCrossEntropy",
    "TemperaturePolicy",
    "distillation_loss",
    "get_policy",
    "get_policy_names",
    "models",
    "ops",
]
