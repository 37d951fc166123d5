"""Postulate 4: re-isolate what was inoculated — the Koch test as numbers.

The paper showed synthetic fundus photos to five ophthalmologists. Here the detector itself is the
rater: for each trial a healthy host (vessel tree + FOV) is inoculated with 0, 1, 2, 4, 8 and 16
descriptors drawn from the bank — a dose series: the same noise ``z`` for all counts and nested
layouts (the n-lesion layout is the first n placements of the largest one), so from one count to the
next only lesions are *added* — and

* **hit rate** — of the placed lesions, the share whose centroid lies in the box of a component
  re-isolated from the synthetic image (same evidence method and threshold as postulate 1);
* **chance hit rate** — the same question for *decoy* points: random FOV points away from every
  placement. Large boxes contain anything; the hit rate means something only well above this;
* **on-component hit rate** — the same two questions without boxes: does the point lie on a
  re-isolated component's own pixels (an irregular component's box takes in much more);
* **placement AUC** — threshold-free: the blurred, normalised evidence map at the placement
  centroids against the same decoy points (the Mann–Whitney AUC, pooled over trials). It asks
  whether the *map* ranks placed lesions above other places at all, so a low hit rate can be put
  on the map or on the cut: the rule sweeps move hit and chance rates together, this does not move;
* **spurious rate** — of the re-isolated components, the share overlapping no placed lesion
  (``margin`` px of slack), and the components found on the healthy (0 lesion) synthesis;
* **severity vs count** — the detector's severity for 0..16 copies; per trial the Spearman rho
  between count and severity (each host its own control), averaged, with a bootstrap 95% CI over
  trials; the mean curve's rho beside it;
* **vessel Dice** of the healthy synthesis (the shipped vessel segmenter vs the host's tree) and,
  with the hosts' real photos, the Fréchet distance of detector ``dense1`` features;
* per lesion type where the bank's descriptors carry types (phantom and IDRiD banks do);
* a **transplant control** (positive control): the same layouts pasted into the healthy synthesis
  as *real* lesions — each descriptor's ``norm_patch``, the source photo's high-pass exactly as the
  detector saw it, rescaled to the host's contrast — and scored the same way. It separates what
  the synthesizer loses from what the detector and the re-isolation rule cannot do even with the
  real lesions: a synthesizer cannot be asked to beat it by much.

Everything is deterministic for a seed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

import numpy as np
import torch

from ..core.geometry import Box, box_contains, boxes_overlap
from ..core.stats import roc_auc, spearman
from ..culture.cut import DEFAULT_RULE, DEFAULT_THRESHOLD, segment
from ..detect.predict import predict_severity
from ..evidence.base import DEFAULT_METHOD, explain
from ..synthesis.synthesizer import random_layout
from ..synthesis.transplant import transplant
from ..vessels import load_vessels

__all__ = ["COUNTS", "KochConfig", "KochReport", "TrialCase", "dose_layouts", "koch_test", "transplant"]

COUNTS = (0, 1, 2, 4, 8, 16)


@dataclass
class KochConfig:
    """How the Koch test is run (defaults: the paper's counts, postulate 1's isolation)."""

    trials: int = 40
    """Hosts inoculated (cycled when there are fewer hosts than trials)."""
    counts: tuple[int, ...] = COUNTS
    """Lesion copies per trial; hits are scored on every count > 0."""
    method: str | None = None
    """Evidence method used to re-isolate; None: the one the bank was isolated with (its
    ``info["method"]``), else isolation's default."""
    start: str | None = None
    """Where the evidence starts (the deconvnet's start layer, Grad-CAM's conv); None: the bank's own
    (its ``info["start"]``) when the audited model has that layer, else the model's default."""
    threshold: float | str | None = None
    """Isolation threshold (fraction of the map's maximum, or "otsu"); None: the one the bank was
    isolated with (its ``info["threshold"]``), else isolation's default."""
    rule: str | None = None
    """Isolation rule ("global" cut or one component per "peaks", see :data:`~koch_explore.culture.cut.RULES`);
    None: the bank's own (its ``info["rule"]``), else isolation's default."""
    nested: bool = True
    """Dose series: the n-lesion layout is the first n placements of the largest count's layout, so
    a larger count only adds lesions. False: an independent random layout per count (then the
    severity curve also carries the luck of which descriptors and places were drawn)."""
    margin: int = 4
    """Pixels of slack around a placed box when deciding whether a component is spurious."""
    n_boot: int = 1000
    """Bootstrap resamples (over trials) for the confidence intervals."""
    seed: int = 0
    keep_cases: int = 4
    """Trials whose pictures are kept for the report."""
    control: bool = True
    """Also run the transplant control (needs descriptors with ``norm_patch``; skipped, with the
    ``control_*`` fields None, when the bank has none)."""


@dataclass
class TrialCase:
    """One trial's pictures at the largest count <= 8 (what the report draws)."""

    host: str
    vessels: np.ndarray | None
    """The host's tree (None: a local-mode photo given without one)."""
    fov: np.ndarray
    healthy: np.ndarray
    inoculated: np.ndarray
    evidence: np.ndarray
    placed_boxes: list[Box]
    placed_types: list[str]
    found_boxes: list[Box]
    hits: list[bool]
    spurious: list[bool]
    descriptors: list  # the placed descriptors (for the culture panel)
    severities: dict[int, float]


@dataclass
class KochReport:
    n_trials: int
    counts: list[int]
    hit_rate: float
    hit_rate_ci: list[float]
    chance_hit_rate: float
    hit_above_chance: float
    """hit_rate - chance_hit_rate: what the placements add to what big boxes contain anyway."""
    placement_auc: float
    """Threshold-free: AUC of the blurred, normalised map at placement centroids vs the decoys
    (0.5: the map does not tell placed lesions from random places; 1: every placement outranks every decoy)."""
    placement_auc_ci: list[float]
    placement_auc_by_count: dict[str, float]
    """count -> placement AUC of the images with that many lesions: whether the map still points at
    lesions once there are many (the hit rate alone cannot say: boxes grow with the count)."""
    spurious_rate: float
    healthy_components: float
    """Mean number of components re-isolated from the 0-lesion synthesis."""
    hit_rate_by_count: dict[str, float]
    hit_rate_by_type: dict[str, dict[str, float]]
    """type -> {"placed", "found", "rate"}."""
    hit_rate_by_region: dict[str, dict[str, float]]
    """centre / middle / rim of the host's FOV (:data:`REGIONS`) -> {"placed", "found", "rate",
    "chance"}: where on the fundus placed lesions are re-found; "chance" is the decoys' hit rate in
    the same ring (boxes are not equally large everywhere)."""
    hit_rate_by_strength: dict[str, dict]
    """weak / medium / strong (:data:`STRENGTHS`, terciles of the bank's descriptor scores) ->
    {"placed", "found", "rate", "score_range"}: whether lesions that were faint evidence in their
    source eye stay faint once synthesized. Empty when the bank carries no scores."""
    severity_by_count: dict[str, float]
    severity: list[list[float]]
    """trials x counts."""
    spearman_severity_count: float
    spearman_ci: list[float]
    spearman_mean_curve: float
    vessel_dice: float | None
    fd: float | None
    fd_ci: list[float] | None
    config: dict
    mask_hit_rate: float | None = None
    """The hit rate without boxes: a placed centroid counts when it lies on a re-isolated component
    itself (its pixels). A box takes in much more than an irregular component; this does not."""
    mask_chance_hit_rate: float | None = None
    """The same for the decoys: the share of random places that lie on a component."""
    control_hit_rate: float | None = None
    """Transplant control: hit rate of the same layouts pasted as real lesions (see the module doc)."""
    control_hit_rate_ci: list[float] | None = None
    control_chance_hit_rate: float | None = None
    control_placement_auc: float | None = None
    control_hit_rate_by_count: dict[str, float] | None = None
    control_severity_by_count: dict[str, float] | None = None
    components_per_image: list[int] = field(default_factory=list)
    cases: list[TrialCase] = field(default_factory=list, repr=False)

    def to_json(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "cases"}
        return json.loads(json.dumps(d, default=float))

    def cli_json(self, data: str | None = None, hosts: str | None = None, mode: str | None = None) -> dict:
        """The ``koch-test --json`` object: the headline figures first, then the rest (no per-trial arrays)."""
        out = self.to_json()
        keys = ["hit_rate", "spurious_rate", "spearman_severity_count", "spearman_ci", "vessel_dice", "n_trials"]
        return {**{k: out[k] for k in keys}, "data": data, "hosts": hosts, "mode": mode or self.config.get("mode"),
                **{k: v for k, v in out.items() if k not in keys and k not in ("severity", "components_per_image")}}

    def reading(self) -> str:
        """The figures read in one or two plain sentences (what a notebook prints under its figures)."""
        above = self.hit_rate - self.chance_hit_rate
        found = (f"The placed lesions were re-found at {self.hit_rate:.2f} against {self.chance_hit_rate:.2f} for random places "
                 f"({'+' if above >= 0 else ''}{above:.2f}; placement AUC {self.placement_auc:.2f}, where 0.5 is chance)")
        lo, hi = self.spearman_ci
        if lo > 0:
            trend = f"severity rose with the number of lesions (rho {self.spearman_severity_count:.2f}, 95% CI {lo:.2f} to {hi:.2f})"
        elif hi < 0:
            trend = f"severity fell as lesions were added (rho {self.spearman_severity_count:.2f})"
        else:
            trend = f"severity did not follow the number of lesions (rho {self.spearman_severity_count:.2f}, 95% CI {lo:.2f} to {hi:.2f})"
        text = f"{found}; {trend}."
        if self.control_hit_rate is not None:
            text += (f" The real lesions transplanted to the same places were re-found at {self.control_hit_rate:.2f} "
                     f"(chance {self.control_chance_hit_rate:.2f}).")
        return text

    def summary(self, data: str | None = None, hosts: str | None = None, mode: str | None = None) -> str:
        """The figures as a few lines a person reads (what ``koch-explore koch-test`` prints)."""
        where = f" on {data} data" if data else ""
        mode = mode or self.config.get("mode")
        lines = [f"Koch test{where}{f' ({hosts} hosts)' if hosts else ''}, {self.n_trials} trials"
                 f"{f', {mode} synthesis' if mode else ''}",
                 f"  hit rate          {self.hit_rate:.3f}  95% CI [{self.hit_rate_ci[0]:.3f}, {self.hit_rate_ci[1]:.3f}]"
                 f"  (chance {self.chance_hit_rate:.3f})"]
        if self.mask_hit_rate is not None:
            lines.append(f"  on a component    {self.mask_hit_rate:.3f}  (chance {self.mask_chance_hit_rate:.3f}; the hit rate without boxes)")
        lines += [f"  placement AUC     {self.placement_auc:.3f}  95% CI [{self.placement_auc_ci[0]:.3f}, {self.placement_auc_ci[1]:.3f}]"
                  "  (the map at placed lesions vs random places; 0.5: no better than chance)",
                  "  placement AUC by count " + "  ".join(f"{k}:{v:.3f}" for k, v in self.placement_auc_by_count.items()),
                  f"  spurious rate     {self.spurious_rate:.3f}  ({self.healthy_components:.2f} components on healthy syntheses)",
                  f"  severity ~ count  rho {self.spearman_severity_count:.3f}  95% CI [{self.spearman_ci[0]:.3f}, {self.spearman_ci[1]:.3f}]",
                  "  severity by count " + "  ".join(f"{k}:{v:.3f}" for k, v in self.severity_by_count.items()),
                  "  hit rate by FOV ring " + "  ".join(f"{k}:{v['rate']:.2f} (chance {v['chance']:.2f}, n={v['placed']})"
                                                        for k, v in self.hit_rate_by_region.items())]
        if self.hit_rate_by_strength:
            lines.append("  hit rate by source evidence " + "  ".join(f"{k}:{v['rate']:.2f} (n={v['placed']})"
                                                                     for k, v in self.hit_rate_by_strength.items()))
        if self.vessel_dice is not None:
            lines.append(f"  vessel Dice       {self.vessel_dice:.3f}")
        if self.control_hit_rate is not None:
            lines.append(f"  transplant control (real lesions pasted at the same places): hit rate {self.control_hit_rate:.3f} "
                         f"(chance {self.control_chance_hit_rate:.3f}, placement AUC {self.control_placement_auc:.3f}); by count "
                         + "  ".join(f"{k}:{v:.2f}" for k, v in self.control_hit_rate_by_count.items()))
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def _spearman(a: Sequence[float], b: Sequence[float]) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearman(a, b))


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


def _score(boxes: Sequence[Box], placed, fov: np.ndarray, margin: int,
           rng: np.random.Generator) -> tuple[list[bool], list[tuple[float, float]], list[bool]]:
    """(per placement: is its centroid in a re-isolated box; the decoy points; per decoy: is it in a
    box): one decoy per placement, drawn from ``rng``."""
    hit = [any(box_contains(b, d.centroid) for b in boxes) for d in placed]
    decoys = _decoys(fov, [d.bbox for d in placed], len(placed), margin, rng)
    return hit, decoys, [any(box_contains(b, p) for b in boxes) for p in decoys]


REGIONS = ("centre", "middle", "rim")
"""Rings of the field of view by distance from its centre: within 1/3 of its radius, 1/3-2/3, beyond."""
STRENGTHS = ("weak", "medium", "strong")
"""Terciles of the bank's descriptor scores (evidence under the lesion as a share of its source map's peak)."""


def _values_at(blurred: np.ndarray, points) -> list[float]:
    """The map at each (x, y) point, rounded to the nearest pixel."""
    h, w = blurred.shape
    return [float(blurred[min(h - 1, max(0, int(round(y)))), min(w - 1, max(0, int(round(x))))]) for x, y in points]


def _pooled_auc(pos_by_trial: Sequence[Sequence[float]], neg_by_trial: Sequence[Sequence[float]], trials=None) -> float:
    """Mann–Whitney AUC of the pooled positives against the pooled negatives of ``trials`` (all by
    default; indices may repeat, for the bootstrap). Ties count one half."""
    trials = range(len(pos_by_trial)) if trials is None else trials
    pos = [v for t in trials for v in pos_by_trial[t]]
    neg = [v for t in trials for v in neg_by_trial[t]]
    if not pos or not neg:
        return float("nan")
    return float(roc_auc(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


def _fov_geometry(fov: np.ndarray) -> tuple[float, float, float]:
    """(cx, cy, radius) of the field of view: its centroid and the radius of a disc of its area."""
    ys, xs = np.nonzero(fov)
    return float(xs.mean()), float(ys.mean()), float(np.sqrt(len(xs) / np.pi))


def _region(point, geom: tuple[float, float, float]) -> str:
    d = np.hypot(point[0] - geom[0], point[1] - geom[1]) / max(geom[2], 1.0)
    return REGIONS[min(2, int(d * 3))]


def _strength_edges(bank) -> list[float] | None:
    """[min, lower tercile, upper tercile, max] of the bank's scores, or None when its descriptors
    carry no scores."""
    scores = np.array([d.score for d in bank], np.float64)
    scores = scores[np.isfinite(scores)]
    if len(scores) < 3:
        return None
    return [float(v) for v in np.quantile(scores, [0, 1 / 3, 2 / 3, 1])]


def _strength(score: float, edges: list[float] | None) -> str | None:
    if edges is None or not np.isfinite(score):
        return None
    return STRENGTHS[int(score > edges[1]) + int(score > edges[2])]


def _rate_row(placed: int, found: int) -> dict:
    """One row of the report's breakdowns: {"placed", "found", "rate"}."""
    return {"placed": placed, "found": found, "rate": float(found / max(1, placed))}


def _inoculate(synthesizer, host: dict, layout, seed: int) -> np.ndarray:
    """One inoculated host: the synthesizer's own ``synthesize_host`` (whole-fundus or local mode), else, for
    a stand-in written against the whole-fundus signature, ``synthesize(vessels, fov, layout, seed=)``."""
    draw = getattr(synthesizer, "synthesize_host", None)
    if draw is not None:
        return draw(host, layout, seed=seed)
    return synthesizer.synthesize(np.asarray(host["vessels"], np.float32), np.asarray(host["fov"], bool), layout, seed=seed)


def dose_layouts(bank, counts: Sequence[int], fov: np.ndarray, seed: int, nested: bool) -> dict:
    """count -> placed bank (None for 0): prefixes of one layout when ``nested``, else independent."""
    if not nested:
        return {n: (random_layout(bank, n, fov, seed=seed * 37 + n) if n else None) for n in counts}
    full = random_layout(bank, max(counts), fov, seed=seed * 37)
    return {n: (full.select(indices=range(min(n, len(full)))) if n else None) for n in counts}


@torch.no_grad()
def koch_test(detector, synthesizer, bank, healthy_set: Sequence[dict], trials: int | None = None, seed: int | None = None,
                   config: KochConfig | None = None, vessel_model=None, progress: bool = True) -> KochReport:
    """Run the Koch test. ``healthy_set``: hosts {"vessels" (S,S), "fov" (S,S) bool, "name", and
    optionally "image" (the real photo, for the Fréchet distance; what a local-mode synthesizer inoculates)}
    at the synthesizer's size.
    ``vessel_model``: a vessel segmenter, or ``False`` to skip vessel Dice (default: the shipped one)."""
    from tqdm.auto import tqdm

    cfg = replace(config or KochConfig())  # a copy: the caller's config is never changed
    if trials is not None:
        cfg.trials = int(trials)
    if seed is not None:
        cfg.seed = int(seed)
    if cfg.trials < 1:
        raise ValueError(f"trials must be >= 1, got {cfg.trials}")
    if not len(healthy_set):
        raise ValueError("no healthy host to inoculate")
    if not len(bank):
        raise ValueError("the descriptor bank is empty: nothing to inoculate")
    counts = list(cfg.counts)
    info = getattr(bank, "info", {})  # re-isolate as the bank was cultured
    if cfg.method is None:
        cfg.method = str(info.get("method") or DEFAULT_METHOD)
    if cfg.threshold is None:
        cfg.threshold = info.get("threshold") or DEFAULT_THRESHOLD
    if cfg.rule is None:
        cfg.rule = str(info.get("rule") or DEFAULT_RULE)
    if cfg.start is None:  # the bank's start layer belongs to the bank's method and the bank's detector
        own = info.get("start")
        cfg.start = own if cfg.method == info.get("method") and own in detector.layer_names else detector.default_start
    size = getattr(synthesizer, "size", None)  # a stand-in synthesizer (a test's, a lesson's) may not say
    if size is not None and detector.input_size != int(size):
        raise ValueError(f"the model takes {detector.input_size} px images and the synthesizer serves {size} px: "
                         f"adapt it with input_size={size} (a model with a global pool runs at any size)")
    # A local-mode synthesizer leaves the healthy photo as it is: its vessel Dice and Fréchet distance would
    # measure the photo against itself, so they are left out (None).
    local = getattr(synthesizer, "mode", "whole") == "local"
    if local:
        vessel_model = False
    elif vessel_model is None:
        vessel_model = load_vessels()
    detector.eval()

    hits_by_trial, placed_by_trial, decoy_hits, decoy_n = [], [], 0, 0
    mask_hits, mask_decoy_hits = 0, 0
    pos_by_trial, neg_by_trial, ctl_pos_by_trial, ctl_neg_by_trial = [], [], [], []
    values_by_count = {n: ([], []) for n in counts if n > 0}  # placements, decoys
    by_count = {n: [0, 0] for n in counts if n > 0}
    by_type: dict[str, list[int]] = {}
    by_region = {r: [0, 0, 0, 0] for r in REGIONS}  # placed, found, decoys, decoys found
    edges = _strength_edges(bank)
    by_strength = {k: [0, 0] for k in STRENGTHS} if edges is not None else {}
    spurious, components, healthy_components, per_image = 0, 0, [], []
    severity, dice, healthy_images, real_images, cases = [], [], [], [], []
    case_count = max([n for n in counts if 0 < n <= 8] or [max(counts)])
    run_control = cfg.control and all(d.norm_patch is not None for d in bank)
    ctl_counts = [n for n in counts if n > 0]
    ctl_by_count = {n: [0, 0] for n in ctl_counts}
    ctl_hits_by_trial, ctl_placed_by_trial, ctl_decoy, ctl_severity = [], [], [0, 0], []

    for t in tqdm(range(cfg.trials), desc="koch test", disable=not progress):
        host = healthy_set[t % len(healthy_set)]
        fov = np.asarray(host["fov"], bool)
        # a local-mode host may come without a tree (the photo is inoculated, not drawn)
        ves = None if host.get("vessels") is None else np.asarray(host["vessels"], np.float32)
        tseed = cfg.seed * 100_003 + t
        rng = np.random.default_rng(tseed)
        geom = _fov_geometry(fov)
        layouts = dose_layouts(bank, counts, fov, tseed, cfg.nested)
        images = np.stack([_inoculate(synthesizer, host, layouts[n], tseed) for n in counts])
        severity.append(predict_severity(detector, images).tolist())
        maps = explain(detector, images, cfg.method, start=cfg.start).maps
        t_hits, t_placed, t_pos, t_neg = 0, 0, [], []
        for j, n in enumerate(counts):
            seg = segment(maps[j], fov, cfg.threshold, rule=cfg.rule)
            per_image.append(len(seg.boxes))
            if n == 0:
                healthy_components.append(len(seg.boxes))
                healthy_images.append(images[j])
                if "image" in host:
                    real_images.append(np.asarray(host["image"], np.float32))
                if vessel_model is not False:
                    _, binary = vessel_model.segment(images[j], fov, tta=1)
                    truth = (ves > 0.5) & fov
                    dice.append(float(2 * (binary & truth).sum() / max(1, binary.sum() + truth.sum())))
                continue
            placed = list(layouts[n])
            hit, decoys, decoy_hit = _score(seg.boxes, placed, fov, cfg.margin, rng)
            found_decoys, n_decoys = sum(decoy_hit), len(decoys)
            cents = [d.centroid for d in placed]
            pos, neg = _values_at(seg.blurred, cents), _values_at(seg.blurred, decoys)
            mask_hits += int(sum(_values_at(seg.mask, cents)))  # the bool mask reads 1.0 on a component
            mask_decoy_hits += int(sum(_values_at(seg.mask, decoys)))
            t_pos += pos
            t_neg += neg
            values_by_count[n][0].append(pos)
            values_by_count[n][1].append(neg)
            spur = [not any(boxes_overlap(b, d.bbox, cfg.margin) for d in placed) for b in seg.boxes]
            for d, h in zip(placed, hit):
                ty = d.type or "unknown"
                by_type.setdefault(ty, [0, 0])
                by_type[ty][0] += 1
                by_type[ty][1] += int(h)
                ring = by_region[_region(d.centroid, geom)]
                ring[0] += 1
                ring[1] += int(h)
                st = _strength(d.score, edges)
                if st is not None:
                    by_strength[st][0] += 1
                    by_strength[st][1] += int(h)
            for p, h in zip(decoys, decoy_hit):
                ring = by_region[_region(p, geom)]
                ring[2] += 1
                ring[3] += int(h)
            by_count[n][0] += len(placed)
            by_count[n][1] += sum(hit)
            t_placed += len(placed)
            t_hits += sum(hit)
            spurious += sum(spur)
            components += len(seg.boxes)
            decoy_n, decoy_hits = decoy_n + n_decoys, decoy_hits + found_decoys
            if n == case_count and len(cases) < cfg.keep_cases:
                cases.append(TrialCase(str(host.get("name", t)), ves, fov, images[counts.index(0)] if 0 in counts else images[0],
                                       images[j], maps[j], [d.bbox for d in placed], [d.type or "unknown" for d in placed],
                                       list(seg.boxes), hit, spur, placed, {c: float(s) for c, s in zip(counts, severity[-1])}))
        hits_by_trial.append(t_hits)
        placed_by_trial.append(t_placed)
        pos_by_trial.append(t_pos)
        neg_by_trial.append(t_neg)
        if run_control and ctl_counts:
            base = images[counts.index(0)] if 0 in counts else _inoculate(synthesizer, host, None, tseed)
            ctl_images = np.stack([transplant(detector, base, layouts[n]) for n in ctl_counts])
            ctl_severity.append(predict_severity(detector, ctl_images).tolist())
            ctl_maps = explain(detector, ctl_images, cfg.method, start=cfg.start).maps
            crng = np.random.default_rng([tseed, 1])  # its own decoys: the main figures do not move
            c_hits = c_placed = 0
            c_pos, c_neg = [], []
            for j, n in enumerate(ctl_counts):
                seg = segment(ctl_maps[j], fov, cfg.threshold, rule=cfg.rule)
                placed = list(layouts[n])
                hit, decoys, decoy_hit = _score(seg.boxes, placed, fov, cfg.margin, crng)
                found_decoys, n_decoys = sum(decoy_hit), len(decoys)
                c_pos += _values_at(seg.blurred, [d.centroid for d in placed])
                c_neg += _values_at(seg.blurred, decoys)
                ctl_by_count[n][0] += len(placed)
                ctl_by_count[n][1] += sum(hit)
                c_hits, c_placed = c_hits + sum(hit), c_placed + len(placed)
                ctl_decoy[0] += n_decoys
                ctl_decoy[1] += found_decoys
            ctl_hits_by_trial.append(c_hits)
            ctl_placed_by_trial.append(c_placed)
            ctl_pos_by_trial.append(c_pos)
            ctl_neg_by_trial.append(c_neg)

    sev = np.asarray(severity, np.float64)
    boot = np.random.default_rng(cfg.seed)
    hits_arr, placed_arr = np.asarray(hits_by_trial, np.float64), np.asarray(placed_by_trial, np.float64)
    hit_rate = float(hits_arr.sum() / max(1.0, placed_arr.sum()))
    idx = boot.integers(0, len(hits_arr), size=(cfg.n_boot, len(hits_arr)))
    hr_boot = hits_arr[idx].sum(1) / np.maximum(1.0, placed_arr[idx].sum(1))
    auc_boot = [_pooled_auc(pos_by_trial, neg_by_trial, row) for row in idx]
    rhos = np.array([_spearman(counts, row) for row in sev])
    rhos_ok = np.nan_to_num(rhos, nan=0.0)  # a flat severity row shows no rise: rho 0
    rho_boot = rhos_ok[idx].mean(1)
    fd = fd_ci = None
    if not local and len(real_images) >= 8 and len(real_images) == len(healthy_images):
        from ..synthesis.evaluate import embedding_features, frechet_with_ci

        fake_f, _ = embedding_features(detector, np.stack(healthy_images))
        real_f, _ = embedding_features(detector, np.stack(real_images))
        fd, ci = frechet_with_ci(fake_f, real_f, seed=cfg.seed)
        fd_ci = list(ci)
    control = {}
    if ctl_hits_by_trial:
        ch, cp = np.asarray(ctl_hits_by_trial, np.float64), np.asarray(ctl_placed_by_trial, np.float64)
        ch_boot = ch[idx].sum(1) / np.maximum(1.0, cp[idx].sum(1))
        csev = np.asarray(ctl_severity, np.float64)
        control = dict(
            control_hit_rate=float(ch.sum() / max(1.0, cp.sum())),
            control_hit_rate_ci=[float(np.percentile(ch_boot, 2.5)), float(np.percentile(ch_boot, 97.5))],
            control_chance_hit_rate=float(ctl_decoy[1] / max(1, ctl_decoy[0])),
            control_placement_auc=_pooled_auc(ctl_pos_by_trial, ctl_neg_by_trial),
            control_hit_rate_by_count={str(n): float(v[1] / max(1, v[0])) for n, v in ctl_by_count.items()},
            control_severity_by_count={str(n): float(csev[:, j].mean()) for j, n in enumerate(ctl_counts)},
        )
    return KochReport(
        n_trials=cfg.trials, counts=counts, hit_rate=hit_rate,
        hit_rate_ci=[float(np.percentile(hr_boot, 2.5)), float(np.percentile(hr_boot, 97.5))],
        chance_hit_rate=float(decoy_hits / max(1, decoy_n)),
        hit_above_chance=hit_rate - float(decoy_hits / max(1, decoy_n)),
        placement_auc=_pooled_auc(pos_by_trial, neg_by_trial),
        placement_auc_ci=[float(np.nanpercentile(auc_boot, 2.5)), float(np.nanpercentile(auc_boot, 97.5))],
        placement_auc_by_count={str(n): _pooled_auc(*v) for n, v in values_by_count.items()},
        spurious_rate=float(spurious / max(1, components)),
        healthy_components=float(np.mean(healthy_components)) if healthy_components else float("nan"),
        hit_rate_by_count={str(n): float(v[1] / max(1, v[0])) for n, v in by_count.items()},
        hit_rate_by_type={k: _rate_row(*v) for k, v in sorted(by_type.items())},
        hit_rate_by_region={r: {**_rate_row(v[0], v[1]), "chance": float(v[3] / max(1, v[2]))} for r, v in by_region.items()},
        hit_rate_by_strength={k: {**_rate_row(*v), "score_range": edges[i : i + 2]} for i, (k, v) in enumerate(by_strength.items())},
        severity_by_count={str(n): float(sev[:, j].mean()) for j, n in enumerate(counts)},
        severity=sev.tolist(),
        spearman_severity_count=float(rhos_ok.mean()),
        spearman_ci=[float(np.percentile(rho_boot, 2.5)), float(np.percentile(rho_boot, 97.5))],
        spearman_mean_curve=_spearman(counts, sev.mean(0)),
        vessel_dice=float(np.mean(dice)) if dice else None,
        fd=fd, fd_ci=fd_ci,
        mask_hit_rate=float(mask_hits / max(1.0, placed_arr.sum())),
        mask_chance_hit_rate=float(mask_decoy_hits / max(1, decoy_n)),
        config={**asdict(cfg), "counts": counts, "mode": getattr(synthesizer, "mode", "whole")},
        components_per_image=per_image,
        cases=cases,
        **control,
    )


# ---------------------------------------------------------------------------------------------
# The shipped setups
# ---------------------------------------------------------------------------------------------
