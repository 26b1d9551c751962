"""The paper's dark-knowledge measurements: distinctness, class affinity, geometry.

- `non_target_stats` / `non_target_profile` / `tau_star_stats`: how distinct a
  teacher's non-target probabilities are, per temperature, and the ISATS
  temperature distribution (`distinctness.py`, through `keras_kdcap.ops`).
- `rank_agreement` / `pairwise_agreement`: whether two teachers rank the
  non-target classes alike (Spearman, Kendall tau-b, top-k overlap;
  `affinity.py`, float64 NumPy).
- `feature_geometry`: intra- and inter-class angles of penultimate features
  (`geometry.py`, float64 NumPy).
- `collect_outputs` and `compare_teachers`: run teachers over a dataset and
  build the tidy table (`collect.py`, `compare.py`).
- Plots live in `keras_kdcap.analysis.plots` (needs matplotlib).

Every function accepts numpy arrays or tensors of any Keras backend.
"""

from keras_kdcap.analysis.affinity import (
    average_ranks,
    kendall_rows,
    pairwise_agreement,
    rank_agreement,
    spearman_rows,
    top_k_overlap_rows,
)
from keras_kdcap.analysis.collect import Outputs, collect_outputs
from keras_kdcap.analysis.compare import classifier_kernel, compare_teachers, teacher_rows
from keras_kdcap.analysis.distinctness import (
    non_target_profile,
    non_target_stats,
    per_sample_non_target,
    tau_star_stats,
)
from keras_kdcap.analysis.geometry import angle_degrees, class_means, feature_geometry

__all__ = [
    "Outputs",
    "angle_degrees",
    "average_ranks",
    "class_means",
    "classifier_kernel",
    "collect_outputs",
    "compare_teachers",
    "feature_geometry",
    "kendall_rows",
    "non_target_profile",
    "non_target_stats",
    "pairwise_agreement",
    "per_sample_non_target",
    "rank_agreement",
    "spearman_rows",
    "tau_star_stats",
    "teacher_rows",
    "top_k_overlap_rows",
]
