"""Scoring isolation against lesion ground truth (``koch-explore isolate eval``).

Two questions, two measures:

* **Do the boxes point at lesions?** — the pointing game (:func:`pointing_game`). A ground-truth
  lesion is *found* when the box of some isolated component contains its centroid (inside the
  box's pixel area). A component *hits* when its box overlaps at least one pixel of some
  ground-truth lesion's mask. Recall = found / lesions; precision = hitting components /
  components — per lesion type (components hitting a lesion *of that type*, over all
  components) and overall (any lesion); F1 from the two. Box overlap rather than centroid-in-box
  for precision, because a blurred evidence blob often covers only part of a large haemorrhage
  or an exudate ring, and it still points at it.
  Box pointing rewards big boxes: a box covering a fraction c of the FOV finds about c of the
  lesions by chance, so the report carries ``box_union_coverage`` (mean fraction of FOV pixels
  inside the union of component boxes) beside recall.
* **One box per lesion?** — per lesion *instance* (:func:`instance_match`): a box matches a lesion
  when the lesion's centroid lies in it or their boxes overlap with IoU >= :data:`INSTANCE_IOU`;
  ``instance_recall`` / ``instance_precision`` per type and ``all``, ``multi_lesion_boxes`` (boxes
  holding more than one lesion's centroid) and ``box_coverage`` (the mean box's share of the FOV).
* **Does the map rank lesion pixels above the rest?** — pixel ROC AUC over the FOV pixels of the
  *unblurred* map (:func:`~koch_explore.core.stats.roc_auc` over the FOV pixels), per type and for the union of types, averaged over the
  images in which the type is present. Threshold-free, so it separates "the map is wrong" from
  "the isolation cut it badly".

Ground truth comes from the lesion masks after the same preparation as the image
(``prepare_fundus`` / ``prepare_mask`` at the detector's input size); each 8-connected component
of a type's mask is one lesion (:func:`lesion_instances`), for IDRiD and phantoms alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator, Mapping, Sequence

import cv2
import numpy as np

from ..core.geometry import Box, as_box, box_contains
from ..core.stats import roc_auc
from ..data.samples import LesionSample
from ..evidence.base import DEFAULT_METHOD, explain, used_start
from .cut import DEFAULT_RULE, default_threshold
from .descriptor import Descriptor
from .isolation import DEFAULT_MIN_SHARE, isolate

__all__ = [
    "INSTANCE_IOU",
    "InstanceResult",
    "Lesion",
    "PointingResult",
    "assign_types",
    "box_iou",
    "evaluate_isolation",
    "instance_match",
    "lesion_instances",
    "pointing_game",
]


@dataclass(frozen=True, eq=False)
class Lesion:
    """One ground-truth lesion: ``mask`` is bbox-sized bool, or None for "the whole box"."""

    type: str
    bbox: Box
    centroid: tuple[float, float]
    area: int = 0
    mask: np.ndarray | None = None


def lesion_instances(lesions: Mapping[str, np.ndarray], types: Sequence[str] | None = None) -> list[Lesion]:
    """One :class:`Lesion` per 8-connected component of each type's mask."""
    out = []
    for t in types or list(lesions):
        m = np.asarray(lesions.get(t, np.zeros((1, 1), bool)), bool)
        n, labels, stats, cents = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
        for k in range(1, n):
            x, y, w, h, area = (int(v) for v in stats[k])
            out.append(Lesion(t, (x, y, x + w, y + h), (float(cents[k, 0]), float(cents[k, 1])), area, labels[y : y + h, x : x + w] == k))
    return out


def _as_lesion(x) -> Lesion:
    if isinstance(x, Lesion):
        return x
    # A phantom instance record, or any mapping with type / bbox / centroid (mask optional).
    return Lesion(str(x["type"]), tuple(int(v) for v in x["bbox"]), tuple(float(v) for v in x["centroid"]), int(x.get("area", 0)), x.get("mask"))


def _hits(box: Box, lesion: Lesion) -> bool:
    lb = lesion.bbox
    ix0, iy0, ix1, iy1 = max(box[0], lb[0]), max(box[1], lb[1]), min(box[2], lb[2]), min(box[3], lb[3])
    if ix0 >= ix1 or iy0 >= iy1:
        return False
    if lesion.mask is None:
        return True
    return bool(lesion.mask[iy0 - lb[1] : iy1 - lb[1], ix0 - lb[0] : ix1 - lb[0]].any())


@dataclass
class PointingResult:
    """Counts of the pointing game; add results of several images with ``+``."""

    lesions: dict[str, int] = field(default_factory=dict)
    """Ground-truth lesions per type (and ``overall``)."""
    found: dict[str, int] = field(default_factory=dict)
    components: int = 0
    hits: dict[str, int] = field(default_factory=dict)
    """Components hitting a lesion of each type (and ``overall``: any lesion)."""

    def __add__(self, other: "PointingResult") -> "PointingResult":
        add = lambda a, b: {k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}}  # noqa: E731
        return PointingResult(add(self.lesions, other.lesions), add(self.found, other.found), self.components + other.components, add(self.hits, other.hits))

    def _keys(self) -> list[str]:
        return sorted(k for k in set(self.lesions) | set(self.hits) if k != "overall") + ["overall"]

    def recall(self) -> dict[str, float | None]:
        return {k: self.found.get(k, 0) / self.lesions[k] if self.lesions.get(k) else None for k in self._keys()}

    def precision(self) -> dict[str, float | None]:
        return {k: self.hits.get(k, 0) / self.components if self.components else None for k in self._keys()}

    def f1(self) -> dict[str, float | None]:
        r, p = self.recall(), self.precision()
        return {k: (2 * p[k] * r[k] / (p[k] + r[k]) if p[k] + r[k] > 0 else 0.0) if p[k] is not None and r[k] is not None else None for k in self._keys()}


INSTANCE_IOU = 0.1
"""A box matches a lesion instance when the lesion's centroid lies in the box, or the box and the
lesion's own box overlap with IoU at least this (a large lesion whose centroid the box misses)."""


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def matches_instance(box: Box, lesion: Lesion) -> bool:
    """Whether ``box`` found ``lesion`` (see :data:`INSTANCE_IOU`)."""
    return box_contains(box, lesion.centroid) or box_iou(box, lesion.bbox) >= INSTANCE_IOU


@dataclass
class InstanceResult:
    """Lesion instances against component boxes, one lesion at a time; add images with ``+``.

    ``instance_recall``: lesions matched by some box / lesions (per type and ``all``);
    ``instance_precision``: boxes matching a lesion of the type / boxes (``all``: any lesion);
    ``multi_lesion_boxes``: boxes holding the centroids of more than one lesion / boxes;
    ``box_coverage``: the mean box area as a share of the FOV's."""

    lesions: dict[str, int] = field(default_factory=dict)
    found: dict[str, int] = field(default_factory=dict)
    boxes: int = 0
    matching: dict[str, int] = field(default_factory=dict)
    multi: int = 0
    box_share_sum: float = 0.0

    def __add__(self, other: "InstanceResult") -> "InstanceResult":
        add = lambda a, b: {k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}}  # noqa: E731
        return InstanceResult(add(self.lesions, other.lesions), add(self.found, other.found), self.boxes + other.boxes,
                              add(self.matching, other.matching), self.multi + other.multi, self.box_share_sum + other.box_share_sum)

    def figures(self, types: Sequence[str]) -> dict[str, Any]:
        keys = [*sorted(types), "all"]
        return {
            "instance_recall": {k: self.found.get(k, 0) / self.lesions[k] if self.lesions.get(k) else None for k in keys},
            "instance_precision": {k: self.matching.get(k, 0) / self.boxes if self.boxes else None for k in keys},
            "multi_lesion_boxes": self.multi / self.boxes if self.boxes else None,
            "box_coverage": self.box_share_sum / self.boxes if self.boxes else None,
        }


def instance_match(boxes: Sequence[Box], lesions: Sequence[Lesion], fov_area: int) -> InstanceResult:
    """:class:`InstanceResult` of one image's component boxes against its lesion instances."""
    res = InstanceResult(boxes=len(boxes), box_share_sum=sum((b[2] - b[0]) * (b[3] - b[1]) for b in boxes) / max(1, fov_area))
    for les in lesions:
        res.lesions[les.type] = res.lesions.get(les.type, 0) + 1
        if any(matches_instance(b, les) for b in boxes):
            res.found[les.type] = res.found.get(les.type, 0) + 1
    res.lesions["all"], res.found["all"] = len(lesions), sum(res.found.values())
    for b in boxes:
        hit = {les.type for les in lesions if matches_instance(b, les)}
        for t in hit | ({"all"} if hit else set()):
            res.matching[t] = res.matching.get(t, 0) + 1
        res.multi += sum(box_contains(b, les.centroid) for les in lesions) > 1
    return res


def pointing_game(descriptors: Iterable, gt_instances: Iterable, types: Sequence[str] | None = None) -> PointingResult:
    """Pointing game of components (descriptors, or (x0, y0, x1, y1) boxes) against lesions
    (:class:`Lesion`, or mappings with ``type``, ``bbox``, ``centroid`` and optionally a
    bbox-sized ``mask``; without one the whole bbox counts as lesion). ``types`` lists the types
    to report even when absent (counted as zero lesions)."""
    boxes = [as_box(d) for d in descriptors]
    gts = [_as_lesion(g) for g in gt_instances]
    keys = list(dict.fromkeys([*(types or []), *(g.type for g in gts)]))
    res = PointingResult({k: 0 for k in keys}, {k: 0 for k in keys}, len(boxes), {k: 0 for k in keys})
    for g in gts:
        res.lesions[g.type] += 1
        if any(box_contains(b, g.centroid) for b in boxes):
            res.found[g.type] += 1
    res.lesions["overall"] = len(gts)
    res.found["overall"] = sum(res.found[k] for k in keys)
    res.hits["overall"] = 0
    for b in boxes:
        hit_types = {g.type for g in gts if _hits(b, g)}
        for t in hit_types:
            res.hits[t] += 1
        res.hits["overall"] += bool(hit_types)
    return res


def assign_types(descriptors: Sequence[Descriptor], lesions: Mapping[str, np.ndarray]) -> list[Descriptor]:
    """Descriptors with ``type`` set to the lesion type covering most of their mask (None when
    no lesion pixel lies under it): how a bank cut from IDRiD gets its EX / HE / ... labels."""
    out = []
    for d in descriptors:
        x0, y0, x1, y1 = d.bbox
        counts = {t: int((np.asarray(m, bool)[y0:y1, x0:x1] & d.mask).sum()) for t, m in lesions.items()}
        best = max(counts, key=counts.get) if counts else None
        out.append(replace(d, type=best if best is not None and counts[best] > 0 else None))
    return out


def _batches(samples: Iterable[LesionSample], n: int) -> Iterator[list[LesionSample]]:
    batch: list[LesionSample] = []
    for s in samples:
        batch.append(s)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def evaluate_isolation(
    detector,
    samples: Iterable[LesionSample],
    types: Sequence[str],
    method: str = DEFAULT_METHOD,
    start: str | None = None,
    channels=None,
    threshold: str | float | None = None,
    blur_sigma: float | None = None,
    min_area: int | None = None,
    batch_size: int = 8,
    min_share: float | None = DEFAULT_MIN_SHARE,
    require_disease: bool = True,
    rule: str = DEFAULT_RULE,
) -> dict[str, Any]:
    """Explain, isolate and score every sample; returns the ``isolate eval --json`` object."""
    import torch

    total = PointingResult()
    instances = InstanceResult()
    aucs: dict[str, list[float]] = {t: [] for t in [*types, "overall"]}
    coverage: list[float] = []
    n_images = 0
    for bi, batch in enumerate(_batches(samples, batch_size)):
        x = torch.from_numpy(np.stack([s.image for s in batch])).permute(0, 3, 1, 2).contiguous()
        fov = np.stack([s.fov for s in batch])
        maps = explain(detector, x, method, start, channels, seed=bi).maps
        filters = min_share is not None or require_disease
        found = isolate(maps, images=x if filters else None, detector=detector if filters else None,
                        fov=fov, threshold=threshold, blur_sigma=blur_sigma, min_area=min_area,
                        image_ids=[s.name for s in batch], measure_share=False,
                        min_share=min_share, require_disease=require_disease, rule=rule)
        for s, ev, f, descs in zip(batch, maps, fov, found):
            lesions = {t: s.lesions.get(t, np.zeros(f.shape, bool)) for t in types}
            truth = lesion_instances(lesions, types)
            total = total + pointing_game(descs, truth, types)
            instances = instances + instance_match([d.bbox for d in descs], truth, int(f.sum()))
            covered = np.zeros(f.shape, bool)
            for d in descs:
                covered[d.bbox[1] : d.bbox[3], d.bbox[0] : d.bbox[2]] = True
            coverage.append(float((covered & f).sum() / max(1, f.sum())))
            for t, m in [*lesions.items(), ("overall", np.logical_or.reduce(list(lesions.values())))]:
                if (m & f).any():
                    a = roc_auc(m[f], ev[f])
                    if math.isfinite(a):
                        aucs[t].append(a)
            n_images += 1
    order = [*sorted(types), "overall"]  # the pointing figures' key order
    mean = {t: (float(np.mean(aucs[t])) if aucs[t] else None) for t in order}
    return {
        "recall": total.recall(),
        "precision": total.precision(),
        "f1": total.f1(),
        "pixel_auc": mean,
        "n_images": n_images,
        "n_components": total.components,
        "n_lesions": dict(total.lesions),
        # Boxes that cover most of the FOV contain most centroids whatever the map: read recall
        # against this chance level (the union of an image's boxes over its FOV, averaged).
        "box_union_coverage": float(np.mean(coverage)) if coverage else None,
        # Per lesion instance and per box (INSTANCE_IOU): box_coverage is the mean box's share of the FOV.
        **instances.figures(types),
        "method": method,
        "start": used_start(detector, method, start),
        "threshold": default_threshold(rule) if threshold is None else threshold,
        "blur_sigma": blur_sigma,
        "min_area": min_area,
        "min_share": min_share,
        "require_disease": require_disease,
        "rule": rule,
    }


def isolation_samples(data: str, input_size: int, count: int = 16, size: int | None = None, seed: int = 0):
    """(samples, lesion types) to score isolation on: ``data`` "phantom" (``count`` phantoms drawn at
    ``size``, exact truth, all five types) or a lesion folder (IDRiD_lesions or the phantom layout)."""
    from ..data.samples import folder_samples, phantom_samples

    if data == "phantom":
        from ..data.phantom import ALL_LESION_TYPES

        if count < 1:
            raise ValueError("--count must be >= 1")
        return phantom_samples(count, size or input_size, input_size, seed), ALL_LESION_TYPES
    from ..data.datasets import LESION_TYPES

    return folder_samples(data, input_size), LESION_TYPES


def isolation_table(report: dict) -> str:
    """The ``isolate eval`` report as a few lines of text."""
    fmt = lambda v: "   -" if v is None else f"{v:.3f}"  # noqa: E731
    method = report["method"]
    lines = [f"isolate eval: {report['n_images']} images, {report['n_components']} components, method {method}"
             + (f" from {report['start']}" if method.startswith("deconvnet") else "") + f", threshold {report['threshold']}",
             f"boxes cover {100 * (report['box_union_coverage'] or 0):.0f}% of the FOV together (recall's chance level); "
             f"a box {100 * (report['box_coverage'] or 0):.1f}% on average; {100 * (report['multi_lesion_boxes'] or 0):.0f}% hold "
             "more than one lesion",
             "type     lesions  recall  precision  f1     pixel_auc"]
    for k in report["recall"]:
        lines.append(f"{k:8s} {report['n_lesions'].get(k, 0):7d}  {fmt(report['recall'][k])}   {fmt(report['precision'][k])}  "
                     f"{fmt(report['f1'][k])}  {fmt(report['pixel_auc'].get(k))}")
    lines.append("per lesion instance (centroid in a box, or box IoU >= 0.1): " + "  ".join(
        f"{k} {fmt(report['instance_recall'].get(k))}/{fmt(report['instance_precision'].get(k))}" for k in report["instance_recall"])
        + "  (recall/precision)")
    return "\n".join(lines)
