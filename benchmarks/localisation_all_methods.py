"""Localisation of the shipped EyePACS detector on the 14 IDRiD images (and 24 phantoms), every evidence method,
with 95% CIs over images (docs/findings/audit.md#every-method).

Run: ``OMP_NUM_THREADS=1 python benchmarks/localisation_all_methods.py [--out runs/audit/loc_all.json]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import koch_explore as ke
from koch_explore.appendix.config import AuditConfig
from koch_explore.appendix.sections import localisation_section
from koch_explore.evidence.localisation import LOCALISATION_MEASURES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/audit/loc_all.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    det = ke.load_detector("eyepacs")
    t0 = time.time()
    sec = localisation_section(det, AuditConfig(methods=tuple(ke.EVIDENCE_METHODS), localisation_count=24), progress=False)
    out = {s: {"n_images": b["n_images"], "methods": b["methods"], "skipped": b["skipped"]} for s, b in sec["sources"].items()}
    out["seconds"] = time.time() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    for source in sec["sources"]:
        print(f"{source}: {out[source]['n_images']} images; skipped {out[source]['skipped'] or 'none'}")
        for method, r in out[source]["methods"].items():
            print(f"| {method} | " + " | ".join(f"{r[k]['mean']:.3f} [{r[k]['ci'][0]:.3f}, {r[k]['ci'][1]:.3f}]"
                                                for k in LOCALISATION_MEASURES) + " |")


if __name__ == "__main__":
    main()
