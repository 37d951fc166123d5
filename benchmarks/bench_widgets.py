"""Widget latency: one ThresholdExplorer redraw at 512 px (re-threshold the cached map, label the
components, encode the mask overlay, rebuild the SVG) against the 30 ms target, beside a full
``segment()`` (blur included) of the same map for scale.

Run: ``.venv/bin/python benchmarks/bench_widgets.py [--size 512] [--moves 200]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from koch_explore.widgets import ThresholdExplorer

from koch_explore.culture.cut import segment
from koch_explore.data.phantom.generate import generate_phantom

TARGET_MS = 30.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--moves", type=int, default=200)
    args = ap.parse_args()
    ph = generate_phantom(5, size=args.size, grade=4)
    rng = np.random.default_rng(0)
    # A realistic map: lesions plus structured background evidence (many components at low cuts).
    ev = sum(m.astype(np.float32) for m in ph.lesions.values()) + 0.3 * rng.random((args.size, args.size)).astype(np.float32)
    te = ThresholdExplorer(ph.image, ev, ph.fov)
    redraw, full, counts = [], [], []
    for v in np.linspace(0.02, 0.95, args.moves):
        te.set_threshold(float(v))
        redraw.append(te.last_redraw_ms)
        counts.append(te.count)
        t0 = time.perf_counter()
        segment(ev, ph.fov, float(v))
        full.append((time.perf_counter() - t0) * 1000)
    te.close()
    r, f = statistics.median(redraw), statistics.median(full)
    p95 = float(np.percentile(redraw, 95))
    print(f"ThresholdExplorer at {args.size} px, {args.moves} slider moves ({min(counts)}-{max(counts)} components):")
    print(f"  redraw median {r:6.1f} ms   p95 {p95:6.1f} ms   ratio to target {p95 / TARGET_MS:.2f} (<= 1 passes, target {TARGET_MS:.0f} ms)")
    print(f"  full segment() median {f:6.1f} ms (blur + threshold + components, no drawing)   redraw / segment {r / f:.2f}")


if __name__ == "__main__":
    main()
