"""Detector throughput on this machine: inference and training images/s at 256 and 512 (448 input),
and their ratio, measured side by side in one run; then one o_O-256 training step with and without
bf16 autocast, the choice the trainer makes by default (on only where bf16 is native).

    python benchmarks/bench_detector.py [--threads 2] [--device cpu] [--amp | --no-amp]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from koch_explore.core.runtime import bf16_is_native, resolve_amp
from koch_explore.detect.model import Detector


def fundus(b: int, s: int, device) -> torch.Tensor:
    x = 0.2 + 0.6 * torch.rand(b, 3, s, s, device=device)
    yy, xx = torch.meshgrid(torch.arange(s, device=device), torch.arange(s, device=device), indexing="ij")
    return (x * (((yy - s / 2) ** 2 + (xx - s / 2) ** 2) < (0.45 * s) ** 2)).contiguous(memory_format=torch.channels_last)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (allocator, kernels)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 autocast for the table (default: what the trainer picks on this device)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    amp = resolve_amp(args.amp, dev)
    print(f"device {dev}, threads {torch.get_num_threads()}, amp {amp}")
    print(f"{'preset':10s} {'batch':>5s} {'infer img/s':>12s} {'train img/s':>12s} {'train/infer':>12s}")
    for preset, batch in (("o_O-256", 16), ("o_O-512", 4)):
        model = Detector(preset).to(dev).to(memory_format=torch.channels_last)
        x = fundus(batch, model.cfg.input_size, dev)
        y = torch.full((batch,), 2.0, device=dev)
        opt = torch.optim.AdamW(model.parameters(), 1e-4)

        def infer():
            model.eval()
            with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                model(x)

        def step():
            model.train()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.mse_loss(model(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        t_inf = timed(infer, args.repeats)
        t_train = timed(step, args.repeats)
        print(f"{preset:10s} {batch:5d} {batch / t_inf:12.1f} {batch / t_train:12.1f} {t_train / t_inf:12.2f}")

    # Emulated bf16 is slow, so this comparison is one small batch at 256 px, two timed steps each.
    model = Detector("o_O-256").to(dev).to(memory_format=torch.channels_last).train()
    x, y = fundus(8, 256, dev), torch.full((8,), 2.0, device=dev)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)

    def step(autocast: bool):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            loss = F.mse_loss(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    secs = {on: timed(lambda: step(on), 2) for on in (False, True)}
    native = bf16_is_native(dev)
    print(f"o_O-256 training step, batch 8: fp32 {secs[False]:.2f} s, bf16 autocast {secs[True]:.2f} s, "
          f"bf16/fp32 {secs[True] / secs[False]:.2f}; bf16 native here: {native}, "
          f"so the trainers' default is autocast {'on' if native else 'off'}")


if __name__ == "__main__":
    main()
