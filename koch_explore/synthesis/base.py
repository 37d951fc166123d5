"""What every synthesizer is, whatever it draws: a trained generator network, its config, the detector
hash of the descriptors it was trained with, and one safetensors file (fp16 on disk, a format name and
version and the config in the header, loaded strictly); and the two calls every one answers, whatever
its mode (the protocol the Koch test, the widgets and the notebooks use)::

    image = synth.synthesize_host(host, layout, seed=0)   # a host dict {"image", "vessels", "fov", "name"}
    image = synth.inoculate(photo, fov, layout, seed=0)   # a prepared healthy photo (S, S, 3) and its FOV

:class:`~koch_explore.synthesis.synthesizer.LesionSynthesizer` (whole-fundus mode) draws the whole fundus
around the host's vessel tree (for a photo, the tree the shipped vessel segmenter finds in it);
:class:`~koch_explore.synthesis.local.LocalSynthesizer` (local mode) grows the lesions inside the photo
itself. A stand-in (a test's, a lesson's) needs only ``synthesize_host``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import torch
import torch.nn as nn

from ..core.weights import load_model, save_model

__all__ = ["Synthesizer", "photo_host"]


class Synthesizer:
    """A generator network and what it was trained with. Subclasses name their file ``FORMAT`` (and its
    ``FORMAT_VERSION``), the ``CONFIG`` dataclass (with ``to_json``/``from_json``) and the ``NETWORK``
    built from it, and what the files hold (``KIND``, for error messages)."""

    FORMAT: ClassVar[str]
    FORMAT_VERSION: ClassVar[int] = 1
    KIND: ClassVar[str]
    CONFIG: ClassVar[type]
    NETWORK: ClassVar[type[nn.Module]]
    mode: ClassVar[str]
    """"whole" or "local" (:data:`~koch_explore.synthesis.synthesizer.MODES`)."""

    def __init__(self, generator: nn.Module, detector_hash: str | None = None, metadata: dict | None = None):
        self.generator = generator.eval()
        self.cfg = generator.cfg
        self.detector_hash = detector_hash
        self.metadata = dict(metadata or {})
        self._segmenter = None  # the vessel segmenter whole-mode inoculate reads photos with, loaded once

    @property
    def size(self) -> int:
        """The side of the square images it draws (hosts are prepared at it)."""
        return int(self.cfg.size)

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def to(self, device):
        self.generator.to(device)
        return self

    def synthesize_host(self, host: dict, layout=None, seed: int = 0) -> np.ndarray:
        """(S, S, 3) float32 in [0, 1]: ``host`` ({"image", "vessels", "fov", "name"} at :attr:`size`) with the
        placed descriptors of ``layout`` (a placed :class:`~koch_explore.culture.bank.DescriptorBank`, or
        None: the healthy host); ``seed`` draws whatever the synthesizer draws at random."""
        raise NotImplementedError

    def inoculate(self, image: np.ndarray, fov: np.ndarray, layout=None, seed: int = 0) -> np.ndarray:
        """The same for a prepared healthy photo (``prepare_fundus(photo, synth.size)``): its host is the
        photo, its FOV and (for a whole-fundus synthesizer) the vessel tree segmented from it
        (:func:`photo_host`)."""
        whole = self.mode == "whole"
        if whole and self._segmenter is None:
            from ..vessels import load_vessels

            self._segmenter = load_vessels()
        return self.synthesize_host(photo_host(image, fov, "photo", self._segmenter, trees=whole), layout, seed=seed)

    def save(self, path: str | os.PathLike, metadata: dict | None = None) -> Path:
        """fp16 tensors (half the file; the generators draw the same to 8-bit precision) and the header."""
        return save_model(path, self.generator.state_dict(), fmt=self.FORMAT, version=self.FORMAT_VERSION, config=self.cfg,
                          half=True, header={"detector_hash": self.detector_hash or ""},
                          metadata={**self.metadata, **(metadata or {})})

    @classmethod
    def load(cls, path: str | os.PathLike, map_location="cpu", expect=None):
        """Strict: the file must say it holds this kind of weights, of a config (equal to ``expect`` when
        given) that builds exactly its tensors (fp16 on disk, cast to fp32) — a generator of another kind
        or shape fails here, naming the file, not later with a silently different network
        (:func:`~koch_explore.core.weights.load_model`)."""
        gen, meta = load_model(path, fmt=cls.FORMAT, version=cls.FORMAT_VERSION, what=cls.KIND, config_cls=cls.CONFIG,
                               build=cls.NETWORK, expect=expect)
        extra = {k: v for k, v in meta.items() if k not in ("format", "format_version", "config", "detector_hash")}
        return cls(gen.to(map_location), meta.get("detector_hash") or None, extra)


def photo_host(image: np.ndarray, fov: np.ndarray, name: str, segmenter=None, trees: bool = True) -> dict:
    """A host from a prepared photo: {"image", "fov", "name"} and, with ``trees``, "vessels", the tree the
    vessel segmenter (``segmenter``, default the shipped one) finds inside the FOV less its rim. Local mode
    grows lesions in the photo and never reads a tree (``trees`` False)."""
    from ..core.images import as_unit_float

    img = np.ascontiguousarray(as_unit_float(image, name), np.float32)
    fov = np.asarray(fov, bool)
    host = {"image": img, "fov": fov, "name": name}
    if not trees:
        return host
    if segmenter is None:
        from ..vessels import load_vessels

        segmenter = load_vessels()
    _, tree = segmenter.segment(img, fov)
    # the segmenter traces the bright FOV rim of colour-enhanced photos (EyePACS) as a vessel
    tree = tree.astype(bool) & cv2.erode(fov.astype(np.uint8), np.ones((11, 11), np.uint8)).astype(bool)
    return {**host, "vessels": tree.astype(np.float32)}
