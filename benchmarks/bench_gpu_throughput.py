"""Training throughput of the detector and the synthesizer at 256 and 512 px on one device (a lent GPU
above all): steps/s and images/s over timed steps after warm-up steps, printed as one JSON object.

    python benchmarks/bench_gpu_throughput.py [--device auto] [--steps 20] [--warmup 5] [--json-out FILE]
    python benchmarks/bench_gpu_throughput.py --tiny     # seconds on a CPU: 128 px detector, cpu-256 synthesizer

Detector: the loop body of ``koch-explore detector train`` (uint8 batch to the device, augmentation on
the device, forward under bf16 autocast where the trainer turns it on, severity loss, AdamW, EMA), at
the trainer's batch size. At 512 px it is the o_O-256 network given a 512 px input: its global RMS
head makes every weight independent of the input side, which is how the kit warm-starts a larger input
(``--init``). Synthesizer: the real ``koch-explore synth train`` loop on phantom data (presets
``cpu-256`` and ``gpu-512``), timed between its per-step callbacks; that trainer has no autocast switch,
so it runs in fp32 (``"amp": false`` in its entries). On CUDA every timing is bracketed by
``torch.cuda.synchronize()``. Without a CUDA device the ``--tiny`` setting is used unless sizes are given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from koch_explore.core.runtime import resolve_amp, resolve_device
from koch_explore.core.training import EMA
from koch_explore.detect.model import PRESETS, Detector
from koch_explore.detect.train import TrainConfig, lr_at, train_step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fundus_u8(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, S, S, 3) uint8: textured discs on black, what the trainer holds in memory (content does
    not change the cost of a step)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.45 * size) ** 2
    return (rng.integers(40, 200, (n, size, size, 3)) * disc[None, :, :, None]).astype(np.uint8)


def detector_throughput(size: int, batch: int, warmup: int, steps: int, device: torch.device, amp: bool) -> dict:
    cfg = TrainConfig(batch_size=batch)
    model = Detector(replace(PRESETS["o_O-256"], input_size=size)).to(device).to(memory_format=torch.channels_last).train()
    ema = EMA(model, cfg.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    images = fundus_u8(4 * batch, size)
    grades = np.arange(4 * batch) % 5
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)

    def step(i: int) -> None:
        pick = rng.choice(len(grades), batch)
        loss = train_step(model, opt, images[pick], grades[pick], device, gen, cfg, amp, lr_at(i, 1000, 10, cfg.lr))
        ema.update(model, i)
        loss.item()  # the trainer reads the loss every step, which waits for the device

    for i in range(warmup):
        step(i)
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    sync(device)
    seconds = time.perf_counter() - t0
    out = {"size": size, "batch": batch, "amp": amp, "steps": steps, "seconds": round(seconds, 3),
           "steps_per_s": round(steps / seconds, 3), "images_per_s": round(steps * batch / seconds, 1)}
    if device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        torch.cuda.reset_peak_memory_stats(device)
    return out


def synthesizer_throughput(preset: str, warmup: int, steps: int, device: torch.device, batch: int, bank_images: int) -> dict:
    from koch_explore.synthesis.trainer import PRESETS as SYNTH_PRESETS
    from koch_explore.synthesis.trainer import SynthTrainConfig, train

    stamps: list[float] = []

    def on_step(step, record, ema) -> None:
        sync(device)
        stamps.append(time.perf_counter())

    out_dir = tempfile.mkdtemp(prefix="bench_synth_")
    try:
        cfg = SynthTrainConfig(preset=preset, data="phantom", out=out_dir, steps=warmup + steps, batch_size=batch,
                               bank_images=bank_images, sample_every=0, checkpoint_minutes=1e9, device=str(device))
        t0 = time.perf_counter()
        train(cfg, progress=False, callback=on_step)
        total = time.perf_counter() - t0
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    # stamps[k] is the end of step k + 1: the timed steps run from the end of the last warm-up step
    seconds = stamps[-1] - stamps[warmup - 1] if warmup else stamps[-1] - t0
    return {"preset": preset, "size": SYNTH_PRESETS[preset]["size"], "batch": batch, "amp": False, "steps": steps,
            "seconds": round(seconds, 3), "steps_per_s": round(steps / seconds, 3),
            "images_per_s": round(steps * batch / seconds, 2), "setup_and_warmup_s": round(total - seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    ap.add_argument("--tiny", action="store_true", help="seconds on a CPU: detector at 128 px, synthesizer cpu-256, 2 timed steps")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="detector input sides (default: 256 512; --tiny: 128)")
    ap.add_argument("--synth-presets", nargs="*", default=None, help="synthesizer presets (default: cpu-256 gpu-512; --tiny: cpu-256)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps each (default: 20; --tiny: 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5; --tiny: 1)")
    ap.add_argument("--batch", type=int, default=None, help="detector batch (default: the trainer's, 32; --tiny: 4)")
    ap.add_argument("--synth-batch", type=int, default=2, help="synthesizer batch (default: the trainer's, 2)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    ap.add_argument("--json-out", default=None, help="also write the JSON here (atomically)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    # The GPU sizes would take many minutes on a CPU (`make bench` runs this file with no arguments).
    tiny = args.tiny or (device.type != "cuda" and args.sizes is None)
    sizes = args.sizes or ([128] if tiny else [256, 512])
    presets = args.synth_presets if args.synth_presets is not None else (["cpu-256"] if tiny else ["cpu-256", "gpu-512"])
    steps = args.steps or (2 if tiny else 20)
    steps += steps % 2  # the synthesizer steps its discriminator every other step: time whole pairs
    warmup = args.warmup if args.warmup is not None else (1 if tiny else 5)
    batch = args.batch or (4 if tiny else TrainConfig().batch_size)
    amp = resolve_amp(None, device)  # what the trainers would choose here: on for CUDA with bf16
    report = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "tiny": tiny, "detector": {}, "synthesizer": {}}
    t0 = time.perf_counter()
    for size in sizes:
        report["detector"][str(size)] = detector_throughput(size, batch, warmup, steps, device, amp)
        print(f"detector {size} px: {report['detector'][str(size)]}", flush=True)
    for preset in presets:
        report["synthesizer"][preset] = synthesizer_throughput(preset, max(1, warmup), steps, device, args.synth_batch,
                                                               bank_images=4 if tiny else 8)
        print(f"synthesizer {preset}: {report['synthesizer'][preset]}", flush=True)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(report, indent=1)
    if args.json_out:
        path = Path(args.json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
    print(text)


if __name__ == "__main__":
    main()
