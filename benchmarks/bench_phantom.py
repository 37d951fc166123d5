"""Phantom generation speed: ms per 512x512 image on one core (target: 50 ms).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_phantom.py [--count 20] [--size 512]``
File writing is excluded; grades are sampled as in a default dataset, plus one line per grade.
"""

from __future__ import annotations

import os

# One core: set before numpy/cv2 load their thread pools.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402

from koch_explore.data.phantom import generate_phantom, phantom_seed  # noqa: E402

TARGET_MS = 50.0


def _time_ms(seeds, size, grade=None) -> tuple[list[float], list[float]]:
    """Wall and CPU milliseconds per image. With one thread, CPU time is the one-core cost
    even on a shared machine, where wall time also counts waiting for the core."""
    wall, cpu = [], []
    for s in seeds:
        w0, c0 = time.perf_counter(), time.process_time()
        generate_phantom(s, size, grade=grade)
        wall.append((time.perf_counter() - w0) * 1000.0)
        cpu.append((time.process_time() - c0) * 1000.0)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20, help="images per measurement (default 20)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--per-grade", action="store_true", help="also time each grade separately")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    _time_ms([phantom_seed(99, i) for i in range(3)], args.size)  # warm-up (imports, caches)

    wall, cpu = _time_ms([phantom_seed(0, i) for i in range(args.count)], args.size)
    median = statistics.median(cpu)
    print(
        f"phantom {args.size}x{args.size}, one core: median {median:.1f} ms/image CPU "
        f"({statistics.median(wall):.1f} ms wall; CPU min {min(cpu):.1f}, max {max(cpu):.1f}) over {args.count} "
        f"| target {TARGET_MS:.0f} ms, ratio {median / TARGET_MS:.2f}"
    )
    if args.per_grade:
        for g in range(5):
            wall, cpu = _time_ms([phantom_seed(1, i) for i in range(args.count)], args.size, grade=g)
            print(f"  grade {g}: median {statistics.median(cpu):.1f} ms CPU, max {max(cpu):.1f} ms")


if __name__ == "__main__":
    main()
