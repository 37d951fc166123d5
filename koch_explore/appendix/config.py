"""What an audit runs, as one dataclass: every field is a ``koch-explore audit`` flag and a parameter of
``notebooks/07_audit_your_model``."""

from __future__ import annotations

from dataclasses import dataclass

from ..koch.test import COUNTS

AUDIT_METHODS = ("guided-gradcam", "gradcam", "guided-backprop", "gradient-x-input", "random")
"""Evidence methods scored for sanity and localisation by default: the kit's default (guided Grad-CAM), its
parts, gradient x input, and the random map as the floor every measure is read against."""

DATASETS = ("eyepacs", "aptos", "idrid", "drive", "chase_db1", "messidor", "phantom")
"""Datasets a user may say the model was trained on (``--trained-on``); the ones the kit evaluates on are
warned about."""


@dataclass
class AuditConfig:
    """How ``koch-explore audit`` / :func:`~koch_explore.appendix.audit` runs each section."""

    data: str = "auto"
    """Where every section's photos come from: "auto" (real data where found under the data root, section by
    section, else the embedded data), "real" (an error where a section's dataset is missing), "embedded"
    (phantoms and skimage's retina photo only) or "phantom" (a model of phantoms: graded on phantoms, Koch hosts
    grade-0 phantoms with the phantom synthesizer and bank). Each section's heading says which it used."""
    root: str | None = None
    """Data root (default: KOCH_DATA, ../shared/data, ./data)."""
    methods: tuple[str, ...] = AUDIT_METHODS
    """Evidence methods scored by the sanity checks and the localisation measures (methods the model's layers
    refuse, e.g. guided backprop on GELU, are listed as skipped with the reason)."""
    start: str | None = None
    """The layer the evidence starts from (Grad-CAM's layer, the deconvnet's start), a dotted module path;
    None: the model's default (an adapted model: the block of its last conv with cells <= 32 px). It moves
    every map, so the report states it."""
    threshold: float | None = None
    """The Koch test's re-isolation cut, a fraction of each map's maximum (None: the rule's default)."""
    rule: str | None = None
    """The Koch test's re-isolation rule, "peaks" or "global" (None: the kit's default, peaks)."""
    mode: str = "whole"
    """Koch synthesis: "whole" (the paper's generator draws each fundus around a host's vessel tree) or
    "local" (lesions grown inside each host's real photo)."""
    hosts: str = "eyepacs-val"
    """Koch hosts on real data: "eyepacs-val" / "aptos-val" (held-out grade-0 photos no shipped model trained
    on), "trees" (DRIVE + CHASE_DB1) or a folder of healthy photos. Without real data: the embedded hosts
    (skimage's photo and 11 grade-0 phantoms)."""
    host_count: int = 68
    """Photos drawn for eyepacs-val / aptos-val / a folder (no more than ``trials`` are drawn: only those are
    inoculated)."""
    trials: int = 24
    """Koch inoculations (hosts cycled when fewer)."""
    counts: tuple[int, ...] = COUNTS
    """Lesions placed per trial (a dose series: each count adds lesions to the last)."""
    control: bool = True
    """Run the transplant control (real lesions pasted at the same places); without it a flat response is inconclusive."""
    sanity_count: int = 48
    """Eyes for the input-dependence check (EyePACS validation eyes, or phantoms without them)."""
    sanity_random: int = 16
    """Of those, eyes compared with the randomised copy (the costlier check)."""
    localisation_count: int = 24
    """Phantoms scored for localisation (always run, exact masks); IDRiD's images are all used when present."""
    allow_phantom_grading: bool = False
    """Grade the model on phantoms when no graded photos of its population are found. Off by default: a model
    trained on photographs graded on cartoons says little, and the report says why the section is empty."""
    trained_on: tuple[str, ...] = ()
    """Datasets the model was trained on (see :data:`DATASETS`): a warning names the kit's evaluation sets it may
    have seen."""
    population: str = "auto"
    """Graded photos the Koch verdict's competence guard reads ("auto": the hosts' own population where the kit
    has graded photos of it; "eyepacs", "aptos", "phantom"; "none")."""
    seed: int = 0
    """One seed for every random draw of the audit (phantoms, eyes, layouts, bootstraps)."""
    device: str = "auto"
    """"auto" (CUDA when present, else the CPU), "cpu" or "cuda[:i]"."""
