"""Measure shipped detector weights and write their model card.

The figures are recomputed from the weights alone: the training configuration stored in the
safetensors metadata rebuilds the same patient-disjoint validation split, so the card can be
regenerated (and checked) by anyone with the data:

    koch-explore detector card --weights koch_explore/weights/detector_eyepacs_256.safetensors
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from ..core import stats
from ..data.graded import load_graded
from .model import Detector
from .predict import predict_arrays
from .train import TrainConfig


def train_config_of(model: Detector) -> TrainConfig:
    raw = json.loads(model.metadata.get("train_config", "{}"))
    known = {f.name for f in fields(TrainConfig)}
    kw = {k: v for k, v in raw.items() if k in known}
    if "final_class_weights" in kw:
        kw["final_class_weights"] = tuple(kw["final_class_weights"])
    return TrainConfig(**kw)


def _uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def drive_severity(model: Detector, root=None, tta: bool = True) -> dict:
    """Mean predicted severity on the 40 DRIVE photos (a screening population, mostly healthy)."""
    from ..data.datasets import VesselSegmentation
    from ..data.preprocess import prepare_fundus

    ds = VesselSegmentation("DRIVE", root=root)
    size = model.cfg.input_size
    imgs = np.stack([_uint8(prepare_fundus(it["image"], size, fov=it["fov"])[0]) for it in ds])
    sev = predict_arrays(model, imgs, "cpu", tta=tta)
    return {"n": len(sev), "mean_severity": float(sev.mean()), "grade_counts": np.bincount(
        stats.apply_thresholds(sev, model.thresholds.numpy()), minlength=5).tolist()}


def natural_colour_check(model: Detector, val_names: set[str], root=None, tta: bool = True) -> dict | None:
    """EyePACS photos in natural colour (``fullres_sample_512``) whose patient is in validation:
    the training images are colour-enhanced, so this checks that the in-model normalisation
    carries the detector across to raw photographs."""
    from ..data.datasets import index_graded_images
    from ..data.io import read_image
    from ..data.preprocess import prepare_fundus
    from ..data.roots import dataset_dir

    try:
        eye = dataset_dir("EyePACS", root)
    except FileNotFoundError:
        return None
    items = [it for it in index_graded_images(eye / "fullres_sample_512", eye / "trainLabels.csv") if it.name in val_names]
    if not items:
        return None
    size = model.cfg.input_size
    imgs = np.stack([_uint8(prepare_fundus(read_image(it.path), size, path=it.path)[0]) for it in items])
    sev = predict_arrays(model, imgs, "cpu", tta=tta)
    grades = np.array([it.grade for it in items])
    rep = stats.grading_report(sev, grades, model.thresholds.numpy())
    return {k: rep[k] for k in ("n", "qwk", "accuracy", "auc_referable", "mean_severity_by_grade")}


def _qwk_refit(sev: np.ndarray, grades: np.ndarray) -> float:
    """QWK with cuts fit on the same eyes (optimistic; beside the split-half figure)."""
    return stats.quadratic_weighted_kappa(grades, stats.apply_thresholds(sev, stats.fit_thresholds(sev, grades)))


def evaluate_weights(weights: str | Path, root=None, tta: bool = True) -> dict:
    """All figures of the model card, recomputed from the weights (a shipped name or a file) and the data.
    The card describes EyePACS-trained weights; weights trained on phantoms are refused with the reason."""
    from ..core.weights import resolve_weights

    weights = resolve_weights("detector", weights)
    model = Detector.load(weights)
    cfg = train_config_of(model)
    if cfg.data != "eyepacs":
        raise ValueError(f"{weights}: trained on {cfg.data!r} data; the card measures EyePACS-trained weights on the "
                         "EyePACS and APTOS validation splits (a phantom detector's figures are its trainer's own "
                         "validation report, as in detector_phantom_256.md)")
    if root is not None:
        cfg.root = str(root)
    t0 = time.time()
    data = load_graded(cfg, model.cfg.input_size, splits=("train", "val", "aptos_val"))
    train = data.pop("train")
    out: dict = {"weights": str(weights), "weights_hash": model.weights_hash(), "tta": tta,
                 "thresholds": model.thresholds.tolist(), "train_config": cfg.__dict__.copy()}
    sev_by_split = {}
    for split, arr in data.items():
        sev = predict_arrays(model, arr.images, "cpu", tta=tta)
        sev_by_split[split] = (sev, arr.grades)
        rep = stats.grading_report(sev, arr.grades, model.thresholds.numpy())
        # The stored cuts were fit on this validation split; the split-half figure fits cuts on
        # half the patients and scores the other half, so it carries no threshold optimism.
        rep["qwk_split_half"] = stats.split_half_qwk(sev, arr.grades, arr.groups)
        rep["qwk_refit"] = _qwk_refit(sev, arr.grades)
        out[split] = rep
    sev, grades = sev_by_split["val"]
    out["fit"] = fit_check(model, train, data["val"], sev)
    out["eyepacs_val_mean_severity_grade_ge2"] = float(sev[grades >= 2].mean())
    out["eyepacs_val_mean_severity_grade0"] = float(sev[grades == 0].mean())
    try:
        out["drive"] = drive_severity(model, cfg.root, tta)
    except FileNotFoundError:
        out["drive"] = None
    out["eyepacs_natural_colour_val"] = natural_colour_check(model, set(data["val"].names), cfg.root, tta)
    out["seconds"] = time.time() - t0
    return out


def fit_check(model: Detector, train, val, val_sev: np.ndarray) -> dict:
    """Training eyes against validation eyes, both single view, and the fellow-eye weight fit on
    the training eyes.

    Why: a gap between the two says over-fitting (regularise, more data); no gap says the net does
    not fit even the eyes it learned from (more resolution, capacity or training). The blend weight
    is chosen on the training eyes so that the blended validation figure is not tuned on validation.
    ``val_sev`` are the card's own validation predictions (its TTA setting), blended for the table."""
    keep = np.array([s == "eyepacs" for s in train.source], dtype=bool)
    names = [n for n, k in zip(train.names, keep) if k]
    g_tr = train.grades[keep]
    s_tr = predict_arrays(model, train.images[keep], "cpu", tta=False)
    s_va = predict_arrays(model, val.images, "cpu", tta=False)

    w, by_w = stats.fit_pair_blend(s_tr, names, g_tr)
    blended = stats.paired_eye_blend(val_sev, val.names, w)
    return {
        "train_n": int(keep.sum()), "val_n": len(val.grades),
        "train_auc_single": stats.roc_auc(g_tr >= 2, s_tr), "val_auc_single": stats.roc_auc(val.grades >= 2, s_va),
        "train_qwk_refit_single": _qwk_refit(s_tr, g_tr), "val_qwk_refit_single": _qwk_refit(s_va, val.grades),
        "pair_weight": w, "pair_weight_train_auc": {str(k): v for k, v in by_w.items()},  # JSON's keys
        "val_pair": {"auc_referable": stats.roc_auc(val.grades >= 2, blended),
                     "qwk_split_half": stats.split_half_qwk(blended, val.grades, val.groups),
                     "qwk_refit": _qwk_refit(blended, val.grades)},
    }


def model_card(fig: dict, command: str, hardware: str) -> str:
    """Markdown model card from :func:`evaluate_weights` figures."""
    v, a, d = fig["val"], fig.get("aptos_val"), fig.get("drive")
    tc = fig["train_config"]
    nat = fig.get("eyepacs_natural_colour_val")
    f3 = lambda x: "n/a" if x is None else f"{x:.3f}"
    lines = [
        f"# {Path(fig['weights']).name}",
        "",
        "o_O-style DR severity regressor (koch_explore.detect, preset "
        f"`{tc['preset']}`), trained from scratch by this project's own script. No pretrained weights.",
        "",
        "## Data",
        f"- Training: EyePACS `images_256` (Kaggle 2015, colour-enhanced by the re-hoster), patient-disjoint split "
        f"(val_fraction={tc['val_fraction']} of patients, split_seed={tc['split_seed']})"
        + (", plus the APTOS 2019 training part (per-image split, same fraction and seed)." if tc.get("aptos") else "."),
        "- Frames whose field of view covers < 30% of the image are dropped (2 staged EyePACS strips).",
        "- Held-out patients of EyePACS/APTOS (the hidden holdout) were never seen by this project.",
        "",
        "## Training",
        f"- Command: `{command}`",
        f"- Seed {tc['seed']}, {tc['epochs']} epochs planned, batch {tc['batch_size']}, AdamW lr {tc['lr']} "
        f"(warm-up + cosine), weight decay {tc['weight_decay']}, bf16 autocast={tc['amp']}, EMA {tc['ema_decay']}; "
        "sampling annealed from class-balanced to natural x (1,2,2,2,2) over "
        f"{tc['balance_epochs']} epochs; MSE on the grade; rotation/flip/zoom/translation/brightness/contrast.",
        f"- Hardware: {hardware}.",
        f"- Grade thresholds (fit for QWK on the EyePACS validation split): {', '.join(f'{t:.3f}' for t in fig['thresholds'])}.",
        "",
        f"## Measured (test-time augmentation: {'8 flips/rotations' if fig['tta'] else 'none'})",
        "| set | n | QWK (stored cuts) | QWK split-half | accuracy | AUC referable (grade >= 2) |",
        "|---|---|---|---|---|---|",
        f"| EyePACS validation (patient-disjoint) | {v['n']} | {f3(v['qwk'])} | {f3(v['qwk_split_half'])} | {f3(v['accuracy'])} | {f3(v['auc_referable'])} |",
    ]
    if a:
        lines.append(f"| APTOS 2019 validation (other camera/population) | {a['n']} | {f3(a['qwk'])} | {f3(a['qwk_split_half'])} | {f3(a['accuracy'])} | {f3(a['auc_referable'])} |")
    if nat:
        lines.append(f"| EyePACS natural-colour photos of validation patients | {nat['n']} | {f3(nat['qwk'])} | - | {f3(nat['accuracy'])} | {f3(nat['auc_referable'])} |")
    lines += [
        "",
        "QWK with stored cuts is optimistic (the cuts were fit on that split); the split-half figure fits the cuts on "
        "half of the patients and scores the other half.",
        "",
        "Mean predicted severity by true grade 0-4 (EyePACS validation): "
        + " / ".join(f3(x) for x in v["mean_severity_by_grade"]) + ".",
        "",
        "Confusion matrix, EyePACS validation (rows true grade 0-4, columns predicted):",
        "",
        "```",
        *[" ".join(f"{c:5d}" for c in row) for row in v["confusion"]],
        "```",
    ]
    fit = fig.get("fit")
    if fit:
        vp = fit["val_pair"]
        lines += [
            "",
            "## Fit, and the fellow eye",
            "| single view, refit cuts | n | QWK | AUC referable |",
            "|---|---|---|---|",
            f"| EyePACS training eyes | {fit['train_n']} | {f3(fit['train_qwk_refit_single'])} | {f3(fit['train_auc_single'])} |",
            f"| EyePACS validation eyes | {fit['val_n']} | {f3(fit['val_qwk_refit_single'])} | {f3(fit['val_auc_single'])} |",
            "",
            ("The eyes it learned from score no higher than new patients (AUC within 0.03): the net under-fits, so "
             "the way up is more resolution, capacity or training rather than regularisation."
             if fit["train_auc_single"] < fit["val_auc_single"] + 0.03 else
             "Training eyes score more than 0.03 AUC above validation eyes: the net has started to over-fit."),
            "",
            f"Fellow-eye blend (`--pair-blend W`), W = {fit['pair_weight']:.2f} chosen on the training eyes "
            f"(their AUC {f3(fit['pair_weight_train_auc'][str(fit['pair_weight'])])}); on the validation split, "
            f"{'with' if fig['tta'] else 'without'} TTA: QWK split-half {f3(vp['qwk_split_half'])} "
            f"(refit {f3(vp['qwk_refit'])}), AUC referable {f3(vp['auc_referable'])}.",
        ]
    if d:
        lines += [
            "",
            f"DRIVE (40 screening photos, mostly healthy, natural colour): mean severity {d['mean_severity']:.3f} vs "
            f"{fig['eyepacs_val_mean_severity_grade_ge2']:.3f} for EyePACS validation grade >= 2 and "
            f"{fig['eyepacs_val_mean_severity_grade0']:.3f} for grade 0; DRIVE predicted grades 0-4: {d['grade_counts']}.",
        ]
    lines += [
        "",
        f"Weights hash (sha256 over tensors): `{fig['weights_hash']}`. Stored as fp16 safetensors, loaded as float32.",
        "Regenerate these figures: `koch-explore detector card --weights <this file>`.",
        "",
    ]
    return "\n".join(lines)


def hardware_string() -> str:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    return f"{dev}, {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
