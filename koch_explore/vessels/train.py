"""Training the vessel segmenter: patches biased toward vessels, flips/rotations/scale and
brightness/contrast/gamma, BCE + Dice inside the FOV, AdamW + cosine, EMA, atomic checkpoints,
resume, time budget. The threshold is fit on training images held out from the optimisation,
never on DRIVE test."""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.runtime import atomic_write, resolve_amp, resolve_device
from ..core.training import EMA, TrainingLoop
from .evaluate import PixelScores, best_f1_threshold, dataset_root
from .model import VesselConfig, VesselSegmenter, WorkingGeometry, as_rgb


@dataclass
class VesselTrainConfig:
    """One training run. ``steps`` and ``schedule_minutes`` both bound the schedule: the cosine learning
    rate (and the DropBlock ramp) follow ``progress = max(step / steps, minutes / schedule_minutes)``,
    so a time-boxed run still anneals fully and ends with a low learning rate."""

    dataset: str = "DRIVE"
    """Training set: "DRIVE" (its FOV masks) or "CHASE_DB1" (estimated FOV); its ``training`` split."""
    root: str | None = None
    """Data root holding DRIVE/ (or the dataset folder itself); default: KOCH_DATA, ../shared/data, ./data."""
    out: str = "runs/vessels"
    """Run folder: last.pt (resumable), best.safetensors (EMA weights + threshold), history.json."""
    val_images: int = 4
    """Training images held out (the last ones by id; DRIVE: 37-40) to choose the threshold and the
    checkpoint. DRIVE test is never seen by training."""
    steps: int = 10000
    """Optimisation steps at most (~0.2 s each on two free CPU cores)."""
    schedule_minutes: float | None = None
    """Wall-clock length of the whole schedule (validation included, summed over resumes): the run anneals
    and ends when this many minutes of training have passed, or ``steps``, whichever comes first."""
    max_minutes: float | None = None
    """Stop cleanly (checkpoint written; ``--resume`` continues) after this many minutes of training in this
    invocation, wherever the schedule stands (:class:`~koch_explore.core.training.TrainingLoop`: the one
    meaning in every trainer)."""
    eval_every: int = 250
    """Validate the EMA weights on the held-out images (and checkpoint) every this many steps."""
    checkpoint_minutes: float = 5.0
    """Also write last.pt at least this often."""
    batch_size: int = 16
    """Patches per step."""
    patch: int = 96
    """Patch side in px at the working scale (a multiple of 2**depth)."""
    vessel_fraction: float = 0.5
    """Share of patch centres drawn on vessel pixels; the rest anywhere in the FOV (rim included)."""
    rotate_degrees: float = 20.0
    """Small rotation, uniform in +-this, on top of a random 90-degree rotation and flip."""
    scale: float = 1.25
    """Zoom, log-uniform in [1/scale, scale] (vessel calibre differs between cameras)."""
    gamma: float = 1.4
    """Gamma, log-uniform in [1/gamma, gamma], applied to the [0, 1] image before normalisation."""
    contrast: float = 0.25
    """Contrast factor uniform in 1 +- this, about the FOV mean."""
    brightness: float = 0.08
    """Brightness offset uniform in +- this."""
    dice_weight: float = 1.0
    """Loss = BCE + dice_weight * soft Dice, both over FOV pixels only."""
    lr: float = 2e-3
    """AdamW peak learning rate (cosine decay to 2% of it)."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up."""
    dropblock_ramp: float = 0.3
    """DropBlock probability rises linearly to its configured value over this share of the schedule."""
    ema_decay: float = 0.995
    """EMA of the weights (BN statistics included): what is validated and exported."""
    amp: bool | None = None
    """bf16 autocast for the network (not the normalisation or the loss). Default (unset): on where bf16
    is native (CUDA, CPUs with AVX512-BF16/AMX), off on other CPUs, where emulated bf16 is far slower."""
    seed: int = 0
    """Seeds the initial weights and, with the step number, every batch (resume draws the same patches)."""
    device: str = "auto"
    """"auto" (CUDA when available), "cpu", "cuda", "cuda:1" ..."""
    num_threads: int | None = None
    """torch CPU threads for this run (restored afterwards); default: torch's own choice."""
    model: VesselConfig = field(default_factory=VesselConfig)
    """Architecture (the CLI exposes its fields as flags too)."""


def split_items(items: list[dict], val_images: int) -> dict[str, list[dict]]:
    """{"train", "val"}: the last ``val_images`` by name are held out."""
    items = sorted(items, key=lambda it: it["name"])
    if not 0 <= val_images < len(items):
        raise ValueError(f"val_images={val_images} leaves no training image out of {len(items)}")
    cut = len(items) - val_images
    return {"train": items[:cut], "val": items[cut:]}


def load_training_data(cfg: VesselTrainConfig) -> dict[str, list[dict]]:
    from ..data.datasets import VesselSegmentation

    ds = VesselSegmentation(cfg.dataset, "training", root=dataset_root(cfg.dataset, cfg.root))
    return split_items([ds[i] for i in range(len(ds))], cfg.val_images)


class PatchSampler:
    """Augmented context crops from training images held at the working scale.

    Each sample is one ``grid_sample`` of (RGB, FOV, vessels) through a random affine map: a
    90-degree rotation and flip, a small rotation and a zoom, centred on a FOV or vessel pixel.
    Crops are ``patch + 2 * margin`` wide; the margin feeds the local contrast normalisation, and
    the trainer keeps the central ``patch`` (see :class:`LocalContrastNorm`). Photometric changes
    (gamma, contrast, brightness) are applied inside the FOV before the normalisation, as a
    different camera would make them.
    """

    def __init__(self, items: list[dict], cfg: VesselTrainConfig, margin: int):
        self.cfg = cfg
        self.crop = cfg.patch + 2 * margin
        self.images: list[torch.Tensor] = []
        self.centres: list[tuple[np.ndarray, np.ndarray, int]] = []
        for it in items:
            geo = WorkingGeometry.of(it["fov"], cfg.model.fov_diameter)
            fov = geo.to_working(it["fov"])
            img = geo.to_working(as_rgb(it["image"])) * fov[:, :, None]
            ves = geo.to_working(it["vessels"]) & fov
            stack = np.concatenate([img, fov[:, :, None], ves[:, :, None]], axis=2).astype(np.float32)
            self.images.append(torch.from_numpy(np.ascontiguousarray(stack.transpose(2, 0, 1)))[None])
            w = fov.shape[1]
            self.centres.append((np.flatnonzero(fov), np.flatnonzero(ves), w))
        if not self.images:
            raise ValueError("no training images")

    def affine(self, rng: np.random.Generator, shape: tuple[int, int], centre: tuple[float, float],
               identity: bool = False) -> torch.Tensor:
        """``theta`` for ``F.affine_grid`` mapping the crop onto the source image around ``centre``
        (x, y in source pixels); output pixel j sits at centre + A (j - (crop - 1) / 2)."""
        c = self.cfg
        if identity:
            a = np.eye(2)
        else:
            angle = rng.integers(4) * (math.pi / 2) + math.radians(rng.uniform(-c.rotate_degrees, c.rotate_degrees))
            zoom = math.exp(rng.uniform(-math.log(c.scale), math.log(c.scale)))
            flip = np.diag([-1.0 if rng.random() < 0.5 else 1.0, 1.0])
            rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
            a = rot @ flip / zoom
        h, w = shape
        size = np.array([w, h], dtype=np.float64)
        theta = np.zeros((2, 3))
        theta[:, :2] = a * (self.crop / size)[:, None]
        theta[:, 2] = (2 * np.asarray(centre) + 1) / size - 1
        return torch.tensor(theta, dtype=torch.float32)[None]

    def sample(self, rng: np.random.Generator, index: int, identity: bool = False,
               top_left: tuple[int, int] | None = None) -> torch.Tensor:
        """One (5, crop, crop) crop of image ``index``: RGB, FOV, vessels (soft, bilinear)."""
        src = self.images[index]
        h, w = src.shape[-2:]
        if top_left is not None:
            cy, cx = top_left[0] + (self.crop - 1) / 2, top_left[1] + (self.crop - 1) / 2
        else:
            fov_idx, ves_idx, width = self.centres[index]
            pool = ves_idx if (ves_idx.size and rng.random() < self.cfg.vessel_fraction) else fov_idx
            flat = int(pool[rng.integers(pool.size)])
            cy, cx = flat // width + rng.uniform(-0.5, 0.5), flat % width + rng.uniform(-0.5, 0.5)
        theta = self.affine(rng, (h, w), (cx, cy), identity)
        grid = F.affine_grid(theta, [1, 5, self.crop, self.crop], align_corners=False)
        return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]

    def photometric(self, rng: np.random.Generator, x: torch.Tensor, fov: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        b = x.shape[0]
        gamma = torch.tensor(np.exp(rng.uniform(-math.log(c.gamma), math.log(c.gamma), (b, 1, 1, 1))), dtype=torch.float32)
        contrast = torch.tensor(1 + rng.uniform(-c.contrast, c.contrast, (b, 1, 1, 1)), dtype=torch.float32)
        bright = torch.tensor(rng.uniform(-c.brightness, c.brightness, (b, 1, 1, 1)), dtype=torch.float32)
        x = x.clamp_min(0).pow(gamma)
        mean = (x * fov).sum(dim=(2, 3), keepdim=True) / fov.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
        return (((x - mean) * contrast + mean + bright).clamp(0, 1)) * fov

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(RGB (B, 3, C, C), FOV (B, 1, C, C), vessels (B, 1, C, C)), deterministic in (seed, step)
        so a resumed run draws the same patches."""
        rng = np.random.default_rng([self.cfg.seed, step])
        crops = torch.stack([self.sample(rng, int(rng.integers(len(self.images)))) for _ in range(self.cfg.batch_size)])
        fov = (crops[:, 3:4] > 0.5).float()
        return self.photometric(rng, crops[:, :3], fov), fov, crops[:, 4:5] * fov


def vessel_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, dice_weight: float) -> torch.Tensor:
    """BCE + soft Dice over FOV pixels only: BCE for calibrated probabilities, Dice because a vessel
    tree is ~12% of the FOV and Dice does not let the background dominate thin capillaries."""
    logits = logits.float()
    n = mask.sum().clamp_min(1.0)
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * mask).sum() / n
    p = torch.sigmoid(logits) * mask
    t = target * mask
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    return bce + dice_weight * dice


def _lr(progress: float, step: int, cfg: VesselTrainConfig) -> float:
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    return cfg.lr * warm * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _progress(step: int, minutes: float, cfg: VesselTrainConfig) -> float:
    by_time = minutes / cfg.schedule_minutes if cfg.schedule_minutes else 0.0
    return max(step / max(1, cfg.steps), by_time)


def _jsonable(cfg: VesselTrainConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg)))


def train(cfg: VesselTrainConfig, data: dict[str, list[dict]] | None = None, resume: bool = False,
          progress_bar: bool = True, callback=None) -> dict:
    """Train (or resume) a segmenter; returns ``{"best": ..., "history": [...], "losses": [...]}``.

    ``data`` ({"train", "val"} lists of items like ``VesselSegmentation``'s) defaults to the
    dataset's training split minus the held-out images. The best EMA weights by held-out AUC, with
    the F1-optimal held-out threshold, are in ``out/best.safetensors``. ``callback(step, record)``
    returning False stops cleanly (checkpoint written), as ``max_minutes`` does.
    """
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train(cfg, data, resume, progress_bar, callback)
    finally:
        torch.set_num_threads(threads)  # a notebook or test session keeps its own setting


def _train(cfg: VesselTrainConfig, data, resume: bool, progress_bar: bool, callback) -> dict:
    device = resolve_device(cfg.device)
    cfg = replace(cfg, amp=resolve_amp(cfg.amp, device))  # the effective switch is what gets recorded
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if resume and not (out / "last.pt").is_file():
        raise FileNotFoundError(f"{out / 'last.pt'}: no checkpoint to resume from")
    loop = TrainingLoop(out, _jsonable(cfg), steps=cfg.steps, max_minutes=cfg.max_minutes,
                        checkpoint_minutes=cfg.checkpoint_minutes, callback=callback, progress=progress_bar,
                        desc="vessels", show=("loss",), device=device)
    if resume:
        loop.check_config()  # refused before the photos are read
    if data is None:
        data = load_training_data(cfg)
    if not data.get("val"):
        raise ValueError("training needs held-out images (val_images >= 1) to choose the threshold")

    model = VesselSegmenter(cfg.model).to(device)
    margin = model.lcn.margin
    if cfg.patch % cfg.model.pad_multiple:
        raise ValueError(f"patch {cfg.patch} is not a multiple of 2**depth = {cfg.model.pad_multiple}")
    sampler = PatchSampler(data["train"], cfg, margin)
    ema = EMA(model, cfg.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loop.add_parts(model=model, ema=ema, opt=opt)
    loop.state.update(history=[], best={"auc": -1.0}, losses=[])
    if resume:
        loop.resume()
    state = loop.state
    inner = slice(margin, margin + cfg.patch)

    def step(i: int) -> dict:
        progress = _progress(i, loop.total_minutes(), cfg)
        model.train()
        for g in opt.param_groups:
            g["lr"] = _lr(progress, i, cfg)
        model.set_dropblock(cfg.model.dropblock * min(1.0, progress / max(cfg.dropblock_ramp, 1e-9)))
        x, fov, target = (t.to(device) for t in sampler.batch(i))
        z = model.lcn(x, fov)
        z, fov, target = z[..., inner, inner], fov[..., inner, inner], target[..., inner, inner]
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            logits = model.unet(z)
        loss = vessel_loss(logits, target, fov, cfg.dice_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(model, i)
        state["losses"].append(float(loss.item()))
        return {"loss": state["losses"][-1]}

    def validate(i: int) -> None:
        ema_model = VesselSegmenter(cfg.model).to(device)
        ema_model.load_state_dict(ema.state_dict())
        scores = PixelScores()
        for it in data["val"]:
            prob, _ = ema_model.segment(it["image"], it["fov"], tta=1)  # cheap; checkpoint choice only
            scores.add(prob, it["vessels"], it["fov"])
        labels, values = scores.arrays()
        t, f1 = best_f1_threshold(labels, values)
        ema_model.set_threshold(t)
        rep = scores.report(t)
        recent = state["losses"][-cfg.eval_every:]
        rec = {"step": i, "minutes": round(loop.total_minutes(), 2), "train_loss": float(np.mean(recent)) if recent else None,
               "val_auc": rep["auc"], "val_f1": f1, "threshold": t}
        state["history"].append(rec)
        msg = f"step {i}: loss {rec['train_loss'] or float('nan'):.4f} held-out auc {rep['auc']:.4f} f1 {f1:.4f} @ {t:.3f}"
        if rep["auc"] > state["best"]["auc"]:
            state["best"] = {"auc": rep["auc"], "f1": f1, "threshold": t, "step": i,
                             "held_out": [it["name"] for it in data["val"]]}
            ema_model.save(out / "best.safetensors", metadata={
                "train_config": _jsonable(cfg), "held_out": state["best"]["held_out"], "best_step": i,
                "held_out_auc": rep["auc"], "held_out_f1": f1, "held_out_accuracy": rep["accuracy"],
            })
            msg += "  * best"
        print(msg, flush=True)
        atomic_write(out / "history.json", json.dumps(state["history"], indent=1))

    def every(i: int, record: dict) -> None:
        if i % cfg.eval_every == 0:
            validate(i)
            loop.checkpoint()

    loop.run(step, until=lambda i: _progress(i, loop.total_minutes(), cfg) >= 1.0, after_step=every)
    if not loop.stopped and (not state["history"] or state["history"][-1]["step"] != loop.step):
        validate(loop.step)  # the schedule's end is always validated
        loop.checkpoint()
    return {"best": state["best"], "history": state["history"], "losses": state["losses"]}


def export_best(out: str | os.PathLike, dest: str | os.PathLike) -> tuple[Path, Path] | None:
    """Copy a run's ``best.safetensors`` (in the run folder ``out``) to ``dest``, atomically;
    returns (source, destination), or None when the run wrote no best weights."""
    best_path = Path(out) / "best.safetensors"
    if not best_path.is_file():
        return None
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(best_path, tmp)
    os.replace(tmp, dest)
    return best_path, dest
