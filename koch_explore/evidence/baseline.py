"""The healthy population's mean activation at one detector layer: the reference the
``deconvnet-excess`` method subtracts (what fires here that does not fire in healthy eyes)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.images import as_image_batch, model_device
from ..core.runtime import eval_mode
from ..core.weights import (
    WeightsMismatchError,
    read_weights,
    resolve_weights,
    save_weights,
)

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

        total, n = None, 0
        with eval_mode(detector):
            for s in tqdm(range(0, len(images), batch_size), desc=f"healthy {layer}", leave=False, mininterval=2):
                x = as_image_batch(images[s : s + batch_size]).to(model_device(detector))
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
        header = {"format": BASELINE_FORMAT, "format_version": str(BASELINE_VERSION), "layer": self.layer,
                  "config": json.dumps({"layer": self.layer, "shape": list(self.mean.shape)})}
        return save_weights(path, {"mean": self.mean.contiguous()}, header,
                            {"n_images": self.n_images, "detector_hash": self.detector_hash})

    @classmethod
    def load(cls, path: str | os.PathLike, detector=None) -> "HealthyBaseline":
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
            raise FileNotFoundError("deconvnet-excess needs a healthy baseline: load the model from a file (load_detector, "
                                    "load_model) and build one beside it with 'koch-explore isolate baseline'")
        path = cls.path_for(src, layer)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no healthy baseline for layer {layer!r} of {src}; create it with "
                                    f"'koch-explore isolate baseline --weights {src} --start {layer}'")
        cache[layer] = cls.load(path, detector)
        return cache[layer]


def healthy_images(data: str, size: int, count: int = 400, root=None) -> np.ndarray:
    """``count`` healthy eyes as uint8 (N, S, S, 3): grade-0 EyePACS training eyes (``data`` "eyepacs",
    drawn with seed 0) or grade-0 phantoms (``data`` "phantom", seeds away from those
    ``isolate eval --data phantom`` scores)."""
    if data == "phantom":
        from ..data.phantom import generate_phantom

        imgs = []
        seed = 1_000_000
        while len(imgs) < count:
            ph = generate_phantom(seed, size=size)
            seed += 1
            if ph.grade == 0:
                imgs.append((np.clip(ph.image, 0, 1) * 255 + 0.5).astype(np.uint8))
        return np.stack(imgs)
    if data == "eyepacs":
        from ..data.graded import graded_eyes

        train = graded_eyes("train", size, root=root, aptos=False)
        healthy = np.flatnonzero(train.grades == 0)
        pick = np.random.default_rng(0).choice(healthy, size=min(count, len(healthy)), replace=False)
        return train.images[np.sort(pick)]
    raise ValueError(f"data {data!r}: the healthy population is 'eyepacs' (grade-0 training eyes) or 'phantom'")


def build_healthy_baseline(detector=None, layer: str | None = None, data: str = "eyepacs", count: int = 400, root=None) -> tuple[HealthyBaseline, Path]:
    """Compute the baseline of ``layer`` (default: the model's deconvnet start) for ``detector`` (a
    loaded grader, or detector weights: a shipped name or a file) over :func:`healthy_images` and save
    it beside its weights; returns it and the path written."""
    from ..detect.model import load_detector

    if detector is None or isinstance(detector, (str, os.PathLike)):
        detector = load_detector(resolve_weights("detector", detector))
    path = getattr(detector, "source_path", None)
    if path is None:
        raise ValueError("the healthy baseline is saved beside the model's weights: load the model from a file")
    layer = layer or detector.default_start
    base = HealthyBaseline.compute(detector, healthy_images(data, detector.input_size, count, root), layer)
    return base, base.save(HealthyBaseline.path_for(path, layer))
