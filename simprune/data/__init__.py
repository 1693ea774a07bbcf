"""Data: data set loaders (:mod:`.datasets`) and batched view augmentation (:mod:`.augment`)."""

from .augment import (
    EvalTransform,
    MultiCropAugment,
    MultiCropConfig,
    TwoCropAugment,
    TwoCropConfig,
    Views,
    dino_augment,
    moco_v3_augment,
)
from .base import (
    ArrayDataset,
    CorruptImageError,
    DataNotFoundError,
    DataWarning,
    WrongArchiveError,
    default_cache_dir,
    resolve_data_root,
    run_data_root,
)
from .datasets import DATASETS, dataset_names, load_dataset
from .folder import ImageFolderDataset
from .stats import dataset_stats

__all__ = [
    "ArrayDataset",
    "CorruptImageError",
    "DATASETS",
    "DataNotFoundError",
    "DataWarning",
    "EvalTransform",
    "ImageFolderDataset",
    "MultiCropAugment",
    "MultiCropConfig",
    "TwoCropAugment",
    "TwoCropConfig",
    "Views",
    "WrongArchiveError",
    "dataset_names",
    "dataset_stats",
    "default_cache_dir",
    "dino_augment",
    "load_dataset",
    "moco_v3_augment",
    "resolve_data_root",
    "run_data_root",
]
