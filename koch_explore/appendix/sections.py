"""The audit's four measured sections, each a plain dict for ``audit.json`` that says what it was measured
on: grading, sanity of the evidence maps, localisation against lesion masks, and the Koch test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core.images import model_device
from ..core.stats import (
    apply_thresholds,
    bootstrap_mean,
    percentile_ci,
    quadratic_weighted_kappa,
    roc_auc,
)
from ..data.roots import resolve_data_root
from ..detect.adapter import AdapterError
from ..evidence.base import evidence_maps, explain
from ..evidence.localisation import (
    LOCALISATION_MEASURES,
    localisation_scores,
    localisation_summary,
)
from ..koch.scoring import host_resamples

N_BOOT = 1000
"""Bootstrap resamples of every CI in the audit."""

SOURCES = {
    "eyepacs": "EyePACS validation eyes (real photographs; the patient-disjoint split the shipped detector was validated on)",
    "idrid": "IDRiD lesion images (real photographs, expert lesion masks)",
    "phantom": "phantoms (the embedded generator: cartoons of a fundus with exact lesion masks, not photographs)",
}


def available(root, *names: str) -> bool:
    """Whether every dataset folder in ``names`` is under the data root."""
    base = resolve_data_root(root)
    return base is not None and all((Path(base) / n).is_dir() for n in names)


def use_real(config, *names: str) -> bool:
    """Whether a section reads real data: "real" always (a missing dataset is then an error), "embedded" never,
    "auto" where the datasets are found."""
    if config.data == "real":
        return True
    return config.data == "auto" and available(config.root, *names)


# ---------------------------------------------------------------------------------------------
# grading
# ---------------------------------------------------------------------------------------------


def eyepacs_val(model, config):
    """The EyePACS validation eyes at the model's input size when a section may read them, else None: read
    once per audit, shared by grading, sanity and the Koch verdict's competence guard."""
    from ..data.graded import graded_eyes

    if not use_real(config, "EyePACS"):
        return None
    return graded_eyes("val", model.input_size, data="eyepacs", root=config.root, aptos=False)


def grading_section(model, config, val=None, progress: bool = True) -> dict:
    """QWK, split-half QWK, referable AUC and mean severity by grade with 95% CIs from a bootstrap over patients
    (both eyes of a patient drawn together), on EyePACS validation eyes (``val``, from :func:`eyepacs_val`); on
    graded phantoms only when ``config.allow_phantom_grading`` or ``config.data`` is "phantom"; else not
    measured, with the reason."""
    from ..data.graded import graded_eyes
    from ..detect.predict import evaluate_split

    if val is not None:
        source, arr = "eyepacs", val
    elif config.allow_phantom_grading or config.data == "phantom":  # asked for, or phantoms are the model's population
        source = "phantom"
        arr = graded_eyes("val", model.input_size, data="phantom")
    else:
        missing = ("the audit was asked to read the embedded data only (data='embedded')" if config.data == "embedded" else
                   "no graded photographs of the model's population were found (EyePACS is not under the data root)")
        return {"measured": False, "source": None,
                "why": f"{missing}, and grading on phantoms was not asked for (allow_phantom_grading): a model trained on "
                       "photographs says little when graded on cartoons"}
    rep, sev = evaluate_split(model, arr, model_device(model), tta=False, amp=False)
    grades = np.asarray(arr.grades)
    cuts = rep["thresholds"]
    boots = host_resamples(list(arr.groups), N_BOOT, np.random.default_rng([config.seed, 41]))
    qwk = [quadratic_weighted_kappa(grades[r], apply_thresholds(sev[r], cuts)) for r in boots]
    auc = [roc_auc(grades[r] >= 2, sev[r]) for r in boots]
    by_grade = []
    for g in range(5):
        sel = grades == g
        if not sel.any():
            by_grade.append({"grade": g, "n": 0, "mean": None, "ci": None})
            continue
        by_grade.append({"grade": g, "n": int(sel.sum()), **{k: v for k, v in bootstrap_mean(sev[sel], N_BOOT, config.seed).items() if k != "n"}})
    return {
        "measured": True, "source": source, "label": SOURCES[source], "n": rep["n"], "patients": len(set(arr.groups)),
        "qwk": {"value": rep["qwk"], "ci": percentile_ci(qwk), "note": "cuts fit on these eyes (optimistic); the split-half figure is not"},
        "qwk_split_half": rep["qwk_split_half"],
        "auc_referable": {"value": rep["auc_referable"], "ci": percentile_ci(auc)},
        "accuracy": rep["accuracy"], "confusion": rep["confusion"], "thresholds": cuts,
        "mean_severity_by_grade": by_grade,
    }


# ---------------------------------------------------------------------------------------------
# sanity
# ---------------------------------------------------------------------------------------------


def sanity_section(model, config, val=None, progress: bool = True) -> dict:
    """:func:`~koch_explore.evidence.sanity.sanity_report` per method on ``config.sanity_count`` EyePACS
    validation eyes drawn from ``val`` (phantoms without them), with CIs over eyes."""
    from ..data.graded import graded_eyes
    from ..evidence.sanity import sanity_report

    source = "eyepacs" if val is not None else "phantom"
    if val is None:
        val = graded_eyes("val", model.input_size, data="phantom")
    pick = np.sort(np.random.default_rng(config.seed).choice(len(val.grades), min(config.sanity_count, len(val.grades)), replace=False))
    eyes = val.images[pick]
    methods, skipped = [], {}
    for method in config.methods:  # a method the model's layers refuse (guided rules on GELU) is listed, not fatal
        try:
            explain(model, eyes[:1], method, config.start)
            methods.append(method)
        except (AdapterError, ValueError, FileNotFoundError) as exc:
            skipped[method] = str(exc).splitlines()[0]
    rep = sanity_report(model, eyes, None, methods, config.start, n_random=config.sanity_random, progress=progress)
    rep["skipped"] = {**rep.get("skipped", {}), **skipped}
    return {"measured": True, "source": source, "label": SOURCES[source], **rep}


# ---------------------------------------------------------------------------------------------
# localisation
# ---------------------------------------------------------------------------------------------


def lesion_sets(model, config) -> dict[str, list]:
    """Lesion images by source: IDRiD's (real, all of them) where found, and phantoms always."""
    from ..data.roots import dataset_dir
    from ..data.samples import folder_samples, phantom_samples

    out = {}
    if use_real(config, "IDRiD_lesions"):
        out["idrid"] = list(folder_samples(dataset_dir("IDRiD_lesions", config.root), model.input_size))
    # phantoms with lesions inside the FOV only (a grade-0 phantom has nothing to localise): drawn in order until enough
    phantoms = []
    for sample in phantom_samples(20 * config.localisation_count, model.input_size, model.input_size, config.seed):
        if any((m & sample.fov).any() for m in sample.lesions.values()):
            phantoms.append(sample)
            if len(phantoms) == config.localisation_count:
                break
    out["phantom"] = phantoms
    return out


def localisation_section(model, config, progress: bool = True) -> dict:
    """Per source (IDRiD, phantoms) and per evidence method: the five localisation measures
    (:data:`~koch_explore.evidence.localisation.LOCALISATION_MEASURES`) of each image's map against the union
    of its lesion masks inside the FOV, their means and 95% bootstrap CIs over images."""
    from tqdm.auto import tqdm

    out = {"measured": True, "measures": list(LOCALISATION_MEASURES), "sources": {}}
    for source, samples in lesion_sets(model, config).items():
        images = np.stack([s.image for s in samples])
        unions = [np.logical_or.reduce(list(s.lesions.values())) for s in samples]
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().to(model_device(model))  # once for every method
        methods, skipped, examples = {}, {}, {}
        for method in tqdm(list(config.methods), desc=f"localisation on {source}", disable=not progress):
            try:
                maps = evidence_maps(model, x, method, config.start, batch_size=8)
            except (AdapterError, ValueError, FileNotFoundError) as exc:  # a method this model's layers refuse
                skipped[method] = str(exc).splitlines()[0]
                continue
            rows = [localisation_scores(m, u, s.fov) for m, u, s in zip(maps, unions, samples)]
            methods[method] = localisation_summary(rows, N_BOOT, config.seed)
            examples[method] = maps[_example_index(unions, samples)]
        out["sources"][source] = {"label": SOURCES[source], "n_images": len(samples),
                                  "lesion_pixels": int(sum(int((u & s.fov).sum()) for u, s in zip(unions, samples))),
                                  "methods": methods, "skipped": skipped,
                                  "example": {"name": samples[_example_index(unions, samples)].name}}
        out["sources"][source]["_example_maps"] = examples  # drawn by the report, not written to JSON
        out["sources"][source]["_example_image"] = images[_example_index(unions, samples)]
        out["sources"][source]["_example_lesions"] = unions[_example_index(unions, samples)]
    return out


def _example_index(unions, samples) -> int:
    """The image with the most lesion pixels inside its FOV: the one drawn in the report."""
    return int(np.argmax([(u & s.fov).sum() for u, s in zip(unions, samples)]))


# ---------------------------------------------------------------------------------------------
# Koch
# ---------------------------------------------------------------------------------------------


def koch_section(model, config, device, val=None, progress: bool = True):
    """(section dict, KochReport): the Koch test with its verdict, on held-out real hosts where found (the
    embedded hosts otherwise), competence read from the hosts' population (``val``: the EyePACS validation
    eyes when already read)."""
    from ..koch.hosts import UNSEEN_HOSTS, default_setup, hosts_population
    from ..koch.test import KochConfig, koch_test
    from ..koch.verdict import model_competence, population_competence

    if config.data == "phantom":
        real = False
    elif config.hosts == "trees":
        real = use_real(config, "DRIVE", "CHASE_DB1")
    elif config.hosts in UNSEEN_HOSTS:
        real = use_real(config, UNSEEN_HOSTS[config.hosts])
    else:  # a folder of the user's healthy photos
        real = config.data != "embedded"
    data = "real" if real else "phantom" if config.data == "phantom" else "embedded"
    hosts = config.hosts if real else "trees" if data == "phantom" else "embedded"
    # no more photos than trials: each drawn host costs a vessel segmentation, and only `trials` are inoculated
    det, synth, bank, host_set, used = default_setup(data, config.root, model, None, None, device, hosts,
                                                     min(config.host_count, config.trials), config.mode)
    # re-isolation uses the bank's own evidence method; a model whose layers refuse it (guided rules on GELU) is
    # re-isolated with Grad-CAM instead, and the section says so
    method, method_note = None, None
    bank_method = (getattr(bank, "info", None) or {}).get("method")
    if bank_method:
        try:
            explain(det, np.full((det.input_size, det.input_size, 3), 0.5, np.float32), bank_method, config.start)
        except (AdapterError, ValueError) as exc:
            method = "gradcam"
            method_note = f"re-isolated with gradcam: the bank's {bank_method} is refused by this model ({str(exc).splitlines()[0]})"
    kcfg = KochConfig(trials=config.trials, counts=tuple(config.counts), seed=config.seed, threshold=config.threshold,
                      start=config.start, rule=config.rule, control=config.control, method=method)
    if config.population != "auto":
        population = config.population
    else:  # the hosts' own population, where graded photos of it may be read
        population = hosts_population(used, hosts, config.root)
    if population == "eyepacs" and val is not None:  # the eyes already read for grading
        competence = model_competence(det, val.images, val.grades, "eyepacs")
    else:
        competence = None if population in (None, "none") else population_competence(det, population, config.root)
    rep = koch_test(det, synth, bank, host_set, config=kcfg, competence=competence, vessel_model=False, progress=progress)
    label = (f"{hosts} hosts (real photographs)" if real else "grade-0 phantom hosts (cartoons, not photographs)"
             if data == "phantom" else "the embedded hosts (skimage's retina photo and 11 grade-0 phantoms)")
    section = {"measured": True, "source": used, "hosts": hosts, "mode": config.mode, "label": label, "method_note": method_note,
               **rep.cli_json(used, hosts if real else None, config.mode)}
    return section, rep
