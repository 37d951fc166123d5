"""Vessel segmentation: the binary vessel map the synthesizer (GAN) draws a fundus from.

* ``model`` - :class:`VesselConfig` (architecture and input preprocessing, saved with the weights);
  :class:`LocalContrastNorm`, a CLAHE-like normalisation *inside* the model, so training and
  inference see the same input and a GAN loss can pass through it; a compact SA-UNet (Guo et al.,
  ICPR 2020: conv 3x3 -> DropBlock -> BatchNorm -> ReLU, spatial attention at the bottleneck);
  :class:`VesselSegmenter` - ``segment(image, fov)`` -> (probability, binary) in the input's own
  geometry, strict safetensors I/O with the binary threshold stored beside the weights;
  :func:`load_vessels` - shipped or own weights;
* ``evaluate`` - pixel metrics inside the FOV (exact ROC AUC, F1-optimal threshold) and the
  figures of ``koch-explore vessels eval``;
* ``train`` - vessel-biased augmented patches, BCE + Dice inside the FOV, EMA, resumable
  checkpoints; the threshold is fit on held-out *training* images, never on DRIVE test.

Why every fundus is cropped to its field of view (FOV) and rescaled so the FOV diameter is DRIVE's
(540 px): vessel calibre in pixels is what a small convolutional network learns, and cameras differ
in resolution (DRIVE 565x584, CHASE_DB1 999x960, EyePACS up to 4k). At that scale vessels are
roughly DRIVE-sized (exactly so for cameras with the same field angle; CHASE_DB1's 30 degree field
makes them ~1.5x thicker, which the scale augmentation partly covers). Maps go back to the input
geometry.
"""

from .evaluate import (
    PixelScores,
    best_f1_threshold,
    dataset_root,
    evaluate_dataset,
)
from .model import (
    FORMAT,
    FORMAT_VERSION,
    DropBlock2d,
    LocalContrastNorm,
    SpatialAttention,
    UNet,
    VesselConfig,
    VesselSegmenter,
    WorkingGeometry,
    as_rgb,
    blur,
    check_fov,
    fov_from_pixels,
    load_vessels,
    segment_file,
)
from .train import (
    PatchSampler,
    VesselTrainConfig,
    export_best,
    load_training_data,
    split_items,
    vessel_loss,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "DropBlock2d",
    "LocalContrastNorm",
    "PatchSampler",
    "PixelScores",
    "SpatialAttention",
    "UNet",
    "VesselConfig",
    "VesselSegmenter",
    "VesselTrainConfig",
    "WorkingGeometry",
    "as_rgb",
    "best_f1_threshold",
    "blur",
    "check_fov",
    "dataset_root",
    "evaluate_dataset",
    "export_best",
    "fov_from_pixels",
    "load_training_data",
    "load_vessels",
    "segment_file",
    "split_items",
    "vessel_loss",
]
