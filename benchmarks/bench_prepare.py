"""Preparing a camera-sized photo: seconds for ``prepare_fundus`` of a 4000 x 3000 photo to 512 px (target:
2 s; moved here from a wall-clock assertion in the tests, which a busy machine could fail).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_prepare.py [--repeats 5]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np

from koch_explore.data.preprocess import prepare_fundus

TARGET_S = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs after one warm-up (default 5)")
    args = parser.parse_args()
    img = np.zeros((3000, 4000, 3), np.float32)
    cv2.circle(img, (2000, 1500), 1400, (0.8, 0.4, 0.2), thickness=-1)
    prepare_fundus(img, 512)  # warm-up: cv2's and numpy's first calls
    wall, cpu = [], []
    for _ in range(args.repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        prepare_fundus(img, 512)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    med = statistics.median(wall)
    print(f"prepare_fundus 4000x3000 -> 512: median {med:.3f} s wall, {statistics.median(cpu):.3f} s CPU over {args.repeats} runs "
          f"(target {TARGET_S:.1f} s: {'met' if med <= TARGET_S else 'missed'})")


if __name__ == "__main__":
    main()
