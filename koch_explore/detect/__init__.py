"""Postulate 1, the model: the o_O DR detector, how it is trained on image-level grades, how it
predicts, and its model card.

* :mod:`.model`   -- :class:`Detector` (o_O "net B", addressable layers), presets, strict loading
* :mod:`.predict` -- batched severity, 8x test-time augmentation, a split's grading figures
* :mod:`.train`   -- :class:`TrainConfig` and the training loop (DDP under ``torchrun``)
* :mod:`.card`    -- every figure of a model card recomputed from the weights and the data
"""

from .model import (
           GRADE_NAMES,
           PRESETS,
           Detector,
           DetectorConfig,
           conv_strides,
           layer_names,
           load_detector,
)
from .predict import predict_arrays, predict_severity

__all__ = ["GRADE_NAMES", "PRESETS", "Detector", "DetectorConfig", "conv_strides", "layer_names", "load_detector",
           "predict_arrays", "predict_severity"]
