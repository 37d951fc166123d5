"""Deconvnet projection cost relative to one forward + backward of the detector (target: <= 1.5x),
and the isolation step at 512^2: threshold + connected components (target: <= 30 ms).

Run: ``.venv/bin/python benchmarks/bench_isolate.py [--batch 8] [--size 256] [--repeats 5]``

Both are timed on the same batch in the same run, interleaved, and the ratio is taken per
repeat, so a busy machine slows both alike and the ratio stays meaningful even when the absolute
times do not; CPU time (all threads) is printed beside wall time. The reference is what
a training step costs without the optimiser: forward, then backward to every weight and the
input (eval mode). The projection includes its own forward pass (it records the switches).
The BatchNorm folding happens once per ``ActivationNetwork`` and is timed separately.

Isolation at 512^2 is timed on a real evidence map: the deconvnet map of a 512 px phantom (the
phantom detector, upsampled from its 256 input), with the FOV. ``segment`` (blur + normalise +
threshold + components) is what ``isolate`` pays per image; ``threshold + components`` alone is
what a threshold slider pays once the blurred map is cached (both single-threaded cv2).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from koch_explore.detect.model import PRESETS, Detector, DetectorConfig, load_detector
from koch_explore.evidence.deconvnet import ActivationNetwork

TARGET_RATIO = 1.5


def fundus_batch(b: int, s: int) -> torch.Tensor:
    """A disc of texture on black: the norm finds a field of view, like in a fundus photo."""
    g = torch.Generator().manual_seed(0)
    x = 0.2 + 0.6 * torch.rand(b, 3, s, s, generator=g)
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    return x * (((yy - s / 2) ** 2 + (xx - s / 2) ** 2) < (0.45 * s) ** 2).float()


def forward_backward(detector: Detector, x: torch.Tensor) -> None:
    x = x.detach().requires_grad_(True)
    detector.zero_grad(set_to_none=True)
    detector(x).sum().backward()


def timed(fn) -> tuple[float, float]:
    """(wall, CPU) seconds. CPU time counts every thread; on a shared machine it is the steadier one."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="o_O-256", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=None, help="input side (default: the preset's)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--starts", default="out,dense2,conv7", help="comma-separated start layers")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    detector = Detector(args.preset).eval()
    size = args.size or detector.cfg.input_size
    x = fundus_batch(args.batch, size)
    fold = timed(lambda: ActivationNetwork(detector).close())[0]
    starts = args.starts.split(",")

    with ActivationNetwork(detector) as net:
        forward_backward(detector, x)  # warm-up: allocator, oneDNN primitives
        for start in starts:
            net.project(x, start=start)
        reference, projection = [], {s: [] for s in starts}
        for _ in range(args.repeats):
            reference.append(timed(lambda: forward_backward(detector, x)))
            for start in starts:
                projection[start].append(timed(lambda: net.project(x, start=start)))

    cfg: DetectorConfig = detector.cfg
    print(
        f"{args.preset} (n={cfg.n}, head {cfg.head_pool}), batch {args.batch} x {size}^2, "
        f"{torch.get_num_threads()} threads, medians of {args.repeats} interleaved repeats"
    )
    print(f"  {'':22} {'wall ms':>9} {'CPU ms':>9}   ratio wall / CPU (per repeat, median)")

    def row(label: str, times: list[tuple[float, float]], ratios: str = "") -> None:
        wall, cpu = (statistics.median(t[i] for t in times) for i in (0, 1))
        print(f"  {label:22} {wall * 1000:9.1f} {cpu * 1000:9.1f}   {ratios}")

    row("forward + backward", reference)
    for start in starts:
        ratio = [statistics.median(p[i] / r[i] for p, r in zip(projection[start], reference)) for i in (0, 1)]
        row(f"project from {start}", projection[start], f"{ratio[0]:.2f} / {ratio[1]:.2f}  (target <= {TARGET_RATIO})")
    print(f"  BatchNorm folding (once per network): {fold * 1000:.1f} ms wall")
    isolation_at_512(args.repeats)


SEGMENT_TARGET_MS = 30.0


def isolation_at_512(repeats: int) -> None:
    import cv2
    import numpy as np
    import torch.nn.functional as F

    from koch_explore.culture.cut import DEFAULT_THRESHOLD, segment
    from koch_explore.data.phantom.generate import generate_phantom
    from koch_explore.evidence.base import explain

    det = load_detector("phantom")
    ph = generate_phantom(seed=3, size=512, grade=3)
    x = torch.from_numpy(np.ascontiguousarray(ph.image.transpose(2, 0, 1)))[None].float()
    small = F.interpolate(x, size=(256, 256), mode="area")
    ev = explain(det, small, "deconvnet").maps[0]
    ev512 = cv2.resize(ev, (512, 512), interpolation=cv2.INTER_LINEAR)
    fov = ph.fov
    seg = segment(ev512, fov)
    blurred = seg.blurred

    def cut_and_label():
        binary = ((blurred > DEFAULT_THRESHOLD) & fov).astype(np.uint8)
        cv2.connectedComponentsWithStats(binary, connectivity=8)

    def ms(fn):
        fn()
        times = []
        for _ in range(max(5, repeats * 4)):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        return statistics.median(times)

    full = ms(lambda: segment(ev512, fov))
    cut = ms(cut_and_label)
    print(f"isolation at 512x512 ({len(seg.boxes)} components, threshold {DEFAULT_THRESHOLD}), median ms:")
    print(f"  segment (blur + threshold + components) {full:7.2f} ms   ratio to target {full / SEGMENT_TARGET_MS:.2f} (target <= 1)")
    print(f"  threshold + components (blur cached)    {cut:7.2f} ms   ratio to target {cut / SEGMENT_TARGET_MS:.2f} (target <= 1)")

if __name__ == "__main__":
    main()
