"""Dump evidence maps, lesion masks and our localisation scores for a cross-check against Quantus.

Run with the project's venv (Quantus is NOT installed there; it is compared in a separate venv by
``benchmarks/quantus_crosscheck_compare.py``):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quantus_crosscheck_dump.py [OUT_DIR]   # default /tmp/qcheck

Writes OUT_DIR/maps.npz (``maps_<method>`` (N, H, W) float32, ``lesions`` (N, H, W) bool = union of the lesion
masks, ``fovs`` (N, H, W) bool, ``names``) and OUT_DIR/ours.json: per method, per image,
``localisation_scores`` with ``fov=None`` ("nofov") and with the image's FOV ("fov").

Every method of the kit gives non-negative maps, which no normalisation can tell apart; a synthetic
"signed-control" (the gradient-x-input map minus half its image mean, so most of its pixels turn negative while its total stays positive) is
added to exercise the normalisation, where Quantus's default and ours differ.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

import koch_explore as ke
from koch_explore.data.roots import dataset_dir
from koch_explore.data.samples import folder_samples, phantom_samples
from koch_explore.evidence.base import evidence_maps
from koch_explore.evidence.localisation import localisation_scores

METHODS = ("guided-gradcam", "gradcam", "gradient-x-input", "random")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    det = ke.load_detector("eyepacs")
    try:
        samples, source = list(folder_samples(dataset_dir("IDRiD_lesions"), det.input_size)), "IDRiD_lesions"
    except FileNotFoundError:
        samples, source = list(phantom_samples(12, 256, det.input_size, seed=0)), "phantoms"
    unions = [np.logical_or.reduce(list(s.lesions.values())) for s in samples]
    keep = [i for i, u in enumerate(unions) if u.any()]
    samples, unions = [samples[i] for i in keep], np.stack([unions[i] for i in keep])
    images, fovs = np.stack([s.image for s in samples]), np.stack([s.fov for s in samples])
    print(f"{source}: {len(samples)} images with lesions, {images.shape[1:3]}")

    arrays, ours = {}, {"source": source, "names": [s.name for s in samples], "methods": {}}
    for method in METHODS + ("signed-control",):
        if method == "signed-control":
            gxi = arrays["maps_gradient-x-input"]
            maps = gxi - 0.5 * gxi.mean(axis=(1, 2), keepdims=True)
        else:
            maps = evidence_maps(det, torch.from_numpy(images).permute(0, 3, 1, 2), method, batch_size=8)
        arrays[f"maps_{method}"] = maps.astype(np.float32)
        ours["methods"][method] = {
            # scores of the float32 maps as saved, so both sides read exactly the same numbers
            "nofov": [localisation_scores(m, u) for m, u in zip(arrays[f"maps_{method}"], unions)],
            "fov": [localisation_scores(m, u, f) for m, u, f in zip(arrays[f"maps_{method}"], unions, fovs)],
        }
        print(f"  {method}: maps {maps.shape}")
    np.savez_compressed(out / "maps.npz", lesions=unions, fovs=fovs, names=np.array(ours["names"]), **arrays)
    (out / "ours.json").write_text(json.dumps(ours, indent=1))
    print(f"wrote {out / 'maps.npz'} and {out / 'ours.json'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/qcheck"))
