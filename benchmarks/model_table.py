"""Print the markdown table of the model zoo (params, MACs, feature dim) for docs/models.md.

Usage: ``python benchmarks/model_table.py [--num-classes 100]``. Every number is computed
by building the model on the current Keras backend, so the table stays true to the code.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from keras_kdcap.models import (  # noqa: E402
    FEATURE_DIMS,
    MODEL_NAMES,
    count_flops,
    count_params,
    get_model,
)

# Parameter counts published with the CRD benchmark (Tian et al., ICLR 2020).
PUBLISHED_PARAMS_M = {
    "resnet20": 0.28,
    "resnet56": 0.86,
    "resnet110": 1.74,
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "wrn_16_2": 0.70,
    "wrn_40_2": 2.26,
    "vgg8": 3.96,
    "vgg13": 9.46,
    "mobilenetv2": 0.81,
    "shufflenetv1": 0.95,
    "shufflenetv2": 1.36,
}


def _macs(value: int) -> str:
    """Format a MAC count as ``12.5M`` or ``1.08G``."""
    return f"{value / 1e9:.2f}G" if value >= 1e9 else f"{value / 1e6:.1f}M"


def model_table(num_classes: int = 100) -> str:
    """Build every zoo model and return the markdown table.

    Args:
        num_classes: class count of the classifier (100 for CIFAR-100).

    Returns:
        The table as markdown text (header, separator, one row per model).
    """
    rows = [
        "| model | params | published (CRD) | MACs (32x32) | feature dim D |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in MODEL_NAMES:
        model = get_model(name, num_classes=num_classes)
        params = count_params(model)
        published = PUBLISHED_PARAMS_M.get(name) if num_classes == 100 else None
        published_text = f"{published:.2f}M" if published is not None else "-"
        rows.append(
            f"| `{name}` | {params:,} ({params / 1e6:.2f}M) | {published_text} | "
            f"{_macs(count_flops(model))} | {FEATURE_DIMS[name]} |"
        )
        keras.backend.clear_session()
    return "\n".join(rows)


def main() -> None:
    """Print the table for ``--num-classes`` classes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-classes", type=int, default=100)
    args = parser.parse_args()
    print(model_table(args.num_classes))


if __name__ == "__main__":
    main()
