"""Our Grad-CAM, guided backprop, guided Grad-CAM and gradient x input against Captum's counterparts,
side by side on one batch of phantom eyes at the detector's input size: seconds per batch for each,
the ratio ours / Captum (target: <= 1.0x) and how well the maps agree (Pearson r per image).

Run: ``.venv/bin/python benchmarks/bench_captum.py [--detector phantom] [--batch 8] [--repeats 5] [--threads 1]``

Each side computes the map as ``koch_explore.explain`` returns it: Captum's attribution aligned to our
definition where the two differ (see tests/test_captum_crosscheck.py) and reduced as ours is, so both
columns pay for the same map. Captum's Grad-CAM is ``LayerGradCam(relu_attributions=True)`` +
bilinear ``LayerAttribution.interpolate``; its guided backprop runs on a copy of the detector whose
functional leaky ReLUs are ``nn.ReLU`` modules (Captum rewrites only those; the copy is made once,
outside the timing), |.| averaged over RGB; guided Grad-CAM is sqrt(mean_RGB |GuidedGradCam|);
gradient x input is ``InputXGradient`` on the detector after its norm, given the normalised image,
|.| summed over channels. Ours includes what each call of ours does (guided backprop folds BatchNorm
into a copy of the detector per call, ~50 ms at o_O-256 on one thread). Both are timed after one
warm-up call, interleaved per repeat with who goes first alternating (a busy machine slows both
alike); the ratio is taken per repeat and its median printed.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch

import koch_explore as ke
from koch_explore.core.images import as_image_batch
from koch_explore.evidence.alignment import after_norm, captum_view, pearson_per_image
from koch_explore.evidence.base import find_layer
from koch_explore.evidence.methods import (
    GradCam,
    GradientXInput,
    GuidedBackprop,
    GuidedGradCam,
)

TARGET_RATIO = 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--detector", default="phantom", help="shipped detector name or safetensors file")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*(require gradients|backward hooks on ReLU).*")

    try:
        from captum.attr import GuidedBackprop as CGuidedBackprop
        from captum.attr import GuidedGradCam as CGuidedGradCam
        from captum.attr import InputXGradient, LayerAttribution, LayerGradCam
    except ImportError:
        print("captum is not installed (pip install -e '.[dev]'): nothing to compare")
        return

    det = ke.load_detector(args.detector).eval()
    size = det.input_size
    x = as_image_batch(np.stack([np.clip(ke.generate_phantom(100 + i, size=size, grade=1 + i % 4).image, 0, 1)
                                 for i in range(args.batch)]))
    cam_name = GradCam(det).used_layer
    view = captum_view(det)
    tail = after_norm(det)

    def captum_gradcam():
        a = LayerGradCam(det, find_layer(det, cam_name)).attribute(x.clone(), relu_attributions=True)
        return LayerAttribution.interpolate(a, (size, size), "bilinear")[:, 0].detach().numpy()

    def captum_guided():
        return CGuidedBackprop(view).attribute(x.clone()).detach().abs().mean(dim=1).numpy()

    def captum_guided_gradcam():
        a = CGuidedGradCam(view, find_layer(view, cam_name)).attribute(x.clone(), interpolate_mode="bilinear")
        return a.detach().abs().mean(dim=1).sqrt().numpy()

    def captum_gradient_x_input():
        with torch.no_grad():
            n = det.norm(x)
        return InputXGradient(tail).attribute(n).detach().abs().sum(dim=1).numpy()

    rows = [
        ("gradcam", lambda: GradCam(det)(x).maps, captum_gradcam),
        ("guided-backprop", lambda: GuidedBackprop(det)(x).maps, captum_guided),
        ("guided-gradcam", lambda: GuidedGradCam(det)(x).maps, captum_guided_gradcam),
        ("gradient-x-input", lambda: GradientXInput(det)(x).maps, captum_gradient_x_input),
    ]

    print(f"detector {args.detector!r} ({size} px, Grad-CAM at {cam_name}), batch {args.batch}, "
          f"threads {torch.get_num_threads()}, median of {args.repeats} after a warm-up; torch {torch.__version__}")
    print(f"{'method':18s} {'ours s':>8s} {'captum s':>9s} {'ours/captum':>12s} {'r min':>8s} {'r mean':>8s}")
    for name, ours_fn, theirs_fn in rows:
        ours_map, theirs_map = ours_fn(), theirs_fn()  # warm-up, and the maps compared
        r = pearson_per_image(ours_map, theirs_map)
        t_ours, t_theirs, ratios = [], [], []
        for k in range(args.repeats):
            pair = {}
            for side in (("ours", "captum") if k % 2 == 0 else ("captum", "ours")):  # alternate who goes first
                fn = ours_fn if side == "ours" else theirs_fn
                t0 = time.perf_counter()
                fn()
                pair[side] = time.perf_counter() - t0
            t_ours.append(pair["ours"])
            t_theirs.append(pair["captum"])
            ratios.append(pair["ours"] / pair["captum"])
        ratio = statistics.median(ratios)
        flag = "" if ratio <= TARGET_RATIO else f"  (> {TARGET_RATIO:.1f}x target)"
        print(f"{name:18s} {statistics.median(t_ours):8.3f} {statistics.median(t_theirs):9.3f} {ratio:11.2f}x "
              f"{min(r):8.5f} {float(np.mean(r)):8.5f}{flag}")


if __name__ == "__main__":
    main()
