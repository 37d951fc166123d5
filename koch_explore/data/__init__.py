"""Find, check and load fundus data (real datasets under a data root, or the embedded phantom).

Only torch-free helpers are exported here so that ``import koch_explore.data`` stays cheap; the
torch ``Dataset`` classes live in :mod:`koch_explore.data.datasets` and are imported from there.
"""

from .check import DatasetStatus, check_all, check_dataset
from .io import FundusReadError, read_image, read_mask, read_raw, write_image
from .manifests import (
    DatasetManifest,
    ManifestError,
    get_manifest,
    load_manifests,
    manifests_dir,
)
from .preprocess import (
    crop_to_fov,
    estimate_fov,
    pad_to_square,
    prepare_fundus,
    prepare_mask,
    resize,
)
from .roots import ENV_VAR, candidate_roots, dataset_dir, resolve_data_root

__all__ = [
    "ENV_VAR",
    "DatasetManifest",
    "DatasetStatus",
    "FundusReadError",
    "ManifestError",
    "candidate_roots",
    "check_all",
    "check_dataset",
    "crop_to_fov",
    "dataset_dir",
    "estimate_fov",
    "get_manifest",
    "load_manifests",
    "manifests_dir",
    "pad_to_square",
    "prepare_fundus",
    "prepare_mask",
    "read_image",
    "read_mask",
    "read_raw",
    "resize",
    "resolve_data_root",
    "write_image",
]
