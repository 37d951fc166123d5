"""The detector's predictions on arrays: batches on the device, 8x test-time augmentation, and a
split's grading figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..core import stats
from ..core.images import as_image_batch, model_device
from ..core.runtime import eval_mode
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
    """Severity of uint8 (N, S, S, 3) ``images`` in batches, in eval mode (the model's own mode restored)."""
    out = []
    with eval_mode(model):
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
def predict_severity(detector, images, tta: bool = False, batch_size: int | None = None) -> np.ndarray:
    """Severity (0-4 ICDR scale) of ``images`` (one image or a batch, numpy or tensor, see
    :func:`~koch_explore.core.images.as_image_batch`); ``tta`` averages the 8 flips/rotations.
    ``batch_size``: images per forward pass (None: all at once); each batch is read into floats on its
    own, so a large uint8 array is never held as floats whole."""
    if batch_size is not None and getattr(images, "ndim", np.ndim(images)) == 4:
        parts = [predict_severity(detector, images[s : s + batch_size], tta) for s in range(0, len(images), batch_size)]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)
    x = as_image_batch(images).to(model_device(detector))
    with eval_mode(detector):
        return severity_of(detector, x, tta).cpu().numpy()


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


def iter_file_severities(model, paths, batch_size: int = 32, tta: bool = False, progress: bool = False, desc: str = "predict"):
    """Severities of the photo files ``paths``, one batch at a time (yields float32 arrays): memory holds
    one batch of photos whatever the number of files, so a whole screening archive streams through."""
    from tqdm.auto import tqdm

    device = model_device(model)
    with tqdm(total=len(paths), desc=desc, unit="photo", disable=not progress, mininterval=2) as bar:
        for s in range(0, len(paths), batch_size):
            chunk = paths[s:s + batch_size]
            yield predict_arrays(model, load_for_detector(chunk, model.input_size), device, batch_size=batch_size, tta=tta)
            bar.update(len(chunk))


def prediction_rows(model, paths, severities: np.ndarray) -> list[dict]:
    """``[{"image", "severity", "grade", "grade_name"}]`` with the model's stored grade cuts."""
    from .model import GRADE_NAMES

    grades = model.grade(torch.from_numpy(np.asarray(severities, dtype=np.float32))).tolist()
    return [{"image": str(p), "severity": float(s), "grade": int(g), "grade_name": GRADE_NAMES[g]}
            for p, s, g in zip(paths, severities, grades)]


def predict_to_file(model, paths, out=None, shard_size: int = 0, batch_size: int = 32, tta: bool = False,
                    progress: bool = True) -> list[dict] | None:
    """Rows of :func:`predict_files`, also written to ``out`` when given; with ``shard_size`` through
    :func:`predict_sharded` (needs ``out``; None on torchrun ranks other than 0)."""
    if shard_size:
        if out is None:
            raise ValueError("--shard-size needs --out: the shards are kept beside the predictions file")
        return predict_sharded(model, paths, out, shard_size, batch_size, tta, progress)
    rows = predict_files(model, paths, batch_size, tta, progress)
    if out is not None:
        write_predictions(rows, out)
    return rows


def predict_files(model, paths, batch_size: int = 32, tta: bool = False, progress: bool = False) -> list[dict]:
    """Severity and grade of each photo file, streamed batch by batch: ``[{"image", "severity", "grade",
    "grade_name"}]``; a bad file raises :class:`~koch_explore.data.io.FundusReadError` naming it."""
    from ..core.shards import check_batch_size

    check_batch_size(batch_size)
    paths = [str(p) for p in paths]
    sev = np.concatenate(list(iter_file_severities(model, paths, batch_size, tta, progress)) or [np.zeros(0, np.float32)])
    return prediction_rows(model, paths, sev)


def predictions_shard_dir(out) -> Path:
    """Where the shards of the predictions file ``out`` live: beside it, named by its stem like a
    bank's (``pred.csv`` -> ``pred.shards/``)."""
    p = Path(out)
    return p.with_name(p.stem + ".shards")


def predict_sharded(model, paths, out, shard_size: int = 512, batch_size: int = 32, tta: bool = False,
                    progress: bool = True) -> list[dict] | None:
    """Predict ``paths`` shard by shard into the file ``out`` (``.csv``: image,severity,grade,grade_name;
    otherwise a JSON list of rows), resumable and split across torchrun ranks like isolation (see
    :mod:`koch_explore.core.shards`): each shard's severities are written atomically into
    :func:`predictions_shard_dir`, a re-run with the same arguments skips them, rank 0 merges them in order. Returns the rows on rank 0,
    None on the others. ``shard_size`` must be a multiple of ``batch_size`` so every batch holds the same
    photos as in one pass, and the severities are the one-pass severities."""
    from ..core.runtime import atomic_write
    from ..core.shards import check_batch_size, path_list_digest, run_in_shards

    check_batch_size(batch_size, shard_size)
    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("no photos to predict")
    out = Path(out)
    folder = predictions_shard_dir(out)
    fingerprint = {"photos": len(paths), "photo_list_sha256": path_list_digest(paths), "shard_size": shard_size,
                   "batch_size": batch_size, "model": model.weights_hash(), "tta": tta}
    shard = lambda k: folder / f"shard_{k:05d}.json"

    def work(k: int, items: slice) -> None:
        # severities only: the rows are named from this run's paths (a resumed run may reach the same
        # photos through another folder of links; the fingerprint compares the files they resolve to)
        sev = np.concatenate(list(iter_file_severities(model, paths[items], batch_size, tta)))
        atomic_write(shard(k), json.dumps({"severity": sev.tolist()}))

    n_shards = run_in_shards(len(paths), shard_size, folder, fingerprint, work, lambda k: shard(k).is_file(), "predict", progress)
    if n_shards is None:
        return None
    sev = []
    for k in range(n_shards):
        try:
            part = json.loads(shard(k).read_text())["severity"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{shard(k)}: not a readable shard (edited or truncated); delete it and run again to redo it")
        if len(part) != len(paths[k * shard_size:(k + 1) * shard_size]):
            raise ValueError(f"{shard(k)}: holds {len(part)} severities for {len(paths[k * shard_size:(k + 1) * shard_size])} "
                             f"photos (edited?); delete it and run again to redo it")
        sev += part
    rows = prediction_rows(model, paths, np.asarray(sev, dtype=np.float32))
    write_predictions(rows, out)
    return rows


def write_predictions(rows: list[dict], out) -> Path:
    """Write prediction rows atomically: CSV when ``out`` ends in .csv, else a JSON list."""
    import csv
    import io

    from ..core.runtime import atomic_write

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["image", "severity", "grade", "grade_name"], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        atomic_write(out, buf.getvalue())
    else:
        atomic_write(out, json.dumps(rows))
    return out


def evaluate_folder(model, images, labels, tta: bool = False, pair_blend: float = 0.0, batch_size: int = 32,
                    out=None, shard_size: int = 0, progress: bool = False) -> dict | None:
    """Grade a folder of photos against a label CSV (EyePACS ``image,level`` or APTOS
    ``id_code,diagnosis``) with the model's stored cuts: QWK, accuracy, referable AUC, confusion.
    Photos stream batch by batch; with ``out`` the per-photo predictions are written there too, and with
    ``shard_size`` they go through :func:`predict_sharded` (resumable, torchrun ranks; None on ranks > 0).
    ``pair_blend`` W mixes each eye's severity with its fellow eye's (:func:`~koch_explore.core.stats.paired_eye_blend`)."""
    from ..data.datasets import index_graded_images

    items = index_graded_images(images, labels)
    paths = [str(it.path) for it in items]
    rows = predict_to_file(model, paths, out, shard_size, batch_size, tta, progress)
    if rows is None:
        return None
    sev = np.array([r["severity"] for r in rows], dtype=np.float32)
    if pair_blend:
        sev = stats.paired_eye_blend(sev, [it.name for it in items], pair_blend)
    grades = np.array([it.grade for it in items])
    return stats.grading_report(sev, grades, model.thresholds.cpu().numpy())
