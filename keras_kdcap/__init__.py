"""keras-kdcap: knowledge distillation under teacher-student capacity mismatch.

The public API: `Distiller`, the temperature policies (a new one is exported
from `keras_kdcap.policies` and so from here), the losses, `TeacherCache` and
`with_teacher_logits`; `keras_kdcap.ops` holds the backend-agnostic numerics.
`__all__` leaves out the submodules, so `from keras_kdcap import *` never
shadows a `keras` name.
"""

# submodules, not in __all__ (keras has `models` and `ops` too); importing `models`
# registers the zoo's initializer, so saved zoo models load.
from keras_kdcap import models as models
from keras_kdcap import ops as ops
from keras_kdcap.cache import TeacherCache
from keras_kdcap.distiller import Distiller, with_teacher_logits
from keras_kdcap.files import CorruptFileError
from keras_kdcap.losses import RegTLoss, SmoothedCrossEntropy, distillation_loss
from keras_kdcap.policies import *  # noqa: F403 - every policy class, get_policy, ...
from keras_kdcap.policies import __all__ as _policy_names

__version__ = "0.1.0"

__all__ = [
    "CorruptFileError",
    "Distiller",
    "RegTLoss",
    "SmoothedCrossEntropy",
    "TeacherCache",
    "distillation_loss",
    "with_teacher_logits",
    *_policy_names,
]
