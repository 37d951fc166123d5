"""The common shape of every evidence method: a small class around a model (and, where it needs one,
a layer), one call that returns the maps, and one registry by name.

    method = GuidedGradCam(detector, layer="conv8")
    ev = method(images)                 # Evidence: maps (B, H, W) >= 0 at the input's size
    ev = explain(detector, images, "deconvnet", start="dense2")   # the same, by name

A method that needs a layer's activation reads it through a forward hook that lives only for the
call (:class:`LayerCapture`): nothing is left on the model afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn

from ..core.images import as_image_batch, model_device

DEFAULT_METHOD = "guided-gradcam"
"""The method that passes every sanity line (see docs/findings/evidence.md)."""

METHODS: dict[str, type["EvidenceMethod"]] = {}
"""name -> :class:`EvidenceMethod` subclass, in the order they were registered."""


@dataclass
class Evidence:
    """Maps of one batch: ``maps`` (B, H, W) float32 >= 0, the method, the layer it started from,
    and the deconvnet :class:`~koch_explore.evidence.deconvnet.Projection` when there is one."""

    maps: np.ndarray
    method: str
    start: str | None = None
    projection: Any = None

    def __len__(self) -> int:
        return len(self.maps)


def default_blur_sigma(image_size: int | tuple[int, int]) -> float:
    """The isolation's scale: sigma 10 px at 512 (the papers' value), scaled with the image side."""
    side = max(image_size) if isinstance(image_size, tuple) else image_size
    return 10.0 * side / 512.0


def register(cls: type["EvidenceMethod"]) -> type["EvidenceMethod"]:
    """Class decorator: put ``cls`` in :data:`METHODS` under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type["EvidenceMethod"]:
    """The method class registered as ``name`` (a clear error listing the names otherwise)."""
    if name not in METHODS:
        raise ValueError(f"unknown evidence method {name!r}; choose one of {list(METHODS)}")
    return METHODS[name]


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``: a grader's layer name (``conv8``, ``dense2`` of the detector;
    the wrapped model's dotted module path for an adapted one) or any dotted module path of a bare
    ``nn.Module``."""
    if hasattr(model, "layer_names") and callable(getattr(model, "layer", None)):
        return model.layer(name)  # a grader: its own names, and its own error for a wrong one
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = getattr(model, "layer_names", None) or [n for n, _ in model.named_modules() if n]
        raise ValueError(f"unknown layer {name!r}; choose one of {list(names)}") from None


class LayerCapture:
    """``with LayerCapture(model, "conv11") as cap: y = model(x)`` -> ``cap.activation``: the layer's
    output, still in the graph. The forward hook is removed when the block exits, error or not."""

    def __init__(self, model: nn.Module, layer: str):
        self.module = find_layer(model, layer)
        self.activation: torch.Tensor | None = None
        self._handle = None

    def _keep(self, module, inputs, output):
        self.activation = output

    def __enter__(self) -> "LayerCapture":
        self._handle = self.module.register_forward_hook(self._keep)
        return self

    def __exit__(self, *exc) -> bool:
        self._handle.remove()
        self._handle = None
        return False


class EvidenceMethod:
    """One evidence method bound to a model (and a layer where it needs one).

    Subclasses set ``name`` and implement :meth:`attribute` on a batch already on the model's
    device; ``__call__`` turns any image input into that batch, runs it in eval mode (the caller's
    mode restored after) and returns :class:`Evidence` with NaN-free, float32 maps.
    """

    name: ClassVar[str] = ""
    uses_layer: ClassVar[bool] = False
    """Whether ``layer`` means anything to this method (the deconvnet's start, Grad-CAM's conv)."""

    def __init__(self, model: nn.Module | None, layer: str | None = None):
        self.model = model
        self.layer = layer

    @property
    def used_layer(self) -> str | None:
        """The layer the maps really start from (None for methods that take none)."""
        return self.layer if self.uses_layer else None

    def attribute(self, x: torch.Tensor, channels=None, seed: int = 0) -> tuple[np.ndarray, Any]:
        """(maps (B, H, W), projection or None) of the batch ``x`` (B, 3, H, W) in [0, 1]."""
        raise NotImplementedError

    def __call__(self, images, channels=None, seed: int = 0) -> Evidence:
        x = as_image_batch(images).to(model_device(self.model))
        was = self.model.training if self.model is not None else None
        if self.model is not None:
            self.model.eval()
        try:
            maps, projection = self.attribute(x, channels, seed)
        finally:
            if self.model is not None:
                self.model.train(was)
        maps = np.nan_to_num(np.ascontiguousarray(maps, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        return Evidence(maps, self.name, self.used_layer, projection)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer={self.used_layer!r})"


def explain(model, images, method: str = DEFAULT_METHOD, start: str | None = None, channels=None, seed: int = 0) -> Evidence:
    """Evidence maps of ``images`` (one image or a batch, tensor or numpy, in [0, 1] or uint8) by
    ``method`` (a name in :data:`METHODS`).

    ``start`` is the deconvnet's start layer (None: the model's ``default_start``, ``dense2`` of
    the detector) and Grad-CAM's layer when it names a conv (otherwise Grad-CAM takes
    :func:`~koch_explore.evidence.methods.cam_layer`); ``channels`` the deconvnet's
    channel selection (see :meth:`~koch_explore.evidence.deconvnet.Deconvnet.project`); ``seed``
    only affects ``random``.
    """
    return get_method(method)(model, start)(images, channels, seed)


def evidence_maps(model, images, method: str = DEFAULT_METHOD, start: str | None = None, channels=None, seed: int = 0,
                  batch_size: int | None = None) -> np.ndarray:
    """(B, H, W) evidence maps: :func:`explain` without the projection. ``batch_size``: explain that many
    images at a time (the chunk starting at image ``s`` with ``seed + s``), so memory stays bounded."""
    if batch_size is None:
        return explain(model, images, method, start, channels, seed).maps
    return np.concatenate([explain(model, images[s:s + batch_size], method, start, channels, seed + s).maps
                           for s in range(0, len(images), batch_size)])


def used_start(model, method: str, start: str | None) -> str | None:
    """The layer ``method`` really starts from when asked for ``start``."""
    return get_method(method)(model, start).used_layer
