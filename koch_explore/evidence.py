"""Evidence maps: which pixels of a fundus made the detector grade it as it did.

Every method takes the detector and a batch of images (B, 3, H, W) in [0, 1] and returns one
non-negative map per image at the input's size; :func:`explain` is the single entry point and the
``--method`` of ``koch-explore isolate``. The thresholding in :mod:`koch_explore.descriptors` is
the same whatever produced the map.

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

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_METHOD",
    "Evidence",
    "HealthyBaseline",
    "METHODS",
    "PROJECTION_METHODS",
    "cam_layer",
    "evidence_map",
    "evidence_maps",
    "explain",
    "used_start",
]

METHODS = (
    "deconvnet",
    "deconvnet-excess",
    "guided-backprop",
    "gradient-x-input",
    "gradcam",
    "guided-gradcam",
    "occlusion",
    "gradient",
    "random",
)
DEFAULT_METHOD = "guided-gradcam"


@dataclass
class Evidence:
    """Maps of one batch: ``maps`` (B, H, W) float32 >= 0, the method, its start layer, and the
    deconvnet :class:`~koch_explore.deconvnet.Projection` when there is one."""

    maps: np.ndarray
    method: str
    start: str | None = None
    projection: Any = None


def evidence_map(projection) -> np.ndarray:
    """|input-level map| averaged over RGB: (B, H, W) float32 (the paper's evidence map)."""
    return projection.input.detach().abs().mean(dim=1).float().cpu().numpy()


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


class _Eval:
    """``with _Eval(detector):`` eval mode inside, the caller's mode restored after."""

    def __init__(self, detector):
        self.detector, self.was = detector, detector.training

    def __enter__(self):
        self.detector.eval()
        return self.detector

    def __exit__(self, *exc):
        self.detector.train(self.was)
        return False


def _run_from(detector, h: torch.Tensor, after: str | None = None, keep: str | None = None):
    """Run the detector's layers on ``h`` (the output of layer ``after``; ``None`` = of ``norm``),
    returning (severity, activation of ``keep``)."""
    names = list(detector.layers.keys())
    first = 0 if after in (None, "norm") else names.index(after) + 1
    kept = h if keep == after else None
    for name in names[first:]:
        layer = detector.layers[name]
        if name == "dense1":
            h = h.flatten(1)
        if name == "out":
            h = detector.out_drop(h)
        h = layer(h)
        if name == keep:
            kept = h
    return h.squeeze(1), kept


def _gaussian_fill(x: torch.Tensor, fov: torch.Tensor, sigma: float) -> torch.Tensor:
    """blur(x * fov) / blur(fov): each pixel's surroundings inside the FOV, no black bleeding in."""
    from .detector import gaussian_blur

    return gaussian_blur(x * fov, sigma) / gaussian_blur(fov, sigma).clamp_min(1e-3)


# ---------------------------------------------------------------------------------------------
# Methods: (detector, x, start, channels, seed) -> (maps (B, H, W) numpy, projection or None)
# ---------------------------------------------------------------------------------------------


def _deconvnet(detector, x, start, channels, seed):
    from .deconvnet import ActivationNetwork

    with ActivationNetwork(detector) as net:
        p = net.project(x, start=start, channels=channels)
    return evidence_map(p), p


def _deconvnet_excess(detector, x, start, channels, seed):
    from .deconvnet import ActivationNetwork

    from .deconvnet import select_channels

    base = HealthyBaseline.for_detector(detector, start)
    with _Eval(detector), torch.no_grad():
        _, acts = detector.forward_features(x, keep={start})
    if start not in acts:
        raise ValueError(f"unknown start layer {start!r}; choose one of {detector.layer_names}")
    a = acts[start].float()
    keep = select_channels(a, channels).view(*a.shape[:2], *([1] * (a.dim() - 2)))
    excess = (a - base.mean.to(a)).clamp_min(0) * keep
    with ActivationNetwork(detector) as net:
        p = net.project(x, start=start, signal=excess)
    return evidence_map(p), p


def _gradient(detector, x, start, channels, seed):
    with _Eval(detector), torch.enable_grad():
        leaf = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(detector(leaf).sum(), leaf)
    return grad.abs().mean(dim=1).float().cpu().numpy(), None


def _guided_backprop(detector, x, start, channels, seed):
    from .deconvnet import guided_gradient

    g = guided_gradient(detector, x)
    return g.abs().mean(dim=1).float().cpu().numpy(), None


def _gradient_x_input(detector, x, start, channels, seed):
    with _Eval(detector), torch.enable_grad():
        n = detector.norm(x.detach()).detach().requires_grad_(True)
        sev, _ = _run_from(detector, n)
        (grad,) = torch.autograd.grad(sev.sum(), n)
    return (grad * n).detach().abs().sum(dim=1).float().cpu().numpy(), None


CAM_STRIDE = 32
"""Grad-CAM's default layer is the last conv whose grid is at most this many pixels per cell."""


def cam_layer(detector, start: str | None = None) -> str:
    """Grad-CAM's layer: ``start`` when it names a conv, else the last conv on a grid of at most
    :data:`CAM_STRIDE` px per cell (``conv11`` in both o_O presets: 8x8 cells at 256 px). Grad-CAM
    usually takes the last conv, but o_O's last conv sits on a 4x4 grid at 256 px, where one cell
    spans a sixteenth of the image and no single lesion can be pointed at."""
    from .detector import conv_strides

    strides = conv_strides(detector)
    if start in strides:
        return start
    return [n for n, s in strides.items() if s <= CAM_STRIDE][-1]


PROJECTION_METHODS = ("deconvnet", "deconvnet-excess")
"""Methods that project from ``start`` (a layer above the convs, ``dense2`` by default)."""


def used_start(detector, method: str, start: str | None) -> str | None:
    """The layer ``method`` really starts from for ``start``: the projection's start layer, Grad-CAM's
    conv (:func:`cam_layer`), or None for methods that take none."""
    if method in ("gradcam", "guided-gradcam"):
        return cam_layer(detector, start)
    return start if method in PROJECTION_METHODS else None


def _gradcam(detector, x, start, channels, seed):
    layer = cam_layer(detector, start)
    with _Eval(detector), torch.enable_grad():
        # an input that asks for gradients: a frozen detector (requires_grad off, as the synthesizer's
        # trainer keeps it) would otherwise build no graph to differentiate
        sev, acts = detector.forward_features(x.detach().clone().requires_grad_(True), keep={layer})
        a = acts[layer]
        (grad,) = torch.autograd.grad(sev.sum(), a)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = (weights * a.detach()).sum(dim=1, keepdim=True).clamp_min(0)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return cam[:, 0].float().cpu().numpy(), None


def _guided_gradcam(detector, x, start, channels, seed):
    guided, _ = _guided_backprop(detector, x, start, channels, seed)
    cam, _ = _gradcam(detector, x, start, channels, seed)
    # The geometric mean: the same ranking as the product (AUC, rank correlations), but in the units of
    # its factors, so "a fraction of the map's maximum" cuts it as it cuts a single map.
    return np.sqrt(guided * cam), None


OCCLUSION_PATCH = 1 / 10
"""Occlusion patch side as a fraction of the image side (24 px at 256); stride is half of it."""


def _occlusion(detector, x, start, channels, seed, batch: int = 64):
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
    fov = detector.norm.fov(x)
    fill = _gaussian_fill(x, fov, p / 2) * fov
    maps = torch.zeros(b, h, w)
    counts = torch.zeros(h, w)
    for y, xx in windows:
        counts[y : y + p, xx : xx + p] += 1
    with _Eval(detector), torch.no_grad():
        base = detector(x).float().cpu()
        for i in range(b):
            drops = []
            for s in range(0, len(windows), batch):
                chunk = windows[s : s + batch]
                xb = x[i : i + 1].repeat(len(chunk), 1, 1, 1)
                for k, (y, xx) in enumerate(chunk):
                    xb[k, :, y : y + p, xx : xx + p] = fill[i, :, y : y + p, xx : xx + p]
                drops.append(base[i] - detector(xb).float().cpu())
            drops = torch.cat(drops).clamp_min(0)
            for (y, xx), d in zip(windows, drops):
                maps[i, y : y + p, xx : xx + p] += d
    return (maps / counts.clamp_min(1)).numpy(), None


def _random(detector, x, start, channels, seed):
    # Blurred noise at the isolation's own scale: blobs the size of real components, so the
    # random baseline of recall/precision is not an artefact of noise being finer than lesions.
    from .descriptors import default_blur_sigma

    b, _, h, w = x.shape
    rng = np.random.default_rng(seed)
    sigma = default_blur_sigma((h, w))
    maps = [cv2.GaussianBlur(rng.random((h, w), dtype=np.float32), (0, 0), sigma) for _ in range(b)]
    return np.stack(maps).astype(np.float32), None


_METHODS = {
    "deconvnet": _deconvnet,
    "deconvnet-excess": _deconvnet_excess,
    "guided-backprop": _guided_backprop,
    "gradient-x-input": _gradient_x_input,
    "gradcam": _gradcam,
    "guided-gradcam": _guided_gradcam,
    "occlusion": _occlusion,
    "gradient": _gradient,
    "random": _random,
}
assert tuple(_METHODS) == METHODS


def explain(detector, images, method: str = DEFAULT_METHOD, start: str = "dense2", channels=None, seed: int = 0) -> Evidence:
    """Evidence maps of ``images`` (tensor (B, 3, H, W) in [0, 1], or numpy) by ``method``.

    ``start`` is the deconvnet's start layer (and Grad-CAM's layer when it names a conv);
    ``channels`` the deconvnet's channel selection (see
    :meth:`~koch_explore.deconvnet.Deconvnet.project`); ``seed`` only affects ``random``.
    """
    from .descriptors import _as_image_tensor

    if method not in _METHODS:
        raise ValueError(f"unknown evidence method {method!r}; choose one of {list(METHODS)}")
    x = _as_image_tensor(images).to(_device(detector))
    maps, projection = _METHODS[method](detector, x, start, channels, seed)
    maps = np.nan_to_num(np.ascontiguousarray(maps, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return Evidence(maps, method, used_start(detector, method, start), projection)


def evidence_maps(detector, images, method: str = DEFAULT_METHOD, start: str = "dense2", channels=None, seed: int = 0) -> np.ndarray:
    """(B, H, W) evidence maps: :func:`explain` without the projection."""
    return explain(detector, images, method, start, channels, seed).maps


def _device(detector):
    # The random method needs no detector.
    return next(detector.parameters()).device if detector is not None else "cpu"


# ---------------------------------------------------------------------------------------------
# The healthy population's activation (for deconvnet-excess)
# ---------------------------------------------------------------------------------------------

BASELINE_FORMAT = "koch-explore/healthy-baseline"
BASELINE_VERSION = 1


@dataclass
class HealthyBaseline:
    """Mean activation of one detector layer over healthy (grade-0) eyes, per channel and position.

    Stored beside the detector weights as ``<weights>.healthy-<layer>.safetensors`` with the
    weights' hash, so it cannot be used with other weights; ``koch-explore isolate baseline``
    computes it."""

    layer: str
    mean: torch.Tensor
    n_images: int
    detector_hash: str

    @staticmethod
    def path_for(weights: str | os.PathLike, layer: str) -> Path:
        w = Path(weights)
        return w.with_name(f"{w.stem}.healthy-{layer}.safetensors")

    @classmethod
    @torch.no_grad()
    def compute(cls, detector, images, layer: str, batch_size: int = 32) -> "HealthyBaseline":
        """Mean activation of ``layer`` over ``images`` (uint8 (N, H, W, 3) or float tensors)."""
        from tqdm.auto import tqdm

        from .descriptors import _as_image_tensor

        total, n = None, 0
        with _Eval(detector):
            for s in tqdm(range(0, len(images), batch_size), desc=f"healthy {layer}", leave=False, mininterval=2):
                x = _as_image_tensor(images[s : s + batch_size]).to(_device(detector))
                _, acts = detector.forward_features(x, keep={layer})
                if layer not in acts:
                    raise ValueError(f"unknown layer {layer!r}; choose one of {detector.layer_names}")
                a = acts[layer].float().sum(0).cpu()
                total = a if total is None else total + a
                n += x.shape[0]
        if not n:
            raise ValueError("no healthy images given")
        return cls(layer, total / n, n, detector.weights_hash())

    def save(self, path: str | os.PathLike) -> Path:
        from .weights_io import save_weights

        header = {"format": BASELINE_FORMAT, "format_version": str(BASELINE_VERSION), "layer": self.layer,
                  "config": json.dumps({"layer": self.layer, "shape": list(self.mean.shape)})}
        return save_weights(path, {"mean": self.mean.contiguous()}, header,
                            {"n_images": self.n_images, "detector_hash": self.detector_hash})

    @classmethod
    def load(cls, path: str | os.PathLike, detector=None) -> "HealthyBaseline":
        from .weights_io import WeightsMismatchError, read_weights

        tensors, meta = read_weights(path, BASELINE_FORMAT, BASELINE_VERSION, "healthy baseline")
        base = cls(meta["layer"], tensors["mean"].float(), int(meta["n_images"]), meta["detector_hash"])
        if detector is not None and base.detector_hash != detector.weights_hash():
            raise WeightsMismatchError(f"{path}: this healthy baseline was computed with other detector weights "
                                       f"({base.detector_hash[:12]}, not {detector.weights_hash()[:12]}); "
                                       "recompute it with 'koch-explore isolate baseline'")
        return base

    @classmethod
    def for_detector(cls, detector, layer: str) -> "HealthyBaseline":
        """The baseline stored beside the weights the detector was loaded from (cached on it)."""
        cache = detector.__dict__.setdefault("_healthy_baselines", {})
        if layer in cache:
            return cache[layer]
        src = getattr(detector, "source_path", None)
        if src is None:
            raise FileNotFoundError("deconvnet-excess needs a healthy baseline: load the detector from a file "
                                    "(Detector.load) that has one beside it, or set detector._healthy_baselines[layer]")
        path = cls.path_for(src, layer)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no healthy baseline for layer {layer!r} of {src}; create it with "
                                    f"'koch-explore isolate baseline --weights {src} --start {layer}'")
        cache[layer] = cls.load(path, detector)
        return cache[layer]


def cli_baseline(args) -> int:
    """``koch-explore isolate baseline``: the healthy baseline of ``--start`` for ``--weights``."""
    import sys

    from .descriptors import _load_detector
    from .detector import DEFAULT_WEIGHTS

    data = args.data or "eyepacs"
    count = 400 if args.count == 16 else args.count
    try:
        detector = _load_detector(args.weights)
        size = detector.cfg.input_size
        if data == "phantom":
            from .phantom import generate_phantom

            imgs = []
            seed = 1_000_000  # away from the seeds 'isolate eval --data phantom' scores
            while len(imgs) < count:
                ph = generate_phantom(seed, size=size)
                seed += 1
                if ph.grade == 0:
                    imgs.append((np.clip(ph.image, 0, 1) * 255 + 0.5).astype(np.uint8))
            images = np.stack(imgs)
        elif data == "eyepacs":
            from .detector_train import TrainConfig, load_graded

            train = load_graded(TrainConfig(root=args.root, aptos=False), size, splits=("train",))["train"]
            healthy = np.flatnonzero(train.grades == 0)
            pick = np.random.default_rng(0).choice(healthy, size=min(count, len(healthy)), replace=False)
            images = train.images[np.sort(pick)]
        else:
            raise ValueError(f"--data {data!r}: the healthy population is 'eyepacs' (grade-0 training eyes) or 'phantom'")
        base = HealthyBaseline.compute(detector, images, args.start)
        path = base.save(HealthyBaseline.path_for(args.weights or DEFAULT_WEIGHTS, args.start))
    except (FileNotFoundError, ValueError) as exc:
        print(f"isolate baseline: {exc}", file=sys.stderr)
        return 2
    print(f"isolate baseline: mean {args.start} activation over {base.n_images} healthy {data} eyes -> {path}")
    return 0
