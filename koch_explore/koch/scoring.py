"""The Koch test's scoring, written once for the main run and the transplant control: one inoculated
image scored against its placements (:func:`score_image`), and the images of a run gathered by trial
(:class:`Tally`), from which every figure is computed — for all trials, or for the trials of a host
bootstrap's resample (:func:`host_resamples`: the confidence intervals resample distinct hosts, not
trials, so one photo reused eight times is one observation, not eight).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..core.geometry import Box, box_contains, boxes_overlap
from ..core.stats import percentile_ci, roc_auc

__all__ = ["ImageScore", "Tally", "host_resamples", "percentile_ci", "score_image"]


@dataclass
class ImageScore:
    """One inoculated image re-isolated and scored: per placement, per decoy (a random FOV point away from
    every placement, one per placement), per re-isolated component."""

    count: int
    placed: list
    """The placed descriptors."""
    boxes: list[Box]
    """The re-isolated components' boxes."""
    hits: list[bool]
    """Per placement: its centroid lies in a re-isolated box."""
    on_component: list[bool]
    """Per placement: its centroid lies on a re-isolated component's own pixels."""
    decoys: list[tuple[float, float]]
    decoy_hits: list[bool]
    decoy_on_component: list[bool]
    at_placements: list[float]
    """The blurred, normalised evidence map at each placement's centroid."""
    at_decoys: list[float]
    spurious: list[bool]
    """Per re-isolated box: it overlaps no placement (with the margin's slack)."""


def _decoys(fov: np.ndarray, boxes: Sequence[Box], n: int, margin: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """``n`` random FOV points outside every placed box grown by ``margin``."""
    free = fov.copy()
    for x0, y0, x1, y1 in boxes:
        free[max(0, y0 - margin) : y1 + margin, max(0, x0 - margin) : x1 + margin] = False
    ys, xs = np.nonzero(free)
    if not len(ys):
        return []
    k = rng.integers(0, len(ys), size=n)
    return [(float(xs[i]), float(ys[i])) for i in k]


def values_at(image: np.ndarray, points) -> list[float]:
    """``image`` (H, W) at each (x, y) point, rounded to the nearest pixel."""
    h, w = image.shape
    return [float(image[min(h - 1, max(0, int(round(y)))), min(w - 1, max(0, int(round(x))))]) for x, y in points]


def score_image(seg, placed: list, fov: np.ndarray, margin: int, rng: np.random.Generator) -> ImageScore:
    """Score one image's :class:`~koch_explore.culture.cut.Segmentation` ``seg`` against the descriptors
    ``placed`` in it; the decoys are drawn from ``rng``."""
    boxes = list(seg.boxes)
    cents = [d.centroid for d in placed]
    decoys = _decoys(fov, [d.bbox for d in placed], len(placed), margin, rng)
    in_box = lambda p: any(box_contains(b, p) for b in boxes)  # noqa: E731
    on_mask = seg.mask.astype(np.float32)
    return ImageScore(
        count=len(placed), placed=placed, boxes=boxes,
        hits=[in_box(c) for c in cents], on_component=[v > 0 for v in values_at(on_mask, cents)],
        decoys=decoys, decoy_hits=[in_box(p) for p in decoys],
        decoy_on_component=[v > 0 for v in values_at(on_mask, decoys)],
        at_placements=values_at(seg.blurred, cents), at_decoys=values_at(seg.blurred, decoys),
        spurious=[not any(boxes_overlap(b, d.bbox, margin) for d in placed) for b in boxes],
    )


def host_resamples(hosts: Sequence[str], n_boot: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n_boot`` cluster-bootstrap resamples of trial indices: distinct hosts drawn with replacement, each
    bringing all of its trials. With one trial per host it is the plain bootstrap over trials."""
    names = list(dict.fromkeys(hosts))
    members = {h: [] for h in names}
    for t, h in enumerate(hosts):
        members[h].append(t)
    groups = [np.asarray(members[h], np.int64) for h in names]
    draws = rng.integers(0, len(groups), size=(n_boot, len(groups)))
    return [np.concatenate([groups[g] for g in row]) for row in draws]


@dataclass
class Tally:
    """The scored images of one run (the main one or the transplant control), trial by trial: ``trials[t]``
    maps each count > 0 to that image's :class:`ImageScore`. Every figure takes ``rows``, trial indices
    (repeats allowed, for the bootstrap); None: all trials."""

    trials: list[dict[int, ImageScore]] = field(default_factory=list)

    def add(self, scores: dict[int, ImageScore]) -> None:
        self.trials.append(scores)

    def _images(self, rows=None, count: int | None = None):
        rows = range(len(self.trials)) if rows is None else rows
        for t in rows:
            for n, s in self.trials[t].items():
                if count is None or n == count:
                    yield s

    def counts(self) -> list[int]:
        return sorted({n for tr in self.trials for n in tr})

    def hit_rate(self, rows=None, count: int | None = None) -> float:
        """Share of placed centroids inside a re-isolated box."""
        placed = found = 0
        for s in self._images(rows, count):
            placed, found = placed + len(s.hits), found + sum(s.hits)
        return float(found / max(1, placed))

    def chance_hit_rate(self, rows=None, count: int | None = None) -> float:
        """The same for the decoys: what big boxes contain anyway."""
        n = found = 0
        for s in self._images(rows, count):
            n, found = n + len(s.decoy_hits), found + sum(s.decoy_hits)
        return float(found / max(1, n))

    def hit_minus_chance(self, rows=None) -> float:
        return self.hit_rate(rows) - self.chance_hit_rate(rows)

    def on_component_rate(self, rows=None) -> tuple[float, float]:
        """(placements, decoys): shares lying on a re-isolated component's own pixels."""
        p = pf = d = df = 0
        for s in self._images(rows):
            p, pf, d, df = p + len(s.on_component), pf + sum(s.on_component), d + len(s.decoy_on_component), df + sum(s.decoy_on_component)
        return float(pf / max(1, p)), float(df / max(1, d))

    def placement_auc(self, rows=None, count: int | None = None) -> float:
        """Mann–Whitney AUC of the map at the placements against the decoys, pooled (ties count one half)."""
        pos, neg = [], []
        for s in self._images(rows, count):
            pos += s.at_placements
            neg += s.at_decoys
        if not pos or not neg:
            return float("nan")
        return float(roc_auc(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))

    def spurious(self) -> tuple[int, int]:
        """(components overlapping no placement, components)."""
        flags = [f for s in self._images() for f in s.spurious]
        return sum(flags), len(flags)
