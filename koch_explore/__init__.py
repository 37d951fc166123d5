"""koch-explore: ask a diabetic-retinopathy CNN why it diagnoses, the way Robert Koch asked a microbe.

The public API, in the order of the four postulates (each name below is documented where it lives)::

    import koch_explore as ke
    detector = ke.load_detector()                 # the shipped EyePACS o_O detector (or "phantom", or a file)
    ev = ke.explain(detector, image)              # 1. isolate: evidence maps (guided Grad-CAM by default)
    found = ke.isolate(ev, image, detector)       # 2. culture: one Descriptor per evidence component
    layout = ke.random_layout(ke.load_bank(), 8, fov)            # 3. inoculate: place descriptors ...
    fundus = ke.load_synthesizer("local").inoculate(photo, fov, layout)  # ... grow them in a healthy photo
    report = ke.koch_test(detector, synth, bank, hosts)          # 4. re-isolate: hit rate, severity vs count
    ke.audit(my_model, "audit/")                  # all four on one model: one offline report and audit.json

Packages, one per concept: :mod:`.core` (geometry, statistics, devices, weights registry), :mod:`.data`
(datasets, preprocessing, the phantom), :mod:`.detect` (the detector), :mod:`.evidence` (evidence
methods, sanity checks), :mod:`.culture` (isolation, descriptors, banks), :mod:`.vessels` (the vessel
segmenter), :mod:`.synthesis` (the lesion synthesizer GAN), :mod:`.koch` (the Koch test and its
report), :mod:`.appendix` (the audit: every section on one model, one document), :mod:`.cli` (argparse
wiring only). Names load on first use, so ``import koch_explore`` and ``koch-explore --help`` stay fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # shipped weights: one registry, name -> file + model card; a user's own file works the same way
    "SHIPPED": "core.weights",  # kind -> shipped name -> file
    "model_card": "core.weights",  # the Markdown card of a shipped model
    "load_detector": "detect.model",  # "eyepacs" (default), "phantom", or a .safetensors path
    "load_vessels": "vessels.model",  # "drive" (default) or a path
    "load_synthesizer": "synthesis.synthesizer",  # "real" (default, whole mode), "local", "deconvnet", "phantom", or a path
    "load_bank": "culture.bank",  # the bank a synthesizer was trained with, by the same name, or a path
    # data
    "read_image": "data.io",  # any fundus file -> float32 RGB in [0, 1] (one clear error per bad file)
    "prepare_fundus": "data.preprocess",  # crop to the field of view, pad square, resize -> (image, fov)
    "retina_photo": "data.embedded",  # the embedded CC0 photo (skimage.data.retina), prepared
    "generate_phantom": "data.phantom",  # a fundus drawn with exact lesion masks and a grade
    "graded_eyes": "data.graded",  # the EyePACS/APTOS split the detector was trained and validated on
    "resolve_data_root": "data.roots",  # argument, KOCH_DATA, ../shared/data, ./data, or None (embedded)
    "diseased_eyes": "data.diseased",  # high-grade eyes to isolate from: EyePACS validation when found, else phantoms
    # postulate 1: the detector and its evidence
    "Detector": "detect.model",
    "adapt": "detect.adapter",  # any nn.Module DR classifier -> a grader every call of the kit accepts
    "load_model": "detect.adapter",  # "package.module:factory" + safetensors weights -> adapted model
    "fine_tune": "detect.adapter",  # a brief training of an adapted model on graded images (phantoms)
    "grading_figures": "detect.predict",  # QWK, referable AUC, severity by grade of any model on a split
    "predict_severity": "detect.predict",  # severity on the 0-4 scale, optional 8x test-time augmentation
    "predict_files": "detect.predict",  # photo files -> severity and grade rows, streamed batch by batch
    "predict_sharded": "detect.predict",  # the same into a CSV/JSON file, in resumable shards split across torchrun ranks
    "image_paths": "core.shards",  # files and folders (recursive, sorted) -> one ordered list of photos
    "set_torch_threads": "core.runtime",  # torch's threads from the CPU quota (cgroup, CPU_LIMIT, taskset, OMP_NUM_THREADS)
    "use_profile": "core.profiles",  # a notebook's profile ("default", "class": 1 core, 1.5 GB, 3 min) and its threads
    "release_memory": "core.profiles",  # give freed memory back to the system between large notebook sections
    "explain": "evidence.base",  # evidence maps by method name -> Evidence
    "Evidence": "evidence.base",
    "EvidenceMethod": "evidence.base",  # the base class of every method (model, layer) -> call -> Evidence
    "EVIDENCE_METHODS": ("evidence.base", "METHODS"),  # name -> method class
    "DEFAULT_METHOD": "evidence.base",
    "sanity_report": "evidence.sanity",  # do the maps depend on the image and on training?
    "localisation_scores": "evidence.localisation",  # one map against a lesion mask: pointing game, mass, rank, top-k, AUC
    "localisation_summary": "evidence.localisation",  # those over images: mean and bootstrap CI per measure
    # postulate 2: culture
    "isolate": "culture.isolation",  # evidence -> one list of Descriptors per image
    "segment": "culture.cut",  # one map -> blurred, cut, components (the widget's steps)
    "bank_from_images": "culture.build",  # images in memory -> explained, isolated, one DescriptorBank
    "isolate_sharded": "culture.sharded",  # photo files -> a bank, in resumable shards split across torchrun ranks
    "Descriptor": "culture.descriptor",
    "DescriptorBank": "culture.bank",
    # postulate 3: inoculate
    "random_layout": "synthesis.synthesizer",  # exactly n descriptors of a bank placed at random valid places
    "Synthesizer": "synthesis.base",  # what load_synthesizer returns: synthesize_host(host, layout, seed), inoculate(photo, fov, layout)
    "LesionSynthesizer": "synthesis.synthesizer",  # whole mode: a fundus drawn around a vessel tree
    "LocalSynthesizer": "synthesis.local",  # local mode: lesions grown inside a real healthy photo, the rest untouched
    "SYNTHESIS_MODES": ("synthesis.synthesizer", "MODES"),  # "whole" / "local" -> the shipped synthesizer's name
    "VesselSegmenter": "vessels.model",
    # postulate 4: re-isolate
    "koch_test": "koch.test",  # inoculate hosts with 0..16 lesions, re-isolate, score -> KochReport
    "KochConfig": "koch.test",
    "KochReport": "koch.test",  # .verdict, .verdict_reasons, .effects (CIs over distinct hosts), .reading()
    "VerdictRule": "koch.verdict",  # the verdict's stated thresholds
    "VERDICTS": "koch.verdict",  # "lesion-driven", "inconclusive", "not-lesion-driven"
    "population_competence": "koch.verdict",  # does a model grade the hosts' population (referable AUC, spread)?
    "embedded_hosts": "koch.hosts",  # hosts without data: skimage's photo and 11 grade-0 phantoms
    "default_setup": "koch.hosts",  # (detector, synthesizer, bank, hosts, data) shipped for a data setting and mode
    "healthy_hosts": "koch.hosts",  # hosts by name ("trees", "eyepacs-val", "aptos-val", "embedded") or a folder of photos
    "write_report": "koch.report",  # the offline HTML report of a KochReport
    # the appendix: every section in one document
    "audit": "appendix.run",  # grading, sanity, localisation, the Koch verdict, provenance -> index.html, audit.json, figures/
    "AuditConfig": "appendix.config",
}

__all__ = [
    "AuditConfig", "DEFAULT_METHOD", "Descriptor", "DescriptorBank", "Detector", "EVIDENCE_METHODS", "Evidence", "EvidenceMethod",
    "KochConfig", "KochReport", "LesionSynthesizer", "LocalSynthesizer", "SHIPPED", "SYNTHESIS_MODES", "Synthesizer", "VERDICTS", "VerdictRule", "VesselSegmenter", "__version__", "adapt", "audit", "bank_from_images", "default_setup", "diseased_eyes",
    "embedded_hosts", "explain", "fine_tune", "generate_phantom", "graded_eyes", "grading_figures", "healthy_hosts", "image_paths", "isolate", "isolate_sharded", "koch_test", "load_bank", "load_detector",
    "load_model", "load_synthesizer", "load_vessels", "localisation_scores", "localisation_summary", "model_card", "predict_files", "predict_sharded", "population_competence", "predict_severity", "prepare_fundus", "random_layout", "read_image",
    "release_memory", "resolve_data_root", "retina_photo", "sanity_report", "segment", "set_torch_threads", "use_profile", "write_report",
]


def __getattr__(name: str):
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'koch_explore' has no attribute {name!r}")
    module, attr = target if isinstance(target, tuple) else (target, name)
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    globals()[name] = value  # cached: the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
