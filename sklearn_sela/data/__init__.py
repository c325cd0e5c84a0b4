"""Input data: validation, lazy datasets, augmentation and image folders.

The public names of the package, from its modules:

- :mod:`sklearn_sela.data.base`: :class:`InputInfo`, the description of the
  input an estimator was fitted on;
- :mod:`sklearn_sela.data.inputs`: :func:`as_dataset`, which validates
  arrays, tensors and datasets (in the spirit of
  :func:`sklearn.utils.check_array`) and wraps them in lazy torch datasets;
- :mod:`sklearn_sela.data.streaming`: :class:`SkipUnreadable` and the item by
  item reading of map-style datasets;
- :mod:`sklearn_sela.data.augment`: :class:`RandomGeometric`,
  :class:`RandomColor` and :class:`BatchCompose`, batched random
  augmentations, :class:`AugmentedDataset`, the training dataset of
  ``(augmented sample, index)`` pairs, and :class:`DeviceBatches` with
  :func:`split_batch_transform`, which augment batches on a GPU;
- :mod:`sklearn_sela.data.presets`: :func:`default_augmentation`, the SeLa
  augmentation for each kind of input;
- :mod:`sklearn_sela.data.image_files`: :func:`find_image_files`,
  :func:`check_image_files`, :class:`ImageFiles` and ``IMAGE_EXTENSIONS``,
  for folders of image files.

The package imports nothing else of :mod:`sklearn_sela`.
"""

# Authors: sklearn-sela developers
# License: BSD 3 clause

from .augment import (
    AugmentedDataset,
    BatchCompose,
    DeviceBatches,
    RandomColor,
    RandomGeometric,
    split_batch_transform,
)
from .base import InputInfo
from .image_files import IMAGE_EXTENSIONS, ImageFiles, check_image_files, find_image_files
from .inputs import as_dataset
from .presets import default_augmentation
from .streaming import SkipUnreadable

__all__ = [
    "InputInfo",
    "as_dataset",
    "default_augmentation",
    "AugmentedDataset",
    "SkipUnreadable",
    "RandomGeometric",
    "RandomColor",
    "BatchCompose",
    "DeviceBatches",
    "split_batch_transform",
    "find_image_files",
    "check_image_files",
    "ImageFiles",
    "IMAGE_EXTENSIONS",
]
