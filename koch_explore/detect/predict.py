"""The detector's predictions on arrays: batches on the device, 8x test-time augmentation, and a
split's grading figures."""

from __future__ import annotations

import numpy as np
import torch

from ..core import stats
from ..core.images import as_image_batch, model_device
from ..data.graded import GradedArrays
from .model import Detector


def to_tensor(batch_u8: np.ndarray, device) -> torch.Tensor:
    t = torch.from_numpy(batch_u8).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    return t.contiguous(memory_format=torch.channels_last)


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 flips/90-degree rotations (test-time augmentation)."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def severity_of(model: Detector, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Severity (B,) float32 of a batch already on the model's device; ``tta`` averages the 8 flips/rotations."""
    if not tta:
        return model(x).float()
    return torch.stack([model(dihedral(x, k)).float() for k in range(8)]).mean(0)


@torch.no_grad()
def predict_arrays(model: Detector, images: np.ndarray, device, batch_size: int = 64, tta: bool = False, amp: bool = False) -> np.ndarray:
    model.eval()
    out = []
    for s in range(0, len(images), batch_size):
        x = to_tensor(images[s : s + batch_size], device)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
            out.append(severity_of(model, x, tta).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def evaluate_split(model: Detector, arr: GradedArrays, device, tta: bool, amp: bool) -> tuple[dict, np.ndarray]:
    sev = predict_arrays(model, arr.images, device, tta=tta, amp=amp)
    t = stats.fit_thresholds(sev, arr.grades)
    rep = stats.grading_report(sev, arr.grades, t)
    rep["qwk_split_half"] = stats.split_half_qwk(sev, arr.grades, arr.groups)
    return rep, sev


def grading_figures(model, data: str = "eyepacs", split: str = "val", root: str | None = None, tta: bool = False) -> dict:
    """How well any grader grades a split of :func:`~koch_explore.data.graded.graded_eyes` ("eyepacs":
    the patient-disjoint EyePACS validation eyes the shipped detector was validated on; "phantom"):
    n, QWK with cuts fit on the split and split-half (cuts fit on half the patients, scored on the
    other), accuracy, referable AUC, confusion, mean severity by grade."""
    from ..data.graded import graded_eyes

    arr = graded_eyes(split, model.input_size, data=data, root=root, aptos=False)
    rep, _ = evaluate_split(model, arr, model_device(model), tta, amp=False)
    return rep


@torch.no_grad()
def predict_severity(detector, images, tta: bool = False) -> np.ndarray:
    """Severity (0-4 ICDR scale) of ``images`` (one image or a batch, numpy or tensor, see
    :func:`~koch_explore.core.images.as_image_batch`); ``tta`` averages the 8 flips/rotations."""
    was = detector.training
    detector.eval()
    try:
        return severity_of(detector, as_image_batch(images).to(model_device(detector)), tta).cpu().numpy()
    finally:
        detector.train(was)


def load_for_detector(paths, size: int) -> np.ndarray:
    """Read, FOV-crop, pad and resize images to the detector's input (uint8 N x S x S x 3); a bad file
    raises :class:`~koch_explore.data.io.FundusReadError` naming it."""
    from ..data.io import read_image
    from ..data.preprocess import prepare_fundus

    out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        img, _ = prepare_fundus(read_image(p), size, path=p)
        out[i] = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return out


def evaluate_folder(model: Detector, images, labels, device="cpu", tta: bool = False, pair_blend: float = 0.0) -> dict:
    """Grade a folder of photos against a label CSV (EyePACS ``image,level`` or APTOS
    ``id_code,diagnosis``) with the model's stored cuts: QWK, accuracy, referable AUC, confusion.
    ``pair_blend`` W mixes each eye's severity with its fellow eye's (:func:`~koch_explore.core.stats.paired_eye_blend`)."""
    from ..data.datasets import index_graded_images

    items = index_graded_images(images, labels)
    sev = predict_arrays(model, load_for_detector([it.path for it in items], model.input_size), device, tta=tta)
    if pair_blend:
        sev = stats.paired_eye_blend(sev, [it.name for it in items], pair_blend)
    grades = np.array([it.grade for it in items])
    return stats.grading_report(sev, grades, model.thresholds.cpu().numpy())


def predict_files(model: Detector, paths, device="cpu") -> list[dict]:
    """Severity and grade of each photo: ``[{"image", "severity", "grade", "grade_name"}]``."""
    from .model import GRADE_NAMES

    sev = predict_arrays(model, load_for_detector(paths, model.input_size), device)
    grades = model.grade(torch.from_numpy(sev)).tolist()
    return [{"image": str(p), "severity": float(s), "grade": int(g), "grade_name": GRADE_NAMES[g]} for p, s, g in zip(paths, sev, grades)]
