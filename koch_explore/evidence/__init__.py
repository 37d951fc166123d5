"""Postulate 1, the evidence: which pixels made the detector grade an eye as it did.

* :mod:`.base`      -- :class:`Evidence`, the :class:`EvidenceMethod` base, the registry, :func:`explain`
* :mod:`.methods`   -- the methods (guided Grad-CAM, the default; the paper's deconvnet; Grad-CAM, ...)
* :mod:`.deconvnet` -- the Zeiler-Fergus activation network, hook-free
* :mod:`.baseline`  -- the healthy population's activation (for ``deconvnet-excess``)
* :mod:`.sanity`    -- do the maps depend on the image, and on what the network learned?
* :mod:`.localisation` -- do they land on the lesions? (Quantus's pointing game, relevance mass and rank, top-k)
* :mod:`.alignment` -- the views that line our methods up with captum's (the cross-check and its timing)
"""

from .base import (
                   DEFAULT_METHOD,
                   METHODS,
                   Evidence,
                   EvidenceMethod,
                   LayerCapture,
                   default_blur_sigma,
                   evidence_maps,
                   explain,
                   get_method,
                   register,
                   used_start,
)
from .baseline import HealthyBaseline
from .deconvnet import ActivationNetwork, DifferentiableEvidence
from .localisation import (
                   LOCALISATION_MEASURES,
                   localisation_scores,
                   localisation_summary,
)
from .methods import (
                   PROJECTION_METHODS,
                   Deconvnet,
                   DeconvnetExcess,
                   GradCam,
                   Gradient,
                   GradientXInput,
                   GuidedBackprop,
                   GuidedGradCam,
                   Occlusion,
                   RandomMap,
                   cam_layer,
                   projection_map,
)
from .sanity import sanity_report

__all__ = ["ActivationNetwork", "DEFAULT_METHOD", "Deconvnet", "DeconvnetExcess", "DifferentiableEvidence", "Evidence",
           "EvidenceMethod", "GradCam", "LOCALISATION_MEASURES", "Gradient", "GradientXInput", "GuidedBackprop", "GuidedGradCam", "HealthyBaseline",
           "LayerCapture", "METHODS", "Occlusion", "PROJECTION_METHODS", "RandomMap", "cam_layer", "default_blur_sigma",
           "evidence_maps", "explain", "get_method", "localisation_scores", "localisation_summary", "projection_map", "register", "sanity_report", "used_start"]
