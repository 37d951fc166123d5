"""The transplant: real lesions pasted, not drawn. Each placed descriptor's own normalised input patch
(``norm_patch``, what the detector saw of the lesion in its source eye) is written back into a host
image at the place the descriptor was moved to. The Koch test's positive control (if the detector
does not re-find *real* lesions at the placements, the synthesizer is not to blame), and the lesion
two-sample test's reference for what a perfectly drawn lesion scores.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ..core.images import model_device
from ..detect.model import DetectorConfig, FundusNorm

__all__ = ["transplant"]


def transplant(detector, image: np.ndarray, layout) -> np.ndarray:
    """``image`` (H, W, 3) in [0, 1] with each placed descriptor's real lesion pasted at its place.

    Inside each placed mask (feathered by a 1-px Gaussian) the image's own high-pass, as the
    detector's :class:`~koch_explore.detect.model.FundusNorm` computes it, is replaced by the
    descriptor's ``norm_patch`` times the image's per-channel RMS, so the detector's normalised
    input there is what it was in the source eye; the local average (colour, illumination) stays
    the host's. This is the Koch test's positive control. ``detector`` None: the o_O detector's
    normalisation, on the CPU (what local inoculation starts from)."""
    missing = [d.source for d in layout if d.norm_patch is None]
    if missing:
        raise ValueError(f"descriptors from {sorted(set(missing))} carry no norm_patch (isolated without the detector's "
                         "images, or a bank saved before norm patches existed): re-isolate them to transplant")
    img = np.ascontiguousarray(image, np.float32)
    # The lesions' norm_patch live in the o_O detector's normalised space (they were cut with it), so
    # they are pasted back in that space, whatever normalisation the audited model has.
    own = getattr(detector, "norm", None)
    norm = own if isinstance(own, FundusNorm) else FundusNorm(DetectorConfig.norm_sigma)
    dev = model_device(detector)
    with torch.no_grad():
        hp, rms = norm.highpass(torch.from_numpy(img).permute(2, 0, 1)[None].to(dev))
    hp, rms = hp[0].cpu().numpy(), rms[0].cpu().numpy()
    out = img.transpose(2, 0, 1).copy()
    h, w = img.shape[:2]
    pad = 2
    for d in layout:
        x0, y0, x1, y1 = d.bbox
        weight = cv2.GaussianBlur(np.pad(d.mask.astype(np.float32), pad), (0, 0), 1.0)
        lesion = np.pad(d.norm_patch, ((0, 0), (pad, pad), (pad, pad)), mode="edge") * rms
        # the padded window, clipped to the image (placements keep their box inside it)
        wx0, wy0, wx1, wy1 = max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad)
        sl = (slice(wy0 - (y0 - pad), wy1 - (y0 - pad)), slice(wx0 - (x0 - pad), wx1 - (x0 - pad)))
        region = (slice(None), slice(wy0, wy1), slice(wx0, wx1))
        out[region] += weight[sl] * (lesion[(slice(None), *sl)] - hp[region])
    return np.clip(out.transpose(1, 2, 0), 0.0, 1.0)
