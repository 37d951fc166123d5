"""Postulate 3, the losses that make a synthetic fundus healthy where it should be and diseased where
descriptors were placed.

All perceptual terms read the *frozen detector's own features* (:class:`DetectorFeatures`): ImageNet
VGG weights cannot be shipped here, and the detector's features are what postulate 4 will look at.
A user-supplied VGG-19 can replace it (any module returning a dict of named feature maps).

* **adversarial** — least-squares GAN (Mao et al. 2017): stable with batch 1-4 on a CPU;
* **retinal detail** — L1 between the features of the healthy fundus and of the synthetic one,
  inside the FOV and *outside the placed lesions* (there the synthetic image must differ);
* **pathological** (AAAI) — for each placed lesion, the Gram matrix of the synthetic image's
  feature patch under the lesion's layer mask against the descriptor's Gram matrix (style, not
  layout); the JBHI form (MSE between feature canvases under the masks) is ``pathological_mode="jbhi"``;
* **total variation** inside the FOV;
* **vessel consistency** — soft Dice between the frozen vessel segmenter's map of the synthetic
  fundus and the host's tree (Costa et al. 2017 train segmentation and synthesis jointly for the
  same reason): detector features at 1/4 scale and coarser barely see capillaries, so without it
  the generator blurs the thin vessels it was given;
* **evidence** (optional; the JBHI form of the pathological loss reads the *activation network's*
  input-level projection) — each placed lesion must be at least as evident in the synthetic image
  (mean of the blurred evidence map under its mask, as a fraction of the map's maximum: what
  isolation cuts) as it was in the eye it was isolated from (the descriptor's ``score``);
* **severity** (optional; JBHI weights it 10) — the detector's severity of the synthetic image against
  the host's: equal for a healthy synthesis, and with descriptors placed at least the host's plus the
  descriptors' severity shares ("floor") or exactly that ("match");
* **global style** (the Tub-sGAN baseline) — one Gram loss over the whole FOV against a reference photo;
* **spectrum** — the synthetic fundus's fine-scale power spectrum against its host photo's: every other
  term reads the image through the detector's or the segmenter's strided convolutions, which cannot tell
  some periodic patterns a few pixels apart from photo grain, and the first shipped generator filled the
  fundus with such stripes; this term reads the pixels themselves (:func:`spectrum_term`);
* **shading** — the synthesis and its host photo blurred to what is left at tens of px (overall colour,
  the optic disc's glow, the macula, vignetting), L1: the detector normalises every image by its local
  average before its first conv, so no detector-read term sees these, and a generator fine-tuned without
  this term drifted in colour;
* **profile** — the same for the row-mean and column-mean profiles: a stripe is a whole row brighter or
  darker than its neighbours, whose power the 2-D spectrum spreads over one line of bins among thousands,
  and the mean along the row gathers (:func:`profile_term`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .disc import LUMA

__all__ = [
    "SEVERITY_TARGETS",
    "DetectorFeatures",
    "LossWeights",
    "Placement",
    "VesselConsistency",
    "adversarial_d",
    "adversarial_g",
    "evidence_term",
    "fov_blur",
    "global_style",
    "gram",
    "pathological",
    "retinal_detail",
    "severity_term",
    "shading_term",
    "profile_term",
    "spectrum_term",
    "total_variation",
]


@dataclass
class LossWeights:
    """Weights of the generator's terms (the discriminator has only its adversarial term).

    Scales differ from the papers' (1, 1e5, 10, 1, 100) because the terms are normalised here:
    features are the detector's (unit-variance input), Grams are averaged per position, TV is a mean.
    """

    adversarial: float = 1.0
    """The discriminator's verdict on the synthetic fundus (least squares, as LSGAN)."""
    detail: float = 10.0
    """Retinal detail: L1 of detector features, healthy vs synthetic, outside the lesions."""
    pathological: float = 1.0
    """Gram matrices of feature patches at the placed lesions vs the descriptors'."""
    tv: float = 1.0
    """Total variation of the synthetic fundus inside the FOV (smoothness)."""
    vessel: float = 2.0
    """Soft Dice of the vessel segmenter's map of the synthetic fundus vs the host's tree."""
    evidence: float = 0.0
    """Each placed lesion's share of the evidence map's maximum (the activation network's projection
    of the synthetic image, blurred as isolation blurs it) vs the share it had in its source eye,
    squared shortfall, see :func:`evidence_term`; 0 = off."""
    severity: float = 0.0
    """The detector's severity of the synthetic image vs the host's (plus the placed descriptors'
    severity shares: what each lesion added in its source eye), see :func:`severity_term`; 0 = off."""
    style: float = 0.0
    """Whole-image Gram loss to a reference photo (the Tub-sGAN baseline); 0 in our mode."""
    spectrum: float = 0.0
    """Smoothed log power spectrum of the synthesis's luminance vs its host photo's at periods of 2-16 px,
    L1, see :func:`spectrum_term`; 0 = off (the first shipped generator)."""
    shading: float = 0.0
    """The synthesis blurred to its shading (colour, optic disc, macula, vignetting) vs its host photo's,
    outside the placed lesions, L1, see :func:`shading_term`; 0 = off."""
    profile: float = 0.0
    """Log power spectra of the synthesis's row-mean and column-mean luminance profiles vs its host photo's
    at periods of 2-16 px, L1, see :func:`profile_term`; 0 = off."""


class DetectorFeatures(nn.Module):
    """The frozen detector as a feature extractor: images in [0, 1] -> (severity, {layer: map}).

    Gradients flow to the *images* only; the detector is in eval mode and its parameters never
    change (their ``requires_grad`` is switched off on this module's own reference).
    """

    def __init__(self, detector, layers: Sequence[str]):
        super().__init__()
        self.detector = detector.eval()
        for p in self.detector.parameters():
            p.requires_grad_(False)
        self.layers = tuple(layers)
        unknown = [n for n in self.layers if n not in detector.layer_names]
        if unknown:
            raise ValueError(f"layers {unknown} are not detector layers; choose from {detector.layer_names}")

    def train(self, mode: bool = True):  # the detector stays in eval mode whatever the caller does
        super().train(mode)
        self.detector.eval()
        return self

    def forward(self, images: torch.Tensor, severity: bool = False) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """(severity or None, {layer: features}); without ``severity`` the stack stops at the
        deepest requested layer (the rest of the detector costs time and gives nothing here)."""
        # The shortcut walks the o_O stack's layer dict; any other model runs its own forward pass.
        if severity or not isinstance(getattr(self.detector, "layers", None), nn.ModuleDict) or any(
                n.startswith("dense") or n in ("rmspool", "out") for n in self.layers):
            sev, acts = self.detector.forward_features(images, keep=set(self.layers))
            return (sev if severity else None), acts
        order = self.detector.layer_names
        last = max(order.index(n) for n in self.layers)
        acts, h = {}, self.detector.norm(images)
        if "norm" in self.layers:
            acts["norm"] = h
        for name in order[1 : last + 1]:
            h = self.detector.layers[name](h)
            if name in self.layers:
                acts[name] = h
        return None, acts


class VesselConsistency(nn.Module):
    """1 - soft Dice between the frozen vessel segmenter's probability map of an image and a tree.

    The segmenter works at its own scale (FOV diameter ``cfg.fov_diameter``): images are enlarged to
    it and one random ``crop`` x ``crop`` window per batch is scored (a whole 540 px pass would
    triple the step time); a ``margin`` at the window's edge, where the U-Net sees zero padding, is
    left out of the score.
    """

    def __init__(self, segmenter, crop: int = 256, margin: int = 16):
        super().__init__()
        self.segmenter = segmenter.eval()
        for p in self.segmenter.parameters():
            p.requires_grad_(False)
        self.crop, self.margin = crop, margin

    def train(self, mode: bool = True):
        super().train(mode)
        self.segmenter.eval()
        return self

    def forward(self, images: torch.Tensor, tree: torch.Tensor, fov: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        h, w = images.shape[-2:]
        diameter = 2 * torch.sqrt(fov.float().sum(dim=(1, 2, 3)).mean() / torch.pi).item()
        scale = self.segmenter.cfg.fov_diameter / max(diameter, 1.0)
        size = (max(self.crop, round(h * scale)), max(self.crop, round(w * scale)))
        up = lambda t, mode: F.interpolate(t.float(), size=size, mode=mode, **({} if mode == "nearest" else {"align_corners": False}))  # noqa: E731
        x, t, m = up(images, "bilinear"), up(tree, "bilinear"), up(fov, "nearest")
        y0 = int(torch.randint(0, size[0] - self.crop + 1, (1,), generator=generator))
        x0 = int(torch.randint(0, size[1] - self.crop + 1, (1,), generator=generator))
        win = lambda a: a[..., y0 : y0 + self.crop, x0 : x0 + self.crop]  # noqa: E731
        x, t, m = win(x), win(t), win(m)
        prob = torch.sigmoid(self.segmenter(x * m, m).float())
        keep = torch.zeros_like(m)
        keep[..., self.margin : -self.margin, self.margin : -self.margin] = 1
        keep = keep * m
        inter = (prob * t * keep).sum(dim=(1, 2, 3))
        denom = (prob * keep).sum(dim=(1, 2, 3)) + (t * keep).sum(dim=(1, 2, 3))
        has = (t * keep).sum(dim=(1, 2, 3)) > 0
        if not bool(has.any()):
            return images.new_zeros(())
        return (1 - (2 * inter + 1) / (denom + 1))[has].mean()


def adversarial_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake**2).mean()


def adversarial_g(fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((fake - 1) ** 2).mean()


def _resize_mask(mask: torch.Tensor, hw) -> torch.Tensor:
    return F.interpolate(mask.float(), size=tuple(hw), mode="area")


def retinal_detail(fake: dict[str, torch.Tensor], real: dict[str, torch.Tensor], fov: torch.Tensor,
                   lesions: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over layers of the L1 distance of the features, weighted by FOV x (not lesion)."""
    keep = fov if lesions is None else fov * (1 - lesions)
    total = fov.new_zeros(())
    for name, f in fake.items():
        w = _resize_mask(keep, f.shape[-2:])
        diff = (f - real[name].detach()).abs().mean(dim=1, keepdim=True)
        total = total + (diff * w).sum() / w.sum().clamp_min(1.0)
    return total / max(1, len(fake))


def gram(patch: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """C x C Gram matrix of the feature vectors of ``patch`` (C, h, w) under ``mask`` (h, w), divided
    by their number — the same normalisation as the descriptors' stored Grams."""
    f = patch[:, mask]
    return f @ f.T / max(1, f.shape[1])


@dataclass
class Placement:
    """One placed descriptor, as the losses need it: the image index in the batch, and per layer
    the layer box (x0, y0, x1, y1), the layer mask (bool tensor) and the target Gram / feature patch."""

    index: int
    boxes: dict[str, tuple[int, int, int, int]]
    masks: dict[str, torch.Tensor]
    grams: dict[str, torch.Tensor]
    features: dict[str, torch.Tensor]
    bbox: tuple[int, int, int, int] | None = None
    """Image-level box (x0, y0, x1, y1) of the placed lesion (for the evidence term)."""
    mask: torch.Tensor | None = None
    """Image-level mask under ``bbox`` (bool (y1-y0, x1-x0))."""
    score: float = float("nan")
    """The descriptor's normalised evidence in its source eye (its ``score``)."""


def pathological(fake: dict[str, torch.Tensor], placements: Sequence[Placement], mode: str = "gram") -> torch.Tensor:
    """Mean over placed lesions and layers: ``"gram"`` (AAAI) MSE of Gram matrices normalised by the
    target's scale; ``"jbhi"`` MSE of the feature patches under the mask."""
    if mode not in ("gram", "jbhi"):
        raise ValueError(f"pathological mode {mode!r}: 'gram' or 'jbhi'")
    terms = []
    for p in placements:
        for name, (x0, y0, x1, y1) in p.boxes.items():
            if name not in fake:
                continue
            m = p.masks[name]
            if not bool(m.any()):
                continue
            patch = fake[name][p.index, :, y0:y1, x0:x1]
            if mode == "gram":
                target = p.grams[name]
                g = gram(patch, m)
                terms.append(((g - target) ** 2).mean() / (target.pow(2).mean() + 1e-6))
            else:
                target = p.features[name]
                terms.append(((patch[:, m] - target[:, m]) ** 2).mean())
    if not terms:
        return next(iter(fake.values())).new_zeros(())
    return torch.stack(terms).mean()


def fov_blur(maps: torch.Tensor, fov: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (B, H, W) maps normalised by the blurred FOV, zero outside it — the torch
    twin of :func:`koch_explore.culture.segment`'s cv2 blur (same 4-sigma radius and border, so
    both agree to float precision; nothing bleeds in from the black frame)."""
    from ..core.geometry import gaussian_blur

    m = fov.to(maps.dtype).reshape(maps.shape[0], 1, *maps.shape[-2:])
    blur = lambda a: gaussian_blur(a, sigma, truncate=4.0, border="reflect")  # noqa: E731
    return (blur(maps[:, None] * m) / blur(m).clamp_min(1e-6) * m)[:, 0]


def evidence_term(maps: torch.Tensor, fov: torch.Tensor, placements: Sequence[Placement], sigma: float) -> torch.Tensor:
    """Mean squared shortfall of each placed lesion's evidence from its source's.

    ``maps`` (B, H, W): differentiable evidence of the synthetic images (see
    :class:`koch_explore.evidence.DifferentiableEvidence`). Each map is blurred within the FOV
    (``sigma``: isolation's blur) and divided by its maximum, the scale isolation cuts at; a placed
    lesion scores the mean of that under its mask and is asked for at least its descriptor's
    ``score`` (what it scored where it was found, >= the cut it passed)."""
    blurred = fov_blur(maps, fov, sigma)
    peak = blurred.flatten(1).amax(dim=1).clamp_min(1e-12)
    terms = []
    for p in placements:
        if p.bbox is None or p.mask is None or not bool(p.mask.any()) or p.score != p.score:
            continue
        x0, y0, x1, y1 = p.bbox
        share = blurred[p.index, y0:y1, x0:x1][p.mask].mean() / peak[p.index]
        terms.append((p.score - share).clamp_min(0.0) ** 2)
    if not terms:
        return maps.new_zeros(())
    return torch.stack(terms).mean()


SEVERITY_TARGETS = ("floor", "match")


def severity_term(fake: torch.Tensor, host: torch.Tensor, added: torch.Tensor, target: str = "floor") -> torch.Tensor:
    """Mean squared shortfall of the synthetic images' severities ``fake`` (B,) from ``host + added``.
    Where ``added`` is 0 (nothing placed) any difference counts; with ``target="floor"`` an
    inoculated image is penalised only below its target, so lesions may raise the severity more than
    their shares (an additive estimate from their source eyes) say."""
    if target not in SEVERITY_TARGETS:
        raise ValueError(f"severity target {target!r}: one of {SEVERITY_TARGETS}")
    diff = fake - (host + added)
    if target == "floor":
        diff = torch.where(added > 0, diff.clamp_max(0.0), diff)
    return (diff**2).mean()


def total_variation(img: torch.Tensor, fov: torch.Tensor) -> torch.Tensor:
    dx = (img[..., :, 1:] - img[..., :, :-1]).abs() * fov[..., :, 1:] * fov[..., :, :-1]
    dy = (img[..., 1:, :] - img[..., :-1, :]).abs() * fov[..., 1:, :] * fov[..., :-1, :]
    return (dx.sum() + dy.sum()) / fov.sum().clamp_min(1.0) / img.shape[1]


def global_style(fake: dict[str, torch.Tensor], reference_grams: dict[str, torch.Tensor], fov: torch.Tensor) -> torch.Tensor:
    """Tub-sGAN: Gram matrices of the whole FOV's features vs the reference photo's, per layer."""
    terms = []
    for name, f in fake.items():
        m = _resize_mask(fov, f.shape[-2:])[:, 0] > 0.5
        for i in range(f.shape[0]):
            target = reference_grams[name]
            terms.append(((gram(f[i], m[i]) - target) ** 2).mean() / (target.pow(2).mean() + 1e-6))
    return torch.stack(terms).mean()


def _luminance(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luminance of RGB ``images`` (B, 3, H, W), in float32."""
    return (images.float() * images.new_tensor(LUMA, dtype=torch.float32).view(1, 3, 1, 1)).sum(1, keepdim=True)


def _log_spectrum(images: torch.Tensor, fov: torch.Tensor, pool: int) -> torch.Tensor:
    """(B, h, w) log of the 2-D power spectrum of the luminance inside the FOV (its FOV mean removed),
    averaged over ``pool`` x ``pool`` frequency bins (one bin's power is as noisy as a single draw)."""
    lum = _luminance(images)
    m = fov.float()
    mean = (lum * m).sum(dim=(2, 3), keepdim=True) / m.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    spec = torch.fft.rfft2(((lum - mean) * m)[:, 0], norm="ortho")
    power = spec.real**2 + spec.imag**2
    power = torch.fft.fftshift(power, dim=-2)  # vertical frequencies centred, so pooling never wraps them
    return torch.log(F.avg_pool2d(power[:, None], pool, pool)[:, 0] + 1e-6)


def spectrum_term(fake: torch.Tensor, real: torch.Tensor, fov: torch.Tensor, periods: tuple[float, float] = (2.0, 16.0),
                  pool: int = 4) -> torch.Tensor:
    """Mean L1 between the smoothed log power spectra (:func:`_log_spectrum`) of ``fake`` and ``real``
    (B, 3, S, S) within ``fov``, over the frequencies whose period lies in ``periods`` px: stripes and
    grids a few px apart show as excess power there, however the detector's features see them."""
    lf, lr = _log_spectrum(fake, fov, pool), _log_spectrum(real, fov, pool).detach()
    h, w = fake.shape[-2:]
    fy = torch.fft.fftshift(torch.fft.fftfreq(h, device=fake.device))
    fx = torch.fft.rfftfreq(w, device=fake.device)
    fy = F.avg_pool1d(fy.abs()[None, None], pool, pool)[0, 0]
    fx = F.avg_pool1d(fx[None, None], pool, pool)[0, 0] if len(fx) >= pool else fx
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, : lf.shape[-1]] ** 2)
    band = (radius >= 1 / periods[1]) & (radius <= 1 / periods[0])
    return (lf - lr).abs()[:, band].mean()


def _log_profile_spectrum(images: torch.Tensor, fov: torch.Tensor, dim: int, pool: int, min_run: float = 0.25) -> torch.Tensor:
    """(B, f) log power spectrum of the luminance's mean along ``dim`` inside the FOV (dim -1: one value
    per row), over the rows (columns) the FOV spans for at least ``min_run`` of its widest, detrended by a
    9 px moving average (the fundus's own shading), Hann-windowed, averaged over ``pool`` bins."""
    lum = _luminance(images)[:, 0]
    m = fov.float()[:, 0]
    n = m.sum(dim)
    keep = (n >= min_run * n.amax(-1, keepdim=True)).float()
    profile = (lum * m).sum(dim) / n.clamp_min(1.0)
    smooth = F.avg_pool1d(F.pad(profile[:, None], (4, 4), mode="replicate"), 9, 1)[:, 0]
    detail = (profile - smooth) * keep * torch.hann_window(profile.shape[-1], periodic=False, device=images.device)
    spec = torch.fft.rfft(detail, norm="ortho")
    power = spec.real**2 + spec.imag**2
    return torch.log(F.avg_pool1d(power[:, None], pool, pool)[:, 0] + 1e-9)


def profile_term(fake: torch.Tensor, real: torch.Tensor, fov: torch.Tensor, periods: tuple[float, float] = (2.0, 16.0),
                 pool: int = 2) -> torch.Tensor:
    """Mean L1 between the log power spectra (:func:`_log_profile_spectrum`) of the row-mean and the
    column-mean luminance profiles of ``fake`` and ``real`` (B, 3, S, S) at periods in ``periods`` px: horizontal
    and vertical stripes, which the 2-D :func:`spectrum_term` dilutes among all orientations."""
    freq = F.avg_pool1d(torch.fft.rfftfreq(fake.shape[-1], device=fake.device)[None, None], pool, pool)[0, 0]
    band = (freq >= 1 / periods[1]) & (freq <= 1 / periods[0])
    terms = []
    for dim in (-1, -2):
        lf, lr = _log_profile_spectrum(fake, fov, dim, pool), _log_profile_spectrum(real, fov, dim, pool).detach()
        terms.append((lf - lr).abs()[:, band[: lf.shape[-1]]].mean())
    return torch.stack(terms).mean()


SHADING_SIGMA = 4.0
"""Blur (px at 256 px) that leaves the shading: vessels and grain average out, the disc (radius ~17 px) stays."""


def shading_term(fake: torch.Tensor, real: torch.Tensor, fov: torch.Tensor, lesions: torch.Tensor | None = None,
                 sigma: float = SHADING_SIGMA) -> torch.Tensor:
    """Mean L1 between ``fake`` and ``real`` (B, 3, S, S), each blurred within the FOV (:func:`fov_blur`, sigma
    ``sigma`` x S / 256 px), over the FOV outside ``lesions`` (B, 1, S, S) grown by the blur's reach (there
    the synthesis must differ from the healthy photo)."""
    b, c, h, w = fake.shape
    s = sigma * h / 256
    fov_rep = fov.repeat_interleave(c, dim=0)
    blurred_fake = fov_blur(fake.reshape(b * c, h, w), fov_rep, s).reshape(b, c, h, w)
    blurred_real = fov_blur(real.detach().reshape(b * c, h, w), fov_rep, s).reshape(b, c, h, w)
    keep = fov.float()
    if lesions is not None:
        reach = 2 * int(math.ceil(4 * s)) + 1  # fov_blur truncates at 4 sigma
        keep = keep * (1 - F.max_pool2d(lesions.float(), reach, 1, reach // 2))
    return ((blurred_fake - blurred_real).abs().mean(1, keepdim=True) * keep).sum() / keep.sum().clamp_min(1.0)
