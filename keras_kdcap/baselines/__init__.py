"""The paper's baselines that are recipes rather than temperature policies.

- `eskd`: distil from an early-stopped teacher checkpoint (`select_checkpoint`).
- `takd`: teacher -> assistant(s) -> student chains of plain KD (`distill_chain`).
- `callbacks`: `PolicyEpochCallback`, deprecated (`Distiller.fit` tells
  epoch-driven policies the epoch itself).

SCKD, DKD, CTKD and logit standardisation are policies: see
`keras_kdcap.policies`.
"""

from keras_kdcap.baselines.callbacks import PolicyEpochCallback
from keras_kdcap.baselines.eskd import list_checkpoints, select_checkpoint
from keras_kdcap.baselines.takd import distill_chain

__all__ = ["PolicyEpochCallback", "distill_chain", "list_checkpoints", "select_checkpoint"]
