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
* **severity vs count** — the detector's severity for 0..16 copies: the change from 0 to the largest
  count and the slope per lesion with 95% CIs from a bootstrap over distinct hosts (:mod:`.verdict`),
  and, kept for reference, the per-trial Spearman rho (a rank says nothing of a change's size);
* the **verdict** — lesion-driven, not-lesion-driven or inconclusive, with its reasons
  (:func:`~koch_explore.koch.verdict.decide`), guarded by the number of distinct hosts, the model's
  competence on the hosts' population and the transplant control;
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

from ..core.geometry import Box
from ..core.runtime import eval_mode
from ..core.stats import spearman
from ..culture.cut import DEFAULT_RULE, default_threshold, segment
from ..detect.predict import predict_severity
from ..evidence.base import DEFAULT_METHOD, explain
from ..synthesis.synthesizer import random_layout
from ..synthesis.transplant import transplant
from ..vessels import load_vessels
from .scoring import Tally, host_resamples, percentile_ci, score_image
from .verdict import VerdictRule, decide, effect_sizes

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
    """Re-isolation threshold (fraction of the map's maximum, or "otsu"); None: the one the bank was
    isolated with (its ``info["threshold"]``) when it was cut by the same rule, else the rule's default."""
    rule: str | None = None
    """Re-isolation rule ("peaks", one component per local peak, or one "global" cut, see
    :data:`~koch_explore.culture.cut.RULES`); None: isolation's default, whatever rule cut the bank: the
    re-isolated boxes are a measurement, and boxes grown around every cluster make a hit rate chance."""
    nested: bool = True
    """Dose series: the n-lesion layout is the first n placements of the largest count's layout, so
    a larger count only adds lesions. False: an independent random layout per count (then the
    severity curve also carries the luck of which descriptors and places were drawn)."""
    margin: int = 4
    """Pixels of slack around a placed box when deciding whether a component is spurious."""
    n_boot: int = 1000
    """Bootstrap resamples (over distinct hosts) for the confidence intervals."""
    seed: int = 0
    """Seed of the layouts, decoys, synthesis noise and bootstraps (the same seed, the same report on the CPU)."""
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
    """What :func:`koch_test` measured: the verdict and its reasons, the effect sizes with CIs over distinct
    hosts, hit and chance rates, severity by count, the transplant control, and the pictures of a few trials
    (``reading()`` says it in words, ``to_json()`` / ``cli_json()`` as numbers)."""

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
    chance_hit_rate_by_count: dict[str, float]
    """count -> the decoys' hit rate in the images with that many lesions (boxes grow with the count)."""
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
    placed_counts: list[list[int]] = field(default_factory=list)
    """trials x counts: the lesions each image was actually given (always the stated count: a host whose
    FOV cannot take a dose stops the test instead of lowering it)."""
    hosts: list[str] = field(default_factory=list)
    """The host of each trial (trials cycle through the hosts when there are more trials than hosts)."""
    distinct_hosts: int = 0
    effects: dict = field(default_factory=dict)
    """Effect sizes with 95% CIs from a bootstrap over distinct hosts (:func:`~koch_explore.koch.verdict.effect_sizes`):
    the severity change from 0 to the largest count and the slope per lesion (grade units, and relative to
    the model's own grade-0 to grade >= 2 spread when its competence was measured), placement AUC, hit
    minus chance, chance per count, and the same for the transplant control."""
    competence: dict | None = None
    """Whether the model grades photos of the hosts' population (referable AUC, spread), or None (not measured)."""
    resolution: dict = field(default_factory=dict)
    """{"model_input", "hosts"}: the side the model takes and the side of the hosts it was shown."""
    verdict: str = "inconclusive"
    """"lesion-driven", "inconclusive" or "not-lesion-driven" (:func:`~koch_explore.koch.verdict.decide`)."""
    verdict_reasons: list[str] = field(default_factory=list)
    verdict_rule: dict = field(default_factory=dict)
    control_severity: list[list[float]] | None = None
    """trials x counts > 0: severity with the real lesions transplanted (the 0-lesion image is shared)."""
    cases: list[TrialCase] = field(default_factory=list, repr=False)

    def to_json(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "cases"}
        return json.loads(json.dumps(d, default=float))

    def cli_json(self, data: str | None = None, hosts: str | None = None, mode: str | None = None) -> dict:
        """The ``koch-test --json`` object: the headline figures first, then the rest (no per-trial arrays)."""
        out = self.to_json()
        keys = ["verdict", "verdict_reasons", "effects", "distinct_hosts", "n_trials", "hit_rate", "spurious_rate",
                "spearman_severity_count", "spearman_ci", "vessel_dice"]
        given = {str(n): sorted({row[j] for row in self.placed_counts}) for j, n in enumerate(self.counts)}
        per_trial = ("severity", "control_severity", "components_per_image", "placed_counts", "hosts")
        return {**{k: out[k] for k in keys}, "data": data, "hosts": hosts, "mode": mode or self.config.get("mode"),
                "lesions_placed_by_count": given, **{k: v for k, v in out.items() if k not in keys and k not in per_trial}}

    def effect_lines(self) -> list[str]:
        """The effect sizes as short lines (the summary's and the report's)."""
        e = self.effects
        if not e:
            return []
        ci = lambda d, k="mean": f"{d[k]:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"  # noqa: E731
        auc = lambda d: f"{d['value']:.3f} [{d['ci'][0]:.3f}, {d['ci'][1]:.3f}]"  # noqa: E731
        top = e["largest_count"]
        lines = [f"severity change 0 -> {top} lesions  {ci(e['severity_change'])} grades (95% CI over {e['distinct_hosts']} "
                 f"host{'s' if e['distinct_hosts'] != 1 else ''})",
                 f"slope per lesion  {ci(e['slope_per_lesion'])} grades"]
        if e.get("relative_change"):
            lines.append(f"relative to the model's own grade-0 to grade>=2 gap ({e['relative_change']['spread']:.2f})  "
                         f"{ci(e['relative_change'])}")
        lines += [f"placement AUC  {auc(e['placement_auc'])}",
                  f"hit minus chance  {ci(e['hit_minus_chance'], 'value')}; chance by count "
                  + "  ".join(f"{k}:{v:.2f}" for k, v in e["chance_hit_rate_by_count"].items())]
        if e.get("control"):
            c = e["control"]
            lines.append(f"transplanted real lesions: severity change {ci(c['severity_change'])}, placement AUC "
                         f"{auc(c['placement_auc'])}")
        return lines

    def reading(self) -> str:
        """The verdict and its reasons in plain sentences (what a notebook prints under its figures)."""
        text = f"Verdict: {self.verdict} — " + "; ".join(self.verdict_reasons) + "."
        above = self.hit_rate - self.chance_hit_rate
        text += (f" The placed lesions were re-found at {self.hit_rate:.2f} against {self.chance_hit_rate:.2f} for random places "
                 f"({'+' if above >= 0 else ''}{above:.2f}), over {self.distinct_hosts} distinct host"
                 f"{'s' if self.distinct_hosts != 1 else ''}.")
        if self.control_hit_rate is not None:
            text += (f" The real lesions transplanted to the same places were re-found at {self.control_hit_rate:.2f} "
                     f"(chance {self.control_chance_hit_rate:.2f}).")
        return text

    def summary(self, data: str | None = None, hosts: str | None = None, mode: str | None = None) -> str:
        """The figures as a few lines a person reads (what ``koch-explore koch-test`` prints)."""
        where = f" on {data} data" if data else ""
        mode = mode or self.config.get("mode")
        lines = [f"Koch test{where}{f' ({hosts} hosts)' if hosts else ''}, {self.n_trials} trials on {self.distinct_hosts} "
                 f"distinct host{'' if self.distinct_hosts == 1 else 's'}{f', {mode} synthesis' if mode else ''}",
                 f"  VERDICT           {self.verdict}",
                 *(f"    - {r}" for r in self.verdict_reasons),
                 *(f"  {line}" for line in self.effect_lines()),
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


REGIONS = ("centre", "middle", "rim")
"""Rings of the field of view by distance from its centre: within 1/3 of its radius, 1/3-2/3, beyond."""
STRENGTHS = ("weak", "medium", "strong")
"""Terciles of the bank's descriptor scores (evidence under the lesion as a share of its source map's peak)."""


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
    """One inoculated host, through the synthesizer protocol (:class:`~koch_explore.synthesis.base.Synthesizer`)."""
    return synthesizer.synthesize_host(host, layout, seed=seed)


def dose_layouts(bank, counts: Sequence[int], fov: np.ndarray, seed: int, nested: bool) -> dict:
    """count -> placed bank of exactly that many descriptors (None for 0): prefixes of one layout when
    ``nested``, else independent. :func:`random_layout` raises when a host's FOV cannot take the dose."""
    if not nested:
        return {n: (random_layout(bank, n, fov, seed=seed * 37 + n) if n else None) for n in counts}
    full = random_layout(bank, max(counts), fov, seed=seed * 37)
    return {n: (full.select(indices=range(n)) if n else None) for n in counts}


@torch.no_grad()
def koch_test(detector, synthesizer, bank, healthy_set: Sequence[dict], trials: int | None = None, seed: int | None = None,
              config: KochConfig | None = None, vessel_model=None, progress: bool = True, competence: dict | None = None,
              rule: VerdictRule | None = None) -> KochReport:
    """Run the Koch test. ``healthy_set``: hosts {"vessels" (S,S), "fov" (S,S) bool, "name", and
    optionally "image" (the real photo, for the Fréchet distance; what a local-mode synthesizer inoculates)}
    at the synthesizer's size.
    ``vessel_model``: a vessel segmenter, or ``False`` to skip vessel Dice (default: the shipped one).
    ``competence``: whether the model grades photos of the hosts' population
    (:func:`~koch_explore.koch.verdict.population_competence`); without it a flat response is inconclusive.
    ``rule``: the verdict's thresholds (default :class:`~koch_explore.koch.verdict.VerdictRule`).
    The detector runs in eval mode; the mode it was found in is restored."""
    with eval_mode(detector):
        return _koch_test(detector, synthesizer, bank, healthy_set, trials, seed, config, vessel_model, progress, competence, rule)


def _koch_test(detector, synthesizer, bank, healthy_set, trials, seed, config, vessel_model, progress, competence, rule) -> KochReport:
    from tqdm.auto import tqdm

    cfg = replace(config or KochConfig())  # a copy: the caller's config is never changed
    if trials is not None:
        cfg.trials = int(trials)
    if seed is not None:
        cfg.seed = int(seed)
    if cfg.trials < 1:
        raise ValueError(f"trials must be >= 1, got {cfg.trials}")
    if not callable(getattr(synthesizer, "synthesize_host", None)):
        raise TypeError(f"{type(synthesizer).__name__} is not a synthesizer: it needs synthesize_host(host, layout, seed) "
                        "(koch_explore.Synthesizer)")
    if not len(healthy_set):
        raise ValueError("no healthy host to inoculate")
    if not len(bank):
        raise ValueError("the descriptor bank is empty: nothing to inoculate")
    counts = list(cfg.counts)
    if 0 not in counts or len(counts) < 2 or min(counts) < 0:
        raise ValueError(f"counts must hold 0 (the host's own control) and at least one dose, got {counts}")
    info = getattr(bank, "info", {})  # re-isolate with the evidence the bank was cultured by; the cut is the default's
    if cfg.method is None:
        cfg.method = str(info.get("method") or DEFAULT_METHOD)
    if cfg.rule is None:
        cfg.rule = DEFAULT_RULE
    if cfg.threshold is None:  # a bank saved before rules were recorded was cut by the global rule
        own = info.get("threshold") if (info.get("rule") or "global") == cfg.rule else None
        cfg.threshold = own or default_threshold(cfg.rule)
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

    doses = [n for n in counts if n > 0]
    main, control = Tally(), Tally()
    hosts, severity, control_severity, placed_counts = [], [], [], []
    healthy_components, per_image, dice, healthy_images, real_images, cases = [], [], [], [], [], []
    case_count = max([n for n in doses if n <= 8] or [max(doses)])
    run_control = cfg.control and all(d.norm_patch is not None for d in bank)

    def rescore(images, layouts, counts_of, rng, fov):
        """(maps, segmentations, {count: ImageScore}) of images inoculated with ``layouts``, re-isolated by ``cfg``."""
        maps = explain(detector, images, cfg.method, start=cfg.start).maps
        segs = [segment(m, fov, cfg.threshold, rule=cfg.rule) for m in maps]
        scores = {n: score_image(seg, list(layouts[n]), fov, cfg.margin, rng) for n, seg in zip(counts_of, segs) if n > 0}
        return maps, segs, scores

    for t in tqdm(range(cfg.trials), desc="koch test", disable=not progress):
        host = healthy_set[t % len(healthy_set)]
        name = str(host.get("name", t % len(healthy_set)))
        fov = np.asarray(host["fov"], bool)
        tseed = cfg.seed * 100_003 + t
        try:
            layouts = dose_layouts(bank, counts, fov, tseed, cfg.nested)
        except ValueError as exc:
            raise ValueError(f"host {name!r}: {exc}") from exc
        hosts.append(name)
        placed_counts.append([0 if layouts[n] is None else len(layouts[n]) for n in counts])
        images = np.stack([_inoculate(synthesizer, host, layouts[n], tseed) for n in counts])
        severity.append(predict_severity(detector, images).tolist())
        maps, segs, scores = rescore(images, layouts, counts, np.random.default_rng(tseed), fov)
        main.add(scores)
        per_image += [len(seg.boxes) for seg in segs]
        healthy = images[counts.index(0)]
        healthy_components.append(len(segs[counts.index(0)].boxes))
        healthy_images.append(healthy)
        if "image" in host:
            real_images.append(np.asarray(host["image"], np.float32))
        if vessel_model is not False:
            ves = np.asarray(host["vessels"], np.float32)
            _, binary = vessel_model.segment(healthy, fov, tta=1)
            truth = (ves > 0.5) & fov
            dice.append(float(2 * (binary & truth).sum() / max(1, binary.sum() + truth.sum())))
        if len(cases) < cfg.keep_cases:
            j, sc = counts.index(case_count), scores[case_count]
            cases.append(TrialCase(name, None if host.get("vessels") is None else np.asarray(host["vessels"], np.float32), fov,
                                   healthy, images[j], maps[j], [d.bbox for d in sc.placed], [d.type or "unknown" for d in sc.placed],
                                   sc.boxes, sc.hits, sc.spurious, sc.placed, {c: float(v) for c, v in zip(counts, severity[-1])}))
        if run_control:
            # the same layouts pasted as real lesions into the same 0-lesion image, with their own decoys
            ctl_images = np.stack([transplant(detector, healthy, layouts[n]) for n in doses])
            control_severity.append(predict_severity(detector, ctl_images).tolist())
            control.add(rescore(ctl_images, layouts, doses, np.random.default_rng([tseed, 1]), fov)[2])

    sev = np.asarray(severity, np.float64)
    effects = effect_sizes(counts, sev, hosts, main, control if run_control else None, control_severity if run_control else None,
                           competence, cfg.n_boot, cfg.seed)
    verdict, reasons = decide(effects, competence, rule)
    boots = host_resamples(hosts, cfg.n_boot, np.random.default_rng(cfg.seed))
    rhos = np.nan_to_num(np.array([_spearman(counts, row) for row in sev]), nan=0.0)  # a flat row shows no rise: rho 0
    fd = fd_ci = None
    if not local and len(real_images) >= 8 and len(real_images) == len(healthy_images):
        from ..synthesis.evaluate import embedding_features, frechet_with_ci

        fake_f, _ = embedding_features(detector, np.stack(healthy_images))
        real_f, _ = embedding_features(detector, np.stack(real_images))
        fd, ci = frechet_with_ci(fake_f, real_f, seed=cfg.seed)
        fd_ci = list(ci)
    extra = {}
    if run_control:
        csev = np.asarray(control_severity, np.float64)
        extra = dict(
            control_hit_rate=control.hit_rate(), control_hit_rate_ci=percentile_ci([control.hit_rate(r) for r in boots]),
            control_chance_hit_rate=control.chance_hit_rate(), control_placement_auc=control.placement_auc(),
            control_hit_rate_by_count={str(n): control.hit_rate(count=n) for n in doses},
            control_severity_by_count={str(n): float(csev[:, j].mean()) for j, n in enumerate(doses)},
        )
    spurious, components = main.spurious()
    on_component, decoy_on_component = main.on_component_rate()
    return KochReport(
        n_trials=cfg.trials, counts=counts, hit_rate=main.hit_rate(), hit_rate_ci=percentile_ci([main.hit_rate(r) for r in boots]),
        chance_hit_rate=main.chance_hit_rate(), hit_above_chance=effects["hit_minus_chance"]["value"],
        placement_auc=effects["placement_auc"]["value"], placement_auc_ci=effects["placement_auc"]["ci"],
        placement_auc_by_count={str(n): main.placement_auc(count=n) for n in doses},
        spurious_rate=float(spurious / max(1, components)),
        healthy_components=float(np.mean(healthy_components)),
        hit_rate_by_count={str(n): main.hit_rate(count=n) for n in doses},
        chance_hit_rate_by_count=effects["chance_hit_rate_by_count"],
        **_breakdowns(main, healthy_set, bank),
        severity_by_count={str(n): float(sev[:, j].mean()) for j, n in enumerate(counts)},
        severity=sev.tolist(),
        spearman_severity_count=float(rhos.mean()),
        spearman_ci=percentile_ci([rhos[r].mean() for r in boots]),
        spearman_mean_curve=_spearman(counts, sev.mean(0)),
        vessel_dice=float(np.mean(dice)) if dice else None,
        fd=fd, fd_ci=fd_ci,
        mask_hit_rate=on_component, mask_chance_hit_rate=decoy_on_component,
        config={**asdict(cfg), "counts": counts, "mode": getattr(synthesizer, "mode", "whole")},
        components_per_image=per_image, placed_counts=placed_counts, hosts=hosts,
        distinct_hosts=effects["distinct_hosts"], effects=effects, competence=competence,
        resolution={"model_input": int(detector.input_size), "hosts": int(fov.shape[0])},
        verdict=verdict, verdict_reasons=reasons, verdict_rule=(rule or VerdictRule()).to_json(),
        control_severity=np.asarray(control_severity, np.float64).tolist() if run_control else None,
        cases=cases, **extra,
    )


def _breakdowns(main: Tally, healthy_set, bank) -> dict:
    """Hit rate by lesion type, by FOV ring (with the decoys' rate in the same ring) and by the strength of
    each descriptor's evidence in its source eye."""
    by_type: dict[str, list[int]] = {}
    by_region = {r: [0, 0, 0, 0] for r in REGIONS}  # placed, found, decoys, decoys found
    edges = _strength_edges(bank)
    by_strength = {k: [0, 0] for k in STRENGTHS} if edges is not None else {}
    for t, scores in enumerate(main.trials):
        geom = _fov_geometry(np.asarray(healthy_set[t % len(healthy_set)]["fov"], bool))
        for sc in scores.values():
            for d, h in zip(sc.placed, sc.hits):
                row = by_type.setdefault(d.type or "unknown", [0, 0])
                row[0], row[1] = row[0] + 1, row[1] + int(h)
                ring = by_region[_region(d.centroid, geom)]
                ring[0], ring[1] = ring[0] + 1, ring[1] + int(h)
                st = _strength(d.score, edges)
                if st is not None:
                    by_strength[st][0] += 1
                    by_strength[st][1] += int(h)
            for p, h in zip(sc.decoys, sc.decoy_hits):
                ring = by_region[_region(p, geom)]
                ring[2], ring[3] = ring[2] + 1, ring[3] + int(h)
    return dict(
        hit_rate_by_type={k: _rate_row(*v) for k, v in sorted(by_type.items())},
        hit_rate_by_region={r: {**_rate_row(v[0], v[1]), "chance": float(v[3] / max(1, v[2]))} for r, v in by_region.items()},
        hit_rate_by_strength={k: {**_rate_row(*v), "score_range": edges[i : i + 2]} for i, (k, v) in enumerate(by_strength.items())},
    )


# ---------------------------------------------------------------------------------------------
# The shipped setups
# ---------------------------------------------------------------------------------------------
