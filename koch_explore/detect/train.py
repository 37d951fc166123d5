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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.runtime import atomic_write, end_distributed, resolve_amp, setup_distributed
from ..core.training import EMA, TrainingLoop
from ..data.graded import GradedArrays, GradedData, load_graded
from ..data.packed import load_packed, read_pack_index
from .model import Detector
from .predict import evaluate_split, to_tensor


@dataclass
class TrainConfig:
    data: str = "eyepacs"
    """"eyepacs" (real photos under the data root) or "phantom" (generated, for tests/quickstart)."""
    root: str | None = None
    """Data root (default: KOCH_DATA, ../shared/data, ./data)."""
    packed: str | None = None
    """Folder written by ``koch-explore data pack``: its uint8 shards are read (sha256-checked) instead
    of decoding photos, and its recorded data settings (data, root, split fractions and seeds, aptos)
    replace this config's, so the run, its checkpoint and its card describe the eyes it trained on.
    It must have been packed at the preset's input size."""
    preset: str = "o_O-256"
    """Detector preset (see detector.PRESETS)."""
    out: str = "runs/detector"
    """Run folder: last.pt, best.safetensors, history.json."""
    epochs: int = 40
    """Passes over the training eyes (each epoch ends with validation on the EMA weights and a checkpoint)."""
    batch_size: int = 32
    """Global batch size (split over DDP ranks)."""
    lr: float = 1e-3
    """Peak AdamW learning rate (linear warm-up, then cosine decay to zero)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    warmup_epochs: float = 1.0
    """Epochs of linear learning-rate warm-up."""
    val_fraction: float = 0.15
    """Share of *patients* held out for validation."""
    split_seed: int = 0
    """Seed of the patient split into training and validation (the same seed, the same split)."""
    seed: int = 0
    """Seed of initialisation, sampling and augmentation."""
    aptos: bool = True
    """Add APTOS 2019 (train part) to training; its validation part is always reported."""
    balance_epochs: float = 12.0
    """Epochs over which sampling moves from class-balanced to final_class_weights x natural."""
    final_class_weights: tuple[float, ...] = (1.0, 2.0, 2.0, 2.0, 2.0)
    """Per-grade sampling weights (times the natural frequency) reached after ``balance_epochs``."""
    ema_decay: float = 0.998
    """Decay of the weights' exponential moving average (validated and saved instead of the raw weights)."""
    amp: bool | None = None
    """bf16 autocast. Default (unset): on for CUDA and for CPUs with native bf16 (AVX512-BF16/AMX),
    off on other CPUs, where PyTorch emulates it (measured: docs/findings/detector.md#bf16)."""
    device: str = "auto"
    """"auto" (CUDA when present, else the CPU), "cpu" or "cuda[:i]" (under torchrun: each rank's GPU)."""
    phantom_count: int = 400
    """Images generated for --data phantom."""
    phantom_size: int = 256
    """Side of the generated phantoms, px (prepared to the preset's input size)."""
    max_minutes: float | None = None
    """Stop cleanly (checkpoint written; ``--resume`` continues) after this many minutes of training in this
    invocation (:class:`~koch_explore.core.training.TrainingLoop`: the one meaning in every trainer)."""
    checkpoint_minutes: float = 10.0
    """Minutes between mid-epoch checkpoints (``last.pt``, written atomically); one is also written every epoch."""
    resample: str = "bilinear"
    """Interpolation of the augmentation's rotation/zoom/shift: "bilinear" or "bicubic". Every training
    image is resampled, and resampling blurs the one- and two-pixel lesions a 256 px photo has
    (measured: docs/findings/detector.md#resample)."""
    referable_weight: float = 0.0
    """Weight of a logistic term on the severity against the referable cut (grade >= 2) added to the
    MSE (see :func:`severity_loss`). MSE spends as much effort separating grade 3 from 4 as 1 from 2;
    this term puts extra weight on the one cut a screening programme acts on (measured:
    docs/findings/detector.md#referable-weight)."""
    eval_tta: bool = False
    """8x flip/rotation test-time augmentation in per-epoch validation (slower)."""
    num_threads: int | None = None
    """CPU threads for torch (None: torch's default, the machine's cores)."""
    init: str | None = None
    """Warm start: detector safetensors whose weights (BN statistics included) initialise the
    model and its EMA; the schedule starts fresh (a warm restart, useful to extend a finished run).
    It may come from another input size of the same architecture (see :func:`warm_start`)."""


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


def warm_start(model: Detector, path) -> Detector:
    """Copy the weights (BatchNorm statistics and grade cuts included) of the detector file ``path``
    into ``model``. The file may have been trained at another input size: with the global RMS-pool
    head no weight depends on it, which is how o_O grew its nets (128 -> 256 -> 512 px) and how a
    256 px net is warm-started at 384 px. Any other architecture difference is an error naming it."""
    from dataclasses import replace

    from ..core.weights import check_config

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


def packed_config(cfg: TrainConfig, size: int) -> TrainConfig:
    """``cfg`` with the data settings recorded in the pack ``cfg.packed`` (the pack decides which eyes
    are in which split; the card rebuilds the validation split from the settings the weights carry,
    so they must be the pack's). A pack at another side than ``size`` is refused: resizing uint8
    shards on the fly would train on other pixels than the photos decoded at that size."""
    index = read_pack_index(cfg.packed)
    if int(index["size"]) != size:
        raise ValueError(f"{cfg.packed}: packed at {index['size']} px, but preset {cfg.preset} trains at {size} px "
                         f"(pack again with `koch-explore data pack --size {size}`)")
    return replace(cfg, **asdict(GradedData(**index["graded_data"])))


def train_step(net, opt, images_u8: np.ndarray, grades: np.ndarray, device, gen: torch.Generator, cfg: TrainConfig,
               amp: bool, lr: float) -> torch.Tensor:
    """One optimisation step of the detector (the body of :func:`train`'s loop, also what the GPU
    throughput benchmark and the CPU/CUDA parity test time and compare): the uint8 batch augmented on
    ``device``, the severity loss under bf16 autocast when ``amp``, one ``opt`` step at ``lr``. Returns
    the loss as a device tensor (reading it waits for the device)."""
    x = augment(to_tensor(images_u8, device), gen, cfg.resample)
    y = torch.from_numpy(grades).float().to(device)
    for g in opt.param_groups:
        g["lr"] = lr
    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
        pred = net(x)
    loss = severity_loss(pred, y, cfg.referable_weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def train(cfg: TrainConfig, data: dict[str, GradedArrays] | None = None, resume: bool = False, callback=None) -> dict:
    """Train a detector, or with ``resume`` continue from ``cfg.out/last.pt`` when it exists; returns
    the best validation figures. DDP-aware. ``callback(step, record)`` runs after every step on rank 0;
    returning ``False`` stops every rank cleanly (checkpoint, as a time limit does). The loop, its
    checkpoint, resume and stops are :class:`~koch_explore.core.training.TrainingLoop`'s; this function
    brings the model, the eyes, the step and the per-epoch validation."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

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
    if data is None and cfg.packed:
        cfg = packed_config(cfg, size)  # reads the pack's index only
    ema = EMA(model, cfg.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator()  # the augmentation's draws, seeded per epoch and kept in the checkpoint
    loop = TrainingLoop(out, config_json(cfg), {"model": model, "ema": ema, "opt": opt, "gen": gen}, steps=0,
                        max_minutes=cfg.max_minutes, checkpoint_minutes=cfg.checkpoint_minutes, callback=callback,
                        desc="detector", show=("loss",), world=world, rank=rank, device=device)
    loop.state.update(history=[], best={"score": -1.0}, epoch_losses=[])
    if resume:  # refused before minutes of decoding photos, not after
        loop.resume()
    if data is None and cfg.packed:
        data = load_packed(cfg.packed, size=size)
        if main:
            counts = ", ".join(f"{k} {len(v.grades)}" for k, v in data.items())
            print(f"packed {cfg.data} data from {cfg.packed}: {counts}", flush=True)
    elif data is None:
        data = load_graded(cfg, size)
    train_arr = data["train"]
    steps_per_epoch = max(1, len(train_arr.grades) // cfg.batch_size)
    loop.steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    net = DDP(model) if world > 1 else model
    per_rank = cfg.batch_size // world
    plan: dict = {}

    def step(i: int) -> dict:
        epoch, within = divmod(i, steps_per_epoch)
        if plan.get("epoch") != epoch:  # each epoch draws its eyes from its own class weights
            rng = np.random.default_rng([cfg.seed, epoch])
            probs = sampling_probabilities(train_arr.grades, epoch, cfg)
            plan.update(epoch=epoch, idx=rng.choice(len(train_arr.grades), size=steps_per_epoch * cfg.batch_size, p=probs))
            if within == 0:  # mid-epoch (a resumed run) the generator's state came from the checkpoint
                gen.manual_seed(cfg.seed * 7919 + epoch * 31 + rank)
            model.train()
        batch = plan["idx"][within * cfg.batch_size : (within + 1) * cfg.batch_size][rank::world][:per_rank]
        loss = train_step(net, opt, train_arr.images[batch], train_arr.grades[batch], device, gen, cfg, cfg.amp,
                          lr_at(i, loop.steps, warmup, cfg.lr))
        ema.update(model, i)
        return {"loss": loss.item(), "epoch": epoch}

    def end_of_epoch(i: int, record: dict) -> None:
        loop.state["epoch_losses"].append(record["loss"])
        if i % steps_per_epoch:
            return
        if main:
            validate(i // steps_per_epoch, i)
            loop.checkpoint()
        if world > 1:
            dist.barrier()

    def validate(epochs_done: int, i: int) -> None:
        state = loop.state
        ema_model = Detector(cfg.preset).to(device)
        ema_model.load_state_dict(ema.state_dict())
        rec = {"epoch": epochs_done, "step": i, "train_loss": float(np.mean(state["epoch_losses"])),
               "minutes": loop.total_minutes()}
        state["epoch_losses"] = []
        rep, _ = evaluate_split(ema_model, data["val"], device, cfg.eval_tta, cfg.amp)
        rec["val"] = rep
        if "aptos_val" in data:
            rec["aptos_val"], _ = evaluate_split(ema_model, data["aptos_val"], device, cfg.eval_tta, cfg.amp)
        score = rep["qwk_split_half"] + 0.5 * rep["auc_referable"]
        state["history"].append(rec)
        msg = f"epoch {epochs_done}: loss {rec['train_loss']:.3f} val qwk {rep['qwk']:.3f} (split-half {rep['qwk_split_half']:.3f}) auc {rep['auc_referable']:.3f}"
        if "aptos_val" in rec:
            msg += f" | aptos qwk {rec['aptos_val']['qwk']:.3f}"
        if score > state["best"]["score"]:
            state["best"] = {"score": score, "epoch": epochs_done, "val": rep, "aptos_val": rec.get("aptos_val")}
            ema_model.thresholds.copy_(torch.tensor(rep["thresholds"]))
            ema_model.save(out / "best.safetensors", metadata=_card_metadata(cfg, state["best"]))
            msg += "  * best"
        print(msg, flush=True)
        atomic_write(out / "history.json", json.dumps(state["history"], indent=1))

    loop.run(step, after_step=end_of_epoch)
    end_distributed()
    return loop.state["best"]


def config_json(cfg: TrainConfig) -> dict:
    """The configuration as the checkpoint, the card and the history store it (tuples as lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}


def _card_metadata(cfg: TrainConfig, best: dict) -> dict:
    return {
        "train_config": config_json(cfg),
        "best_epoch": best["epoch"],
        "val": {k: best["val"][k] for k in ("n", "qwk", "qwk_split_half", "accuracy", "auc_referable")},
        "aptos_val": None if not best.get("aptos_val") else {k: best["aptos_val"][k] for k in ("n", "qwk", "auc_referable")},
    }
