"""Postulate 2, isolation: every evidence component becomes a :class:`~.descriptor.Descriptor`,
with the detector's feature patches, their Gram matrices and its share of the severity."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch

from ..core.images import as_image_batch, model_device
from ..detect.model import DetectorConfig, FundusNorm
from ..evidence.base import Evidence
from ..evidence.methods import projection_map
from .cut import DEFAULT_RULE, Segmentation, default_threshold, segment
from .descriptor import Descriptor, crop_patch, layer_box

DEFAULT_MIN_SHARE = 0.01
"""Default floor on a component's severity share (grade units): a component whose removal does not lower the
severity by a hundredth of a grade is not evidence of disease. 0.01, not 0: one component per peak finds the
map's small bumps too, and on development phantoms this floor kept instance precision above 0.9 (0.89 without
it) at a recall cost of 0.01 (docs/findings/evidence.md#default-rule)."""


def default_feature_layers(detector) -> tuple[str, ...]:
    """The grader's own early and mid feature layers (``conv2``, ``conv5`` of the o_O detector, the
    last blocks on the 1/4 and 1/8 grids of an adapted ResNet), found from its strides, so another
    layer plan gets the right ones."""
    return tuple(detector.feature_layers)


def _layers_from_maps(maps: Mapping[str, Any], image_hw: tuple[int, int]) -> tuple[str, ...]:
    """Without a detector: the same choice as :func:`default_feature_layers`, read off the
    shapes of a projection's conv maps."""
    convs = sorted((n for n in maps if n.startswith("conv") and n[4:].isdigit()), key=lambda n: int(n[4:]))
    last = {}
    for n in convs:
        last[round(image_hw[0] / maps[n].shape[-2])] = n
    return tuple(last[r] for r in (2, 8) if r in last)


def isolate(
    evidence,
    images=None,
    detector=None,
    threshold: str | float | None = None,
    blur_sigma: float | None = None,
    min_area: int | None = None,
    fov=None,
    feature_layers: Sequence[str] | None = None,
    activation_layers: Sequence[str] | None = None,
    image_ids: Sequence[str] | None = None,
    measure_share: bool = True,
    min_share: float | None = DEFAULT_MIN_SHARE,
    require_disease: bool = True,
    rule: str = DEFAULT_RULE,
) -> list[list["Descriptor"]]:
    """Cut every evidence component out as a :class:`Descriptor`; one list per image.

    ``evidence``: what :func:`~koch_explore.evidence.explain` returned (an :class:`Evidence`; when it
    carries a deconvnet projection, the projection's ``maps`` give the activation patches), a deconvnet
    ``Projection`` itself, or evidence maps (B, H, W) / (H, W) from any method.
    ``images`` + ``detector`` add the feature patches, their Gram matrices, the normalised input
    patch (``norm_patch``) and the severity share;
    without them descriptors carry geometry and evidence only. ``feature_layers`` defaults to
    :func:`default_feature_layers`; ``activation_layers`` to the same layers (read off the
    projection when there is no detector). ``fov`` (B, H, W) or (H, W) bool defaults to the
    images' bright region (the threshold the detector's own normalisation uses), else everything.

    The severity share of a component is ``severity(image) - severity(image with the component
    replaced by its local background)``: the component (dilated 2 px) is filled with a normalised
    Gaussian average of the FOV pixels around it (sigma = the component's equivalent radius), so
    no lesion colour survives in the fill and no black hole appears. One batched forward pass per
    image covers all its components. Positive = the lesion raises the predicted severity.
    """
    projection = evidence
    if isinstance(evidence, Evidence):
        projection = evidence.projection if evidence.projection is not None else evidence.maps
    is_projection = hasattr(projection, "input") and hasattr(projection, "maps")
    if is_projection:
        ev = projection_map(projection)
    else:
        src = projection
        ev = np.asarray(src.detach().cpu().numpy() if hasattr(src, "detach") else src, dtype=np.float32)
        ev = ev[None] if ev.ndim == 2 else ev
    if ev.ndim != 3:
        raise ValueError(f"evidence maps must be (B, H, W), got shape {ev.shape}")
    b, h, w = ev.shape
    x = None
    if images is not None:
        x = as_image_batch(images)
        if x.shape[0] != b or tuple(x.shape[-2:]) != (h, w):
            raise ValueError(f"images {tuple(x.shape)} do not match the evidence maps {ev.shape}")
    fovs = _fov_batch(fov, x, b, (h, w))
    ids = [str(i) for i in range(b)] if image_ids is None else [str(i) for i in image_ids]
    if len(ids) != b:
        raise ValueError(f"{len(ids)} image ids for {b} images")
    segs = [segment(ev[i], fovs[i], threshold, blur_sigma, min_area, rule) for i in range(b)]
    if detector is None or x is None:
        min_share, require_disease = None, False
    if getattr(detector, "thresholds", None) is None:
        require_disease = False  # a model without grade cuts (not a Detector) has no "grade 0"
    if min_share is not None and math.isnan(min_share):
        min_share = None

    features: dict[str, np.ndarray] = {}
    normed = None
    severity = None
    if detector is not None and x is not None:
        layers = tuple(feature_layers) if feature_layers is not None else default_feature_layers(detector)
        was_training = detector.training
        detector.eval()
        try:
            with torch.no_grad():
                sev, acts = detector.forward_features(x.to(model_device(detector)), keep={*layers, "norm"})
        finally:
            detector.train(was_training)
        missing = [n for n in layers if n not in acts]
        if missing:
            raise ValueError(f"feature layers {missing} are not detector layers; choose from {detector.layer_names}")
        features = {n: acts[n].float().cpu().numpy() for n in layers}
        # norm_patch lives in the o_O detector's normalised space whatever model cultured the bank: the
        # transplant control pastes it back through that normalisation (koch.transplant)
        if not isinstance(getattr(detector, "norm", None), FundusNorm):
            with torch.no_grad():
                acts["norm"] = FundusNorm(DetectorConfig.norm_sigma)(x)
        normed = acts["norm"].float().cpu().numpy() if "norm" in acts else None
        severity = sev.float().cpu().numpy()
        if activation_layers is None:
            activation_layers = layers

    activations: dict[str, np.ndarray] = {}
    if is_projection:
        maps = projection.maps
        if activation_layers is None:
            activation_layers = _layers_from_maps(maps, (h, w))
        missing = [n for n in activation_layers if n not in maps]
        if missing:
            raise ValueError(f"activation layers {missing} are not below the projection's start {projection.start!r}")
        activations = {n: maps[n].detach().float().cpu().numpy() for n in activation_layers}

    layer_sizes = {n: tuple(a.shape[-2:]) for n, a in {**features, **activations}.items()}
    out: list[list[Descriptor]] = []
    for i, seg in enumerate(segs):
        if require_disease and float(severity[i]) < float(detector.thresholds[0]):
            out.append([])
            continue
        shares = (
            _severity_shares(detector, x[i], seg, float(severity[i]))
            if severity is not None and (measure_share or min_share is not None) and seg.boxes
            else [float("nan")] * len(seg.boxes)
        )
        descs = []
        for k, (box, area, cen) in enumerate(zip(seg.boxes, seg.areas, seg.centroids)):
            if min_share is not None and not shares[k] >= min_share:
                continue
            x0, y0, x1, y1 = box
            mask = seg.labels[y0:y1, x0:x1] == k + 1
            feat = {n: crop_patch(a[i], layer_box(box, (h, w), a.shape[-2:])) for n, a in features.items()}
            act = {n: crop_patch(a[i], layer_box(box, (h, w), a.shape[-2:])) for n, a in activations.items()}
            d = Descriptor(
                bbox=box,
                centroid=cen,
                area=area,
                mask=mask,
                evidence=np.ascontiguousarray(ev[i, y0:y1, x0:x1]),
                image_size=(h, w),
                features=feat,
                activations=act,
                layer_sizes=dict(layer_sizes),
                source=ids[i],
                score=float(seg.blurred[y0:y1, x0:x1][mask].mean()),
                peak=float(seg.blurred[y0:y1, x0:x1][mask].max()),
                severity_share=float(shares[k]),
                norm_patch=None if normed is None else np.ascontiguousarray(normed[i, :, y0:y1, x0:x1]),
            )
            descs.append(d.with_grams())
        out.append(descs)
    return out


def _fov_batch(fov, x, b: int, hw: tuple[int, int]) -> np.ndarray:
    if fov is not None:
        f = np.asarray(fov.detach().cpu().numpy() if hasattr(fov, "detach") else fov).astype(bool)
        f = np.broadcast_to(f, (b, *hw)) if f.ndim == 2 else f
        if f.shape != (b, *hw):
            raise ValueError(f"FOV masks {f.shape} do not match the maps {(b, *hw)}")
        return f
    if x is not None:
        # The threshold FundusNorm uses to find the FOV: the detector sees exactly this disc.
        return (x.amax(dim=1) > 0.04).cpu().numpy()
    return np.ones((b, *hw), bool)


def _severity_shares(detector, image, seg: Segmentation, severity: float, chunk: int = 16) -> list[float]:
    img = image.permute(1, 2, 0).cpu().numpy()  # (H, W, 3): cv2 does the background fill
    h, w = seg.labels.shape
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    copies = []
    for k, (box, area) in enumerate(zip(seg.boxes, seg.areas)):
        sigma = max(2.0, math.sqrt(area / math.pi))
        pad = int(math.ceil(3 * sigma)) + 3
        x0, y0, x1, y1 = max(0, box[0] - pad), max(0, box[1] - pad), min(w, box[2] + pad), min(h, box[3] + pad)
        region = cv2.dilate((seg.labels[y0:y1, x0:x1] == k + 1).astype(np.uint8), kernel).astype(bool)
        weight = (~region & seg.fov[y0:y1, x0:x1]).astype(np.float32)
        crop = img[y0:y1, x0:x1]
        num = cv2.GaussianBlur(crop * weight[..., None], (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
        den = cv2.GaussianBlur(weight, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
        out = img.copy()
        out[y0:y1, x0:x1][region] = (num / np.maximum(den, 1e-6)[..., None])[region]
        copies.append(out)
    batch = torch.from_numpy(np.stack(copies)).permute(0, 3, 1, 2).contiguous().to(model_device(detector))
    was_training = detector.training
    detector.eval()
    try:
        with torch.no_grad():
            sev = torch.cat([detector(batch[s : s + chunk]) for s in range(0, len(batch), chunk)])
    finally:
        detector.train(was_training)
    return (severity - sev.float().cpu().numpy()).tolist()


def isolate_files(detector, paths: Sequence, method: str | None = None, start: str | None = None, channels=None,
                  threshold: str | float | None = None, blur_sigma: float | None = None, min_area: int | None = None,
                  min_share: float | None = DEFAULT_MIN_SHARE, require_disease: bool = True, batch_size: int = 8,
                  weights_label: str = "default", rule: str = DEFAULT_RULE, seed_offset: int = 0):
    """Read fundus photos, explain and isolate them in batches: a :class:`~.bank.DescriptorBank` whose
    ``info`` records how it was cultured (method, layer, cut, filters). A bad file raises
    :class:`~koch_explore.data.io.FundusReadError` naming it. ``seed_offset``: the index of
    ``paths[0]`` in a longer list this call is one shard of (the random method's seeds follow it)."""
    from pathlib import Path

    from ..data.io import read_image
    from ..data.preprocess import prepare_fundus
    from ..evidence.base import DEFAULT_METHOD, explain, used_start
    from .bank import DescriptorBank

    method = method or DEFAULT_METHOD
    size = detector.input_size
    threshold = default_threshold(rule) if threshold is None else threshold  # recorded as used
    bank = DescriptorBank(detector_hash=detector.weights_hash(), info={
        "method": method, "start": used_start(detector, method, start), "channels": channels,
        "threshold": threshold, "blur_sigma": blur_sigma, "min_area": min_area, "weights": weights_label,
        "min_share": min_share, "require_disease": require_disease, "rule": rule,
    })
    paths = [Path(p) for p in paths]
    for s in range(0, len(paths), batch_size):
        chunk = paths[s : s + batch_size]
        prepared = [prepare_fundus(read_image(q), size, path=q) for q in chunk]
        x = torch.from_numpy(np.stack([im for im, _ in prepared])).permute(0, 3, 1, 2).contiguous()
        ev = explain(detector, x, method, start, channels, seed=seed_offset + s)  # by photo index: shards agree
        bank.extend(isolate(ev, images=x, detector=detector, threshold=threshold, blur_sigma=blur_sigma,
                            min_area=min_area, fov=np.stack([f for _, f in prepared]), image_ids=[q.stem for q in chunk],
                            min_share=min_share, require_disease=require_disease, rule=rule))
    return bank
