"""Vessel segmentation speed: ms per 512x512 fundus on CPU, end to end vs a bare network forward.

Run: ``.venv/bin/python benchmarks/bench_vessels.py [--runs 7] [--threads 2] [--weights PATH]``

``segment()`` (8x flip/rotation averaging by default) is what a caller pays: FOV estimate, crop, resize to the working scale (FOV diameter
540 px), local contrast normalisation, the U-Net, resize back. The bare forward is the U-Net plus
its normalisation on the same 512x512 tensor, no geometry. Their ratio is the overhead of handling
any fundus size; the working scale is larger than the phantom's FOV, so part of it is the network
running on more pixels (both sizes are printed). Medians of ``--runs`` after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from koch_explore.core.weights import resolve_weights
from koch_explore.data.phantom import generate_phantom
from koch_explore.vessels import VesselSegmenter, WorkingGeometry, load_vessels


def _median_ms(fn, runs: int) -> tuple[float, float, float]:
    fn()  # warm-up: allocator, oneDNN kernels, cached blur matrices
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times), min(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--weights", default=None, help="default: the shipped weights, else an untrained net (same cost)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.weights:
        model, which = VesselSegmenter.load(args.weights), args.weights
    elif resolve_weights("vessels").is_file():
        model, which = load_vessels(), resolve_weights("vessels").name
    else:
        model, which = VesselSegmenter().eval(), "untrained (no shipped weights yet)"
    ph = generate_phantom(0, args.size)
    image, fov = ph.image, ph.fov
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    m = torch.from_numpy(fov.astype(np.float32))[None, None]

    def bare():
        with torch.no_grad():
            torch.sigmoid(model(x, m))

    seg_est, lo_e, hi_e = _median_ms(lambda: model.segment(image), args.runs)
    seg_fov, lo_f, hi_f = _median_ms(lambda: model.segment(image, fov), args.runs)
    seg_one, lo_1, hi_1 = _median_ms(lambda: model.segment(image, fov, tta=1), args.runs)
    fwd, lo, hi = _median_ms(bare, args.runs)
    work = WorkingGeometry.of(fov, model.cfg.fov_diameter).size
    print(f"vessel segmenter ({which}), {args.size}x{args.size} RGB, {args.threads} threads, median of {args.runs}:")
    print(f"  segment(image)       {seg_est:8.1f} ms  (min {lo_e:.1f}, max {hi_e:.1f})  working scale {work[1]}x{work[0]}"
          f"  ratio to bare forward {seg_est / fwd:5.2f}")
    print(f"  segment(image, fov)  {seg_fov:8.1f} ms  (min {lo_f:.1f}, max {hi_f:.1f})"
          f"                            ratio to bare forward {seg_fov / fwd:5.2f}")
    print(f"  segment(.., tta=1)   {seg_one:8.1f} ms  (min {lo_1:.1f}, max {hi_1:.1f})  single pass (default is 8x TTA)"
          f"     ratio to bare forward {seg_one / fwd:5.2f}")
    print(f"  bare forward         {fwd:8.1f} ms  (min {lo:.1f}, max {hi:.1f})  on the {args.size}x{args.size} tensor"
          f"          ratio 1.00")


if __name__ == "__main__":
    main()
