"""tf.data input pipelines: CIFAR-100 (offline npz or tfds), CUB, Stanford Dogs, Tiny-ImageNet.

TensorFlow is needed only when a pipeline is built (``pip install keras-kdcap[tensorflow]``);
the pipelines feed Keras models on every backend.
"""

from keras_kdcap.data.arrays import (
    ArrayImageDataset,
    cifar100_array_datasets,
    pad_crop_flip_numpy,
)
from keras_kdcap.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    center_crop_resize,
    cifar_augment,
    crop_flip_params,
    element_seed,
    normalize,
    pad_crop_flip,
    random_resized_crop,
    shuffle_seed,
)
from keras_kdcap.data.cifar import (
    CIFAR100_ENV_VAR,
    CIFAR100_MEAN,
    CIFAR100_NUM_CLASSES,
    CIFAR100_STD,
    cifar100_datasets,
    cifar100_datasets_from_arrays,
    has_cifar100_npz,
    load_cifar100_arrays,
)
from keras_kdcap.data.mix import MIX_MODES, MixedBatches, mix_batches
from keras_kdcap.data.pipeline import (
    EpochSync,
    get_epoch_counter,
    set_epoch,
    stratified_indices,
)
from keras_kdcap.data.splits import (
    PIPELINES,
    CifarSplits,
    first_classes,
    resolve_pipeline,
)
from keras_kdcap.data.tfds_sources import (
    OfflineDataError,
    caltech_birds_datasets,
    host_reachable,
    prepare_tfds_builder,
    stanford_dogs_datasets,
    tfds_cifar100_arrays,
    tfds_image_datasets,
)
from keras_kdcap.data.tiny_imagenet import tiny_imagenet_datasets, tiny_imagenet_file_lists

__all__ = [
    "ArrayImageDataset",
    "cifar100_array_datasets",
    "pad_crop_flip_numpy",
    "CifarSplits",
    "PIPELINES",
    "first_classes",
    "resolve_pipeline",
    "CIFAR100_ENV_VAR",
    "CIFAR100_MEAN",
    "CIFAR100_NUM_CLASSES",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MIX_MODES",
    "MixedBatches",
    "mix_batches",
    "EpochSync",
    "OfflineDataError",
    "caltech_birds_datasets",
    "center_crop_resize",
    "cifar100_datasets",
    "cifar100_datasets_from_arrays",
    "cifar_augment",
    "crop_flip_params",
    "element_seed",
    "get_epoch_counter",
    "has_cifar100_npz",
    "host_reachable",
    "load_cifar100_arrays",
    "normalize",
    "pad_crop_flip",
    "prepare_tfds_builder",
    "random_resized_crop",
    "set_epoch",
    "shuffle_seed",
    "stanford_dogs_datasets",
    "stratified_indices",
    "tfds_cifar100_arrays",
    "tfds_image_datasets",
    "tiny_imagenet_datasets",
    "tiny_imagenet_file_lists",
]
