"""Training the detector on image-level grades (EyePACS, optionally + APTOS; or phantoms for tests).

One loop, single process or under ``torchrun`` (DDP: gloo on CPU, NCCL on CUDA). What it does,
after o_O and what was measured on this machine (../shared/docs/CALIBRATION.md):

* images are held in memory as uint8 at the training size and augmented in batches on the
  device (rotation 0-360, flips, zoom, translation, brightness/contrast inside the FOV);
* each epoch samples with replacement from class weights that move from balanced toward
  ``final_class_weights`` x natural frequencies (o_O annealed the same way) so the rare severe
  grades are learned early without a biased final calibration;
* MSE on the grade, AdamW with warm-up and cosine decay, an EMA of the weights (BN buffers too)
  that is what gets validated and shipped - validation QWK jumps +-0.1 between epochs otherwise;
* validation on a patient-disjoint split: thresholds fit for QWK, plus a split-half QWK (cuts fit
  on half the patients, scored on the other half) that selects the checkpoint;
* ``last.pt`` is written atomically every epoch (and every ``checkpoint_minutes``), ``--resume``
  continues from it; the best EMA weights are exported as safetensors with their figures.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .detector import Detector
from . import metrics


@dataclass
class TrainConfig:
    data: str = "eyepacs"
    """"eyepacs" (real photos under the data root) or "phantom" (generated, for tests/quickstart)."""
    root: str | None = None
    """Data root (default: KOCH_DATA, ../shared/data, ./data)."""
    preset: str = "o_O-256"
    """Detector preset (see detector.PRESETS)."""
    out: str = "runs/detector"
    """Run folder: last.pt, best.safetensors, history.json."""
    epochs: int = 40
    batch_size: int = 32
    """Global batch size (split over DDP ranks)."""
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    val_fraction: float = 0.15
    """Share of *patients* held out for validation."""
    split_seed: int = 0
    seed: int = 0
    aptos: bool = True
    """Add APTOS 2019 (train part) to training; its validation part is always reported."""
    balance_epochs: float = 12.0
    """Epochs over which sampling moves from class-balanced to final_class_weights x natural."""
    final_class_weights: tuple[float, ...] = (1.0, 2.0, 2.0, 2.0, 2.0)
    ema_decay: float = 0.998
    amp: bool | None = None
    """bf16 autocast. Default (unset): on for CUDA and for CPUs with native bf16 (AVX512-BF16/AMX),
    where it was measured ~1.7x faster; off on other CPUs, where emulated bf16 made a step 17x slower."""
    device: str = "auto"
    phantom_count: int = 400
    """Images generated for --data phantom."""
    phantom_size: int = 256
    max_minutes: float | None = None
    """Stop cleanly (checkpoint written) after this many minutes of training."""
    checkpoint_minutes: float = 10.0
    resample: str = "bilinear"
    """Interpolation of the augmentation's rotation/zoom/shift: "bilinear" or "bicubic". Every training
    image is resampled, and bilinear resampling at a half-pixel offset costs the shipped net 0.034
    validation AUC (bicubic 0.015): it blurs the one- and two-pixel lesions a 256 px photo has. Yet
    a warm restart with bicubic (8 epochs) ended at the same validation AUC (0.81): see the README."""
    referable_weight: float = 0.0
    """Weight of a logistic term on the severity against the referable cut (grade >= 2) added to the
    MSE (see :func:`severity_loss`). MSE spends as much effort separating grade 3 from 4 as 1 from 2;
    this term puts extra weight on the one cut a screening programme acts on. Measured as a warm
    restart of the shipped weights (weight 1): validation AUC within 0.01 of the same run without it."""
    eval_tta: bool = False
    """8x flip/rotation test-time augmentation in per-epoch validation (slower)."""
    num_threads: int | None = None
    init: str | None = None
    """Warm start: detector safetensors whose weights (BN statistics included) initialise the
    model and its EMA; the schedule starts fresh (a warm restart, useful to extend a finished run).
    It may come from another input size of the same architecture (see :func:`warm_start`)."""


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@dataclass
class GradedArrays:
    images: np.ndarray  # uint8 (N, S, S, 3)
    grades: np.ndarray  # int64 (N,)
    names: list[str]
    groups: list[str]  # patient ids (split and split-half QWK are by patient)
    source: list[str] = field(default_factory=list)


def _load_uint8(paths, size: int, desc: str) -> np.ndarray:
    from tqdm.auto import tqdm

    from .data.io import read_raw

    out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(tqdm(paths, desc=desc, leave=False, mininterval=2)):
        arr = read_raw(p)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        arr = arr[:, :, :3]
        if arr.dtype != np.uint8:
            arr = (arr.astype(np.float32) / np.iinfo(arr.dtype).max * 255).astype(np.uint8)
        if arr.shape[0] != size or arr.shape[1] != size:
            interp = cv2.INTER_AREA if arr.shape[0] > size else cv2.INTER_CUBIC
            arr = cv2.resize(arr, (size, size), interpolation=interp)
        out[i] = arr
    return out


def graded_split(dataset: str, cfg: TrainConfig):
    """(items, train names, validation names) of ``dataset`` ("EyePACS" or "APTOS2019") as training
    splits it: EyePACS by patient, APTOS per image (its ids carry no patient). Raises
    FileNotFoundError when the dataset is not under the data root."""
    from .data.datasets import index_graded_images, patient_split
    from .data.roots import dataset_dir

    d = dataset_dir(dataset, cfg.root)
    if dataset == "EyePACS":
        items = index_graded_images(d / "images_256", d / "trainLabels.csv")
        train, val = patient_split([it.name for it in items], cfg.val_fraction, cfg.split_seed)
    elif dataset == "APTOS2019":
        items = index_graded_images(d, d / "labels.csv")
        train, val = patient_split([it.name for it in items], cfg.val_fraction, cfg.split_seed, patient_id=lambda n: n)
    else:
        raise ValueError(f"graded dataset {dataset!r}: EyePACS or APTOS2019")
    return items, train, val


def load_graded(cfg: TrainConfig, size: int, splits: tuple[str, ...] = ("train", "val", "aptos_val")) -> dict[str, GradedArrays]:
    """Train / validation arrays: {"train", "val"} (+ "aptos_val" when APTOS is present).

    ``splits`` limits what is decoded (evaluation needs no training images)."""
    if cfg.data == "phantom":
        return _load_phantom(cfg, size)
    if cfg.data != "eyepacs":
        raise ValueError(f"unknown training data {cfg.data!r} (eyepacs or phantom)")
    items, train_names, val_names = graded_split("EyePACS", cfg)
    by_name = {it.name: it for it in items}
    out = {}
    for split, names in (("train", train_names), ("val", val_names)):
        if split not in splits:
            continue
        its = [by_name[n] for n in names]
        out[split] = GradedArrays(
            _load_uint8([it.path for it in its], size, f"EyePACS {split}"),
            np.array([it.grade for it in its], dtype=np.int64),
            names,
            [n.split("_")[0] for n in names],
            ["eyepacs"] * len(names),
        )
    try:
        a_items, a_train, a_val = graded_split("APTOS2019", cfg)
    except FileNotFoundError:
        a_items = None
    if a_items is not None:
        a_by = {it.name: it for it in a_items}
        if "aptos_val" in splits:
            out["aptos_val"] = GradedArrays(
                _load_uint8([a_by[n].path for n in a_val], size, "APTOS val"),
                np.array([a_by[n].grade for n in a_val]),
                a_val,
                a_val,
                ["aptos"] * len(a_val),
            )
        if cfg.aptos and "train" in splits:
            tr = out["train"]
            out["train"] = GradedArrays(
                np.concatenate([tr.images, _load_uint8([a_by[n].path for n in a_train], size, "APTOS train")]),
                np.concatenate([tr.grades, np.array([a_by[n].grade for n in a_train])]),
                tr.names + a_train,
                tr.groups + a_train,
                tr.source + ["aptos"] * len(a_train),
            )
    return {k: _drop_partial_frames(v) for k, v in out.items()}


def _drop_partial_frames(arr: GradedArrays, min_fov: float = 0.3) -> GradedArrays:
    """Drop frames whose field of view covers < 30% of the square: a few staged EyePACS images
    are thin strips of a fundus (e.g. 15222_left), and their grade is not visible in them."""
    frac = (arr.images.max(axis=3) > 10).mean(axis=(1, 2))
    keep = np.flatnonzero(frac >= min_fov)
    if len(keep) == len(frac):
        return arr
    dropped = [arr.names[i] for i in np.flatnonzero(frac < min_fov)]
    print(f"dropping {len(dropped)} partial frames (FOV < {min_fov:.0%}): {', '.join(dropped[:8])}", flush=True)
    pick = lambda xs: [xs[i] for i in keep]
    return GradedArrays(arr.images[keep], arr.grades[keep], pick(arr.names), pick(arr.groups), pick(arr.source))


def _load_phantom(cfg: TrainConfig, size: int) -> dict[str, GradedArrays]:
    from .phantom import generate_phantom

    n = cfg.phantom_count
    imgs = np.zeros((n, size, size, 3), dtype=np.uint8)
    grades = np.zeros(n, dtype=np.int64)
    for i in range(n):
        ph = generate_phantom(seed=cfg.seed * 1_000_003 + i, size=cfg.phantom_size)
        im = ph.image if ph.image.shape[0] == size else cv2.resize(ph.image, (size, size), interpolation=cv2.INTER_AREA)
        imgs[i] = (np.clip(im, 0, 1) * 255 + 0.5).astype(np.uint8)
        grades[i] = ph.grade
    names = [f"phantom_{i:05d}" for i in range(n)]
    n_val = max(1, int(round(n * cfg.val_fraction)))
    sl = {"train": slice(n_val, n), "val": slice(0, n_val)}
    return {k: GradedArrays(imgs[s], grades[s], names[s], names[s], ["phantom"] * len(names[s])) for k, s in sl.items()}


# ---------------------------------------------------------------------------------------------
# Augmentation (batched, on the training device)
# ---------------------------------------------------------------------------------------------


def augment(x: torch.Tensor, gen: torch.Generator, resample: str = "bilinear") -> torch.Tensor:
    """Random rotation (0-360), flip, zoom (1/1.15-1.15), translation (+-4%), brightness and
    contrast, applied inside the FOV so the black frame stays black (the model finds its FOV
    from it)."""
    b = x.shape[0]
    dev = x.device
    r = lambda *s: torch.rand(*s, generator=gen).to(dev)
    theta = r(b) * 2 * math.pi
    zoom = torch.exp((r(b) * 2 - 1) * math.log(1.15))
    flip = torch.where(r(b) < 0.5, -1.0, 1.0).to(dev)
    tx, ty = (r(b) * 2 - 1) * 0.04, (r(b) * 2 - 1) * 0.04
    cos, sin = torch.cos(theta) / zoom, torch.sin(theta) / zoom
    mat = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(mat, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode=resample, padding_mode="zeros", align_corners=False)
    fov = (x.amax(dim=1, keepdim=True) > 0.04).to(x.dtype)
    contrast = (0.75 + 0.5 * r(b, 1, 1, 1))
    bright = (r(b, 1, 1, 1) * 2 - 1) * 0.08
    colour = 1.0 + (r(b, 3, 1, 1) * 2 - 1) * 0.06
    mean = (x * fov).sum(dim=(2, 3), keepdim=True) / fov.sum(dim=(2, 3), keepdim=True).clamp_min(1)
    x = ((x - mean) * contrast + mean + bright) * colour
    return (x.clamp(0, 1) * fov).contiguous(memory_format=torch.channels_last)


def to_tensor(batch_u8: np.ndarray, device) -> torch.Tensor:
    t = torch.from_numpy(batch_u8).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    return t.contiguous(memory_format=torch.channels_last)


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 flips/90-degree rotations (test-time augmentation)."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


@torch.no_grad()
def predict_arrays(model: Detector, images: np.ndarray, device, batch_size: int = 64, tta: bool = False, amp: bool = False) -> np.ndarray:
    model.eval()
    out = []
    for s in range(0, len(images), batch_size):
        x = to_tensor(images[s : s + batch_size], device)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
            if tta:
                y = torch.stack([model(dihedral(x, k)).float() for k in range(8)]).mean(0)
            else:
                y = model(x).float()
        out.append(y.cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


# ---------------------------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------------------------


def sampling_probabilities(grades: np.ndarray, epoch: float, cfg: TrainConfig) -> np.ndarray:
    k = 5
    counts = np.bincount(grades, minlength=k).astype(np.float64)
    present = counts > 0
    balanced = np.where(present, 1.0 / np.maximum(counts, 1), 0.0)
    final = np.array(cfg.final_class_weights[:k], dtype=np.float64) * present
    p_bal = balanced[grades] / balanced[grades].sum()
    p_fin = final[grades] / final[grades].sum()
    a = min(1.0, epoch / cfg.balance_epochs) if cfg.balance_epochs > 0 else 1.0
    return (1 - a) * p_bal + a * p_fin


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


class EMA:
    """Exponential moving average of every float tensor in the state (BN running stats included)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, decay: float | None = None):
        d = self.decay if decay is None else decay
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.state[k].lerp_(v.detach(), 1 - d)
            else:
                self.state[k].copy_(v)


def atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def bf16_is_native(device) -> bool:
    """Whether bf16 autocast runs on hardware: CUDA devices that support bf16 (Ampere and later), and
    CPUs with AVX512-BF16 or AMX. Elsewhere PyTorch emulates bf16 on the CPU: an o_O-256 training step
    (batch 32, 2 threads, an AVX2-only AMD EPYC) took 57 s with autocast against 3.3 s without."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def resolve_amp(amp: bool | None, device) -> bool:
    """The autocast switch a run uses: an explicit True/False wins, None follows :func:`bf16_is_native`."""
    return bf16_is_native(device) if amp is None else bool(amp)


def setup_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(world size, rank, device) under ``torchrun`` (process group started: NCCL on CUDA, gloo on
    CPU) or (1, 0, device) in a plain process."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(device_name)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, rank, device


def evaluate_split(model: Detector, arr: GradedArrays, device, tta: bool, amp: bool) -> tuple[dict, np.ndarray]:
    sev = predict_arrays(model, arr.images, device, tta=tta, amp=amp)
    t = metrics.fit_thresholds(sev, arr.grades)
    rep = metrics.grading_report(sev, arr.grades, t)
    rep["qwk_split_half"] = metrics.split_half_qwk(sev, arr.grades, arr.groups)
    return rep, sev


def warm_start(model: Detector, path) -> Detector:
    """Copy the weights (BatchNorm statistics and grade cuts included) of the detector file ``path``
    into ``model``. The file may have been trained at another input size: with the global RMS-pool
    head no weight depends on it, which is how o_O grew its nets (128 -> 256 -> 512 px) and how a
    256 px net is warm-started at 384 px. Any other architecture difference is an error naming it."""
    from dataclasses import replace

    from .weights_io import check_config

    src = Detector.load(path)
    check_config(path, replace(src.cfg, input_size=model.cfg.input_size), model.cfg)
    model.load_state_strict(src.state_dict(), source=path)
    return model


def severity_loss(pred: torch.Tensor, grades: torch.Tensor, referable_weight: float = 0.0) -> torch.Tensor:
    """MSE of the severity against the grade, plus ``referable_weight`` x the logistic loss of
    2 (severity - 1.5) against grade >= 2. The slope 2 makes a severity one grade past the cut a
    logit of 2 (p = 0.88), so the term stops pulling once an eye sits clearly on its side and
    leaves the rest of the scale to the MSE."""
    pred = pred.float()
    loss = F.mse_loss(pred, grades)
    if referable_weight:
        referable = (grades >= 2).float()
        loss = loss + referable_weight * F.binary_cross_entropy_with_logits(2.0 * (pred - 1.5), referable)
    return loss


def train(cfg: TrainConfig, data: dict[str, GradedArrays] | None = None, resume: bool = False) -> dict:
    """Train a detector, or with ``resume`` continue from ``cfg.out/last.pt`` when it exists; returns
    the best validation figures. DDP-aware."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from tqdm.auto import tqdm

    if cfg.resample not in ("bilinear", "bicubic"):
        raise ValueError(f"resample={cfg.resample!r}: 'bilinear' or 'bicubic'")
    world, rank, device = setup_distributed(cfg.device)
    # The effective switch goes into the checkpoint, history and card, not "unset".
    cfg = replace(cfg, amp=resolve_amp(cfg.amp, device))
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    main = rank == 0
    out = Path(cfg.out)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    model = Detector(cfg.preset)
    if cfg.init:
        warm_start(model, cfg.init)
        if main:
            print(f"initialised from {cfg.init}", flush=True)
    model = model.to(device).to(memory_format=torch.channels_last)
    size = model.cfg.input_size
    if data is None:
        data = load_graded(cfg, size)
    train_arr = data["train"]
    ema = EMA(model, cfg.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(train_arr.grades) // cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    start_epoch, step, history, best = 0, 0, [], {"score": -1.0}

    ckpt_path = out / "last.pt"
    if ckpt_path.exists() and resume:
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ck["config"]["preset"] != cfg.preset:
            raise ValueError(f"{ckpt_path}: checkpoint was trained with preset {ck['config']['preset']}, not {cfg.preset}")
        model.load_state_dict(ck["model"])
        ema.state = {k: v.to(device) for k, v in ck["ema"].items()}
        opt.load_state_dict(ck["opt"])
        start_epoch, step = ck["epoch"], ck["step"]
        history, best = json.loads(ck["history"]), json.loads(ck["best"])
        if main:
            print(f"resumed from {ckpt_path}: epoch {start_epoch}, step {step}", flush=True)

    net = DDP(model) if world > 1 else model
    amp = cfg.amp
    t_start = time.time()
    last_ckpt = time.time()

    def checkpoint(epoch: int):
        state = {
            "model": model.state_dict(),
            "ema": ema.state,
            "opt": opt.state_dict(),
            "epoch": epoch,
            "step": step,
            "history": json.dumps(history),
            "best": json.dumps(best),
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        }
        atomic_torch_save(state, ckpt_path)

    stopped = False
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        rng = np.random.default_rng([cfg.seed, epoch])
        probs = sampling_probabilities(train_arr.grades, epoch, cfg)
        idx = rng.choice(len(train_arr.grades), size=steps_per_epoch * cfg.batch_size, p=probs)
        per_rank = cfg.batch_size // world
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch * 31 + rank)
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not main, mininterval=5)
        for s in bar:
            batch = idx[s * cfg.batch_size : (s + 1) * cfg.batch_size][rank::world][:per_rank]
            x = augment(to_tensor(train_arr.images[batch], device), gen, cfg.resample)
            y = torch.from_numpy(train_arr.grades[batch]).float().to(device)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total_steps, warmup, cfg.lr)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                pred = net(x)
            loss = severity_loss(pred, y, cfg.referable_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            # Early EMA follows the weights closely, later it averages over ~1/(1-decay) steps.
            ema.update(model, min(cfg.ema_decay, (1 + step) / (10 + step)))
            step += 1
            losses.append(loss.item())
            if main:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
            if main and (time.time() - last_ckpt) > cfg.checkpoint_minutes * 60:
                checkpoint(epoch)  # mid-epoch: resume restarts this epoch, weights kept
                last_ckpt = time.time()
            if cfg.max_minutes is not None and (time.time() - t_start) > cfg.max_minutes * 60:
                stopped = True
                break
        if stopped and main:
            checkpoint(epoch)
            print(f"stopped after {cfg.max_minutes} min at epoch {epoch + 1}, step {step}; --resume continues", flush=True)
            break
        if main:
            ema_model = Detector(cfg.preset).to(device)
            ema_model.load_state_dict(ema.state)
            rec = {"epoch": epoch + 1, "step": step, "train_loss": float(np.mean(losses)), "minutes": (time.time() - t_start) / 60}
            rep, _ = evaluate_split(ema_model, data["val"], device, cfg.eval_tta, amp)
            rec["val"] = rep
            if "aptos_val" in data:
                rec["aptos_val"], _ = evaluate_split(ema_model, data["aptos_val"], device, cfg.eval_tta, amp)
            score = rep["qwk_split_half"] + 0.5 * rep["auc_referable"]
            history.append(rec)
            msg = f"epoch {epoch + 1}: loss {rec['train_loss']:.3f} val qwk {rep['qwk']:.3f} (split-half {rep['qwk_split_half']:.3f}) auc {rep['auc_referable']:.3f}"
            if "aptos_val" in rec:
                msg += f" | aptos qwk {rec['aptos_val']['qwk']:.3f}"
            if score > best["score"]:
                best = {"score": score, "epoch": epoch + 1, "val": rep, "aptos_val": rec.get("aptos_val")}
                ema_model.thresholds.copy_(torch.tensor(rep["thresholds"]))
                ema_model.save(out / "best.safetensors", metadata=_card_metadata(cfg, best))
                msg += "  * best"
            print(msg, flush=True)
            (out / "history.json").write_text(json.dumps(history, indent=1))
            checkpoint(epoch + 1)
            last_ckpt = time.time()
        if world > 1:
            dist.barrier()
    if world > 1:
        dist.destroy_process_group()
    return best


def _card_metadata(cfg: TrainConfig, best: dict) -> dict:
    return {
        "train_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "best_epoch": best["epoch"],
        "val": {k: best["val"][k] for k in ("n", "qwk", "qwk_split_half", "accuracy", "auc_referable")},
        "aptos_val": None if not best.get("aptos_val") else {k: best["aptos_val"][k] for k in ("n", "qwk", "auc_referable")},
    }
