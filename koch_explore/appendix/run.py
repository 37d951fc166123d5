"""``ke.audit(model, out)``: one call, one document. Grading, the sanity of the evidence maps, their
localisation on lesion masks and the Koch test with its verdict, each section measured on the real data
found (or the embedded data, said in its heading), with the provenance a reviewer asks for."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..data.roots import resolve_data_root
from .config import AuditConfig
from .provenance import parse_trained_on, provenance, trained_on_warnings
from .sections import (
    SOURCES,
    eyepacs_val,
    grading_section,
    koch_section,
    localisation_section,
    sanity_section,
)


@dataclass
class Audit:
    """An audit's results (``audit.json`` is :meth:`to_json`)."""

    verdict: str
    """The Koch verdict: "lesion-driven", "inconclusive" or "not-lesion-driven"."""
    verdict_reasons: list[str]
    grading: dict
    sanity: dict
    localisation: dict
    koch: dict
    provenance: dict
    warnings: list[str] = field(default_factory=list)
    koch_report: object = None
    """The :class:`~koch_explore.koch.test.KochReport` (its pictures; not written to JSON)."""

    def to_json(self) -> dict:
        """Every figure with its CI and n; keys starting with "_" (pictures kept for the report) left out."""
        return _public({"verdict": self.verdict, "verdict_reasons": self.verdict_reasons, "warnings": self.warnings,
                        "grading": self.grading, "sanity": self.sanity, "localisation": self.localisation,
                        "koch": self.koch, "provenance": self.provenance})

    def headlines(self) -> dict[str, str]:
        """One line per section: its headline figure and what it was measured on."""
        g, s, k = self.grading, self.sanity, self.koch
        out = {"verdict": f"{self.verdict} ({'; '.join(self.verdict_reasons)})"}
        if g.get("measured"):
            a = g["auc_referable"]
            out["grading"] = (f"referable AUC {a['value']:.3f} [{a['ci'][0]:.3f}, {a['ci'][1]:.3f}], split-half QWK "
                              f"{g['qwk_split_half']:.3f}, n={g['n']} ({g['source']})")
        else:
            out["grading"] = "not measured: " + g["why"]
        default = s.get("default")
        m = s.get("methods", {}).get(default) or next(iter(s.get("methods", {}).values()), None)
        if m:
            rs = m.get("randomization_similarity")
            out["sanity"] = (f"{default}: input dependence {m['input_dependence']:.3f}, randomisation similarity "
                             f"{'-' if rs is None else f'{rs:.3f}'} ({s['n_eyes']} {s['source']} eyes)")
        for source, block in self.localisation.get("sources", {}).items():
            best = block["methods"].get(default) or next(iter(block["methods"].values()), None)
            if best:
                pg, auc = best["pointing_game"], best["pixel_auc"]
                out[f"localisation ({source})"] = (f"{default}: pointing game {pg['mean']:.2f} [{pg['ci'][0]:.2f}, {pg['ci'][1]:.2f}], "
                                                   f"pixel AUC {auc['mean']:.3f} [{auc['ci'][0]:.3f}, {auc['ci'][1]:.3f}], n={auc['n']}")
        ch = k["effects"]["severity_change"]
        out["koch"] = (f"severity change 0 -> {k['effects']['largest_count']}: {ch['mean']:+.2f} [{ch['ci'][0]:+.2f}, {ch['ci'][1]:+.2f}] "
                       f"on {k['effects']['distinct_hosts']} distinct host{'' if k['effects']['distinct_hosts'] == 1 else 's'} ({k['label']})")
        return out


def _public(obj):
    if isinstance(obj, dict):
        return {k: _public(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_public(v) for v in obj]
    return obj


def _say(text: str, progress: bool) -> None:
    if progress:
        print(f"audit: {text}", file=sys.stderr, flush=True)


def audit(model, out=None, config: AuditConfig | None = None, command: list[str] | None = None, progress: bool = True,
          **options) -> Audit:
    """Audit ``model`` (a loaded grader: the detector, or any model through :func:`~koch_explore.adapt`; or a
    shipped detector's name or safetensors file) and, with ``out``, write ``out/index.html`` (offline,
    self-contained), ``out/audit.json`` and ``out/figures/`` (SVG and 300-dpi PNG). ``config`` (copied, never
    changed) or keyword ``options`` set :class:`AuditConfig` fields; ``command`` is recorded as given."""
    from ..core.runtime import resolve_device

    cfg = replace(config or AuditConfig(), **options)
    if cfg.data not in ("auto", "real", "embedded", "phantom"):
        raise ValueError(f"data {cfg.data!r}: 'auto', 'real', 'embedded' or 'phantom'")
    cfg = replace(cfg, trained_on=parse_trained_on(cfg.trained_on))  # refused before any section runs
    device = resolve_device(cfg.device)
    if isinstance(model, (str, Path)):
        from ..detect.model import load_detector

        model = load_detector(model, device)
    model = model.to(device)
    val = eyepacs_val(model, cfg)
    _say("grading", progress)
    grading = grading_section(model, cfg, val, progress)
    _say("sanity checks of the evidence maps", progress)
    sanity = sanity_section(model, cfg, val, progress)
    _say("localisation against lesion masks", progress)
    localisation = localisation_section(model, cfg, progress)
    _say("Koch test", progress)
    koch, report = koch_section(model, cfg, device, val, progress)

    # per dataset, the most images any one section read from it: the sections draw from the same split
    # (sanity's eyes and the eyepacs-val hosts are among the graded validation eyes), so counts do not add up
    used: dict[str, int] = {}

    def read(name: str, n: int) -> None:
        used[name] = max(used.get(name, 0), int(n))

    if grading.get("measured"):
        read(grading["source"], grading["n"])
    read(sanity["source"], sanity["n_eyes"])
    for source, block in localisation["sources"].items():
        read(source, block["n_images"])
    if koch["source"] == "real":
        for name in {"trees": ("drive", "chase_db1"), "eyepacs-val": ("eyepacs",), "aptos-val": ("aptos",)}.get(cfg.hosts, ()):
            read(name, koch["effects"]["distinct_hosts"])
    elif koch["source"] == "phantom":
        read("phantom", koch["effects"]["distinct_hosts"])
    root = resolve_data_root(cfg.root)
    data = {
        "root": str(root) if root else None,
        "sections": {
            "grading": {"source": grading.get("source"), "split": "val", "images": grading.get("n", 0)},
            "sanity": {"source": sanity["source"], "split": "val", "images": sanity["n_eyes"]},
            "localisation": {s: {"images": b["n_images"]} for s, b in localisation["sources"].items()},
            "koch": {"hosts": koch["hosts"], "source": koch["source"], "distinct_hosts": koch["effects"]["distinct_hosts"],
                     "trials": koch["effects"]["trials"]},
        },
        "images_read_by_dataset": used,  # the most any one section read from each
    }
    warnings = trained_on_warnings(cfg.trained_on, used)
    if koch["effects"]["distinct_hosts"] == 1:
        warnings.append(f"all {koch['effects']['trials']} Koch trials reuse one host photo: the verdict cannot be "
                        "lesion-driven or not on one photo (give real hosts, e.g. --hosts eyepacs-val with a data root)")
    phantom_sections = [name for name, src in (("grading", grading.get("source")), ("sanity", sanity["source"])) if src == "phantom"]
    if koch["source"] == "phantom":
        phantom_sections.append("Koch test")
    if phantom_sections or "idrid" not in localisation["sources"]:
        warnings.append("measured on phantoms (cartoons with exact masks, not photographs): "
                        + ", ".join(phantom_sections + ([] if "idrid" in localisation["sources"] else ["localisation"])))
    result = Audit(report.verdict, list(report.verdict_reasons), grading, sanity, localisation, koch,
                   provenance(model, cfg, data, command, device), warnings, report)
    if out is not None:
        from .report import write_audit

        path = write_audit(result, out)
        _say(f"written {path}", progress)
    return result


__all__ = ["Audit", "AuditConfig", "SOURCES", "audit"]
