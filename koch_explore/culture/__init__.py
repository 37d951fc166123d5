"""Postulate 2 ("culture"): lesions cut out of the evidence map as reusable *pathological descriptors*.

Read in this order:

* :mod:`.cut`    -- the cut: blur -> normalise -> threshold (a fraction of the peak, or Otsu) -> components
* :mod:`.isolation`    -- each component becomes a :class:`Descriptor` (features, Gram matrices, severity share)
* :mod:`.descriptor` -- one lesion and its geometry: move, rotate, scale (patches copied, not resampled)
* :mod:`.bank`       -- :class:`DescriptorBank`: select, place, count, render to canvases, save atomically
* :mod:`.evaluate`   -- scoring isolation against lesion truth (phantoms, IDRiD)
"""

from .bank import (
           BankFormatError,
           BankMismatchError,
           DescriptorBank,
           RenderedLayout,
           load_bank,
)
from .cut import (
           DEFAULT_RULE,
           DEFAULT_THRESHOLD,
           RULE_THRESHOLDS,
           RULES,
           Segmentation,
           cut_components,
           default_min_area,
           default_threshold,
           parse_threshold,
           segment,
)
from .descriptor import Descriptor
from .evaluate import (
           Lesion,
           PointingResult,
           assign_types,
           evaluate_isolation,
           lesion_instances,
           pointing_game,
)
from .isolation import DEFAULT_MIN_SHARE, default_feature_layers, isolate

__all__ = ["BankFormatError", "BankMismatchError", "DEFAULT_MIN_SHARE", "DEFAULT_RULE", "DEFAULT_THRESHOLD", "RULES", "RULE_THRESHOLDS",
           "default_threshold", "Descriptor", "DescriptorBank",
           "Lesion", "PointingResult", "RenderedLayout", "Segmentation", "assign_types", "cut_components",
           "default_feature_layers", "default_min_area", "evaluate_isolation", "isolate", "lesion_instances", "load_bank",
           "parse_threshold", "pointing_game", "segment"]
