"""The evidence methods: which pixels of a fundus made the detector grade it as it did.

Each is a small class around a model (:class:`~koch_explore.evidence.base.EvidenceMethod`), registered
by the name below (the ``--method`` of ``koch-explore isolate``); each returns one non-negative map per
image at the input's size. The thresholding in :mod:`koch_explore.culture` is the same whatever
produced the map.

=====================  ==============================================================================
``deconvnet``          the paper's: Zeiler–Fergus projection of the ``start`` layer's activation
``deconvnet-excess``   the same walk started from the activation *in excess of the healthy
                       population* (``relu(a - mean over grade-0 eyes)``, per channel and position):
                       what fires here that does not fire in healthy eyes (:class:`HealthyBaseline`)
``guided-backprop``    gradient of the severity, rectified at every leaky ReLU on both passes
``gradient-x-input``   |d severity / d n  *  n| with n the normalised image conv1 sees (the raw
                       RGB would weight every pixel by its brightness)
``gradcam``            Grad-CAM at a conv layer (``start`` when it names one, else :func:`cam_layer`)
``guided-gradcam``     sqrt(|guided backprop| x Grad-CAM) (Selvaraju et al. 2017 multiply the two):
                       guided backprop's fine detail, kept where the top of the network says the
                       grade comes from (the default)
``occlusion``          severity drop when a patch is replaced by its blurred surroundings
``gradient``           |d severity / d input| (baseline)
``random``             blurred noise at the isolation's scale (the floor any method must beat)
=====================  ==============================================================================

Why several: deconvnet-style maps mostly reconstruct image structure and the network's fixed
spatial weighting rather than class evidence (Adebayo et al. 2018, Nie et al. 2018); the figures
of ``koch-explore isolate sanity`` say which method's maps depend on the image and on what the
network learned, and the default is chosen by them (see the README): ``guided-gradcam`` is the only
one that localises lesions (IDRiD pixel AUC >= 0.8) *and* changes when the top of the network is
re-initialised. The paper's ``deconvnet`` stays one ``--method`` away.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..core.geometry import masked_fill_blur
from .base import EvidenceMethod, LayerCapture, default_blur_sigma, register
from .baseline import HealthyBaseline
from .deconvnet import (
    ActivationNetwork,
    guided_gradient,
    rectified_gradient,
    select_channels,
    walkable,
)

PROJECTION_METHODS = ("deconvnet", "deconvnet-excess")
"""Methods that project from ``start`` (a layer above the convs, ``dense2`` by default)."""

OCCLUSION_PATCH = 1 / 10
"""Occlusion patch side as a fraction of the image side (24 px at 256); stride is half of it."""


def cam_layer(model, start: str | None = None) -> str:
    """Grad-CAM's layer: ``start`` when it names a conv (or a block of convs), else the grader's own
    ``cam_layer`` (the last conv on a grid of at most 32 px per cell: ``conv11`` of the o_O
    detector, 8x8 cells at 256 px; see :mod:`koch_explore.detect.adapter`). Grad-CAM usually takes
    the last conv, but o_O's last conv sits on a 4x4 grid at 256 px, where one cell spans a
    sixteenth of the image and no single lesion can be pointed at."""
    strides = model.conv_strides()
    if start and start not in model.layer_names:
        model.layer(start)  # the grader's own error naming the layers it has
    if start and start != "norm" and start in model.layer_names and (start in strides or any(n.startswith(start + ".") for n in strides)):
        return start
    return model.cam_layer


@register
class Deconvnet(EvidenceMethod):
    """The paper's: Zeiler-Fergus projection of the ``layer`` activation (default: the grader's
    ``default_start``, ``dense2`` of the o_O detector). The o_O stack is walked hook-free
    (:class:`ActivationNetwork`); any other grader by the same rules through autograd
    (:func:`rectified_gradient`), where its activations are ReLU-like."""

    name = "deconvnet"
    uses_layer = True

    def __init__(self, model, layer: str | None = None):
        super().__init__(model, layer or (model.default_start if model is not None else None))

    def project(self, x, channels=None, signal=None):
        if walkable(self.model):
            with ActivationNetwork(self.model) as net:
                return net.project(x, start=self.layer, channels=channels, signal=signal)
        return rectified_gradient(self.model, x, self.layer, channels, signal=signal)

    def attribute(self, x, channels=None, seed=0):
        p = self.project(x, channels)
        return projection_map(p), p


@register
class DeconvnetExcess(Deconvnet):
    """The deconvnet walk started from the activation *in excess of the healthy population*
    (``relu(a - mean over grade-0 eyes)``, per channel and position; :class:`HealthyBaseline`)."""

    name = "deconvnet-excess"

    def attribute(self, x, channels=None, seed=0):
        start = self.layer
        base = HealthyBaseline.for_detector(self.model, start)
        with torch.no_grad():
            _, acts = self.model.forward_features(x, keep={start})
        if start not in acts:
            raise ValueError(f"unknown start layer {start!r}; choose one of {self.model.layer_names}")
        a = acts[start].float()
        keep = select_channels(a, channels).view(*a.shape[:2], *([1] * (a.dim() - 2)))
        excess = (a - base.mean.to(a)).clamp_min(0) * keep
        p = self.project(x, signal=excess)
        return projection_map(p), p


@register
class GuidedBackprop(EvidenceMethod):
    """Gradient of the severity, rectified at every ReLU on both passes (Springenberg et al. 2015);
    a grader with GELU/SiLU/... activations refuses by name."""

    name = "guided-backprop"

    def attribute(self, x, channels=None, seed=0):
        return guided_gradient(self.model, x).abs().mean(dim=1).float().cpu().numpy(), None


@register
class GradientXInput(EvidenceMethod):
    """|d severity / d n * n| with n the normalised image conv1 sees (the raw RGB would weight every
    pixel by its brightness)."""

    name = "gradient-x-input"

    def attribute(self, x, channels=None, seed=0):
        with torch.enable_grad(), LayerCapture(self.model, "norm") as cap:
            severity = self.model(x.detach().clone().requires_grad_(True))
            n = cap.activation
            (grad,) = torch.autograd.grad(severity.sum(), n)
        return (grad * n).detach().abs().sum(dim=1).float().cpu().numpy(), None


@register
class GradCam(EvidenceMethod):
    """Grad-CAM (Selvaraju et al. 2017) at a conv layer: ``layer`` when it names one, else
    :func:`cam_layer`."""

    name = "gradcam"
    uses_layer = True

    @property
    def used_layer(self) -> str:
        if not hasattr(self.model, "conv_strides"):  # a bare nn.Module: the layer is named by its module path
            if self.layer is None:
                raise ValueError(f"{self.name} needs a layer on a {type(self.model).__name__}: name a conv module")
            return self.layer
        return cam_layer(self.model, self.layer)

    def attribute(self, x, channels=None, seed=0):
        layer = self.used_layer
        with torch.enable_grad(), LayerCapture(self.model, layer) as cap:
            # an input that asks for gradients: a frozen detector (requires_grad off, as the synthesizer's
            # trainer keeps it) would otherwise build no graph to differentiate
            severity = self.model(x.detach().clone().requires_grad_(True))
            a = cap.activation
            (grad,) = torch.autograd.grad(severity.sum(), a)
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = (weights * a.detach()).sum(dim=1, keepdim=True).clamp_min(0)
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return cam[:, 0].float().cpu().numpy(), None


@register
class GuidedGradCam(GradCam):
    """sqrt(|guided backprop| x Grad-CAM): guided backprop's fine detail, kept where the top of the
    network says the grade comes from (the default method)."""

    name = "guided-gradcam"

    def attribute(self, x, channels=None, seed=0):
        guided, _ = GuidedBackprop.attribute(self, x)
        cam, _ = GradCam.attribute(self, x)
        # The geometric mean: the same ranking as the product (AUC, rank correlations), but in the units of
        # its factors, so "a fraction of the map's maximum" cuts it as it cuts a single map.
        return np.sqrt(guided * cam), None


@register
class Occlusion(EvidenceMethod):
    """Severity drop when a patch (:data:`OCCLUSION_PATCH` of the side, stride half of it) is
    replaced by its blurred surroundings."""

    name = "occlusion"
    batch = 64

    def attribute(self, x, channels=None, seed=0):
        model = self.model
        b, _, h, w = x.shape
        p = max(4, int(round(OCCLUSION_PATCH * max(h, w))))
        stride = max(1, p // 2)
        ys = list(range(0, max(1, h - p) + 1, stride))
        xs = list(range(0, max(1, w - p) + 1, stride))
        if ys[-1] + p < h:
            ys.append(h - p)
        if xs[-1] + p < w:
            xs.append(w - p)
        windows = [(y, xx) for y in ys for xx in xs]
        fov = model.norm.fov(x)
        fill = masked_fill_blur(x, fov, p / 2) * fov
        maps = torch.zeros(b, h, w)
        counts = torch.zeros(h, w)
        for y, xx in windows:
            counts[y : y + p, xx : xx + p] += 1
        with torch.no_grad():
            base = model(x).float().cpu()
            for i in range(b):
                drops = []
                for s in range(0, len(windows), self.batch):
                    chunk = windows[s : s + self.batch]
                    xb = x[i : i + 1].repeat(len(chunk), 1, 1, 1)
                    for k, (y, xx) in enumerate(chunk):
                        xb[k, :, y : y + p, xx : xx + p] = fill[i, :, y : y + p, xx : xx + p]
                    drops.append(base[i] - model(xb).float().cpu())
                drops = torch.cat(drops).clamp_min(0)
                for (y, xx), d in zip(windows, drops):
                    maps[i, y : y + p, xx : xx + p] += d
        return (maps / counts.clamp_min(1)).numpy(), None


@register
class Gradient(EvidenceMethod):
    """|d severity / d input| (a baseline)."""

    name = "gradient"

    def attribute(self, x, channels=None, seed=0):
        with torch.enable_grad():
            leaf = x.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.model(leaf).sum(), leaf)
        return grad.abs().mean(dim=1).float().cpu().numpy(), None


@register
class RandomMap(EvidenceMethod):
    """Blurred noise at the isolation's scale (the floor any method must beat; needs no model)."""

    name = "random"

    def attribute(self, x, channels=None, seed=0):
        # Blobs the size of real components, so the random baseline of recall/precision is not an
        # artefact of noise being finer than lesions.
        b, _, h, w = x.shape
        rng = np.random.default_rng(seed)
        sigma = default_blur_sigma((h, w))
        maps = [cv2.GaussianBlur(rng.random((h, w), dtype=np.float32), (0, 0), sigma) for _ in range(b)]
        return np.stack(maps).astype(np.float32), None


def projection_map(projection) -> np.ndarray:
    """|input-level map| of a deconvnet projection averaged over RGB: (B, H, W) float32 (the paper's
    evidence map)."""
    return projection.input.detach().abs().mean(dim=1).float().cpu().numpy()
