"""Localisation of the shipped EyePACS detector on the 14 IDRiD images (and 24 phantoms), every evidence method, with
95% CIs over images (docs/findings/audit.md#every-method). Run: ``OMP_NUM_THREADS=1 python benchmarks/localisation_all_methods.py``
(writes runs/audit/loc_all.json)."""
import json, time, torch
torch.set_num_threads(1)
import koch_explore as ke
from koch_explore.appendix.config import AuditConfig
from koch_explore.appendix.sections import localisation_section
det = ke.load_detector("eyepacs")
t = time.time()
sec = localisation_section(det, AuditConfig(methods=tuple(ke.EVIDENCE_METHODS), localisation_count=24), progress=False)
out = {s: {"n_images": b["n_images"], "methods": b["methods"], "skipped": b["skipped"]} for s, b in sec["sources"].items()}
out["seconds"] = time.time() - t
json.dump(out, open("runs/audit/loc_all.json", "w"), indent=1)
for s in ("idrid", "phantom"):
    print(s, out[s]["n_images"], out[s]["skipped"])
    for m, r in out[s]["methods"].items():
        print(f"| {m} | " + " | ".join(f"{r[k]['mean']:.3f} [{r[k]['ci'][0]:.3f}, {r[k]['ci'][1]:.3f}]" for k in ("pointing_game", "relevance_mass", "relevance_rank", "top_k_intersection", "pixel_auc")) + " |")
