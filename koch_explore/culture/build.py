"""Postulate 2 on images already in memory: explain them, isolate every component and keep the
descriptors in one bank (what ``koch-explore isolate bank`` does for files on disk)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..evidence.base import DEFAULT_METHOD, explain, used_start
from .bank import DescriptorBank
from .cut import DEFAULT_RULE, default_threshold
from .evaluate import assign_types
from .isolation import isolate


def bank_from_images(detector, images, names: Sequence[str] | None = None, method: str | None = None,
                     lesions: Sequence[Mapping[str, np.ndarray]] | None = None, start: str | None = None,
                     threshold: str | float | None = None, batch_size: int = 8, rule: str = DEFAULT_RULE, **info) -> DescriptorBank:
    """A :class:`~.bank.DescriptorBank` cultured from ``images`` ((N, H, W, 3) uint8 or float in
    [0, 1], at the detector's input size): each batch is explained by ``method`` (None: the default
    evidence method) and every kept component becomes a descriptor of the eye ``names[i]``. The bank's
    ``info`` records the method, its layer and the cut (``rule`` and ``threshold``, None: the rule's
    default), plus any keyword given in ``info``.
    ``lesions`` (one lesion type -> mask dict per image, e.g. each phantom's ``lesions``) gives every
    descriptor the type of the true lesion under it."""
    images = np.asarray(images)
    names = [f"image_{i}" for i in range(len(images))] if names is None else [str(n) for n in names]
    if len(names) != len(images) or (lesions is not None and len(lesions) != len(images)):
        raise ValueError(f"{len(images)} images, {len(names)} names" + ("" if lesions is None else f", {len(lesions)} lesion sets"))
    method = method or DEFAULT_METHOD
    threshold = default_threshold(rule) if threshold is None else threshold
    bank = DescriptorBank(detector_hash=detector.weights_hash(), info={
        "method": method, "start": used_start(detector, method, start), "threshold": threshold, "rule": rule, **info})
    for s in range(0, len(images), batch_size):
        x = images[s : s + batch_size]
        found = isolate(explain(detector, x, method, start, seed=s), images=x, detector=detector, threshold=threshold,
                        image_ids=names[s : s + batch_size], rule=rule)
        if lesions is not None:
            found = [assign_types(descs, lesions[s + j]) for j, descs in enumerate(found)]
        bank.extend(found)
    return bank
