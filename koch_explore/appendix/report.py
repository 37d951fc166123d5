"""The audit as a document: ``index.html`` (offline, self-contained: figures embedded), ``audit.json`` and
``figures/`` (each figure as SVG and 300-dpi PNG, for a paper's appendix)."""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

import numpy as np

from ..evidence.localisation import LOCALISATION_MEASURES
from ..koch.report import figure_cases, figure_hits, figure_severity, verdict_block
from ..plotting import pyplot

MEASURE_LABELS = {
    "pointing_game": "pointing game (hit rate)",
    "relevance_mass": "relevance mass accuracy",
    "relevance_rank": "relevance rank accuracy",
    "top_k_intersection": "top-k intersection (k=1000)",
    "pixel_auc": "pixel AUC",
}


def _ci_err(mean, ci):
    """Matplotlib error bar lengths (below, above) of a mean and its [low, high] interval."""
    return [[max(0.0, mean - ci[0])], [max(0.0, ci[1] - mean)]]


def figure_grading(grading):
    """Mean severity by true grade with its 95% CI and n on each bar; a grade without eyes gets no bar."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    for row in grading["mean_severity_by_grade"]:
        g = row["grade"]
        if row["mean"] is None:
            ax.text(g, 0.05, "no eyes", ha="center", fontsize=7, rotation=90, color="0.4")
            continue
        ax.bar(g, row["mean"], color="#c0504d", yerr=_ci_err(row["mean"], row["ci"]), capsize=3)
        ax.text(g, row["mean"] + 0.05, f"n={row['n']}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(5))
    ax.set_xlabel("true grade")
    ax.set_ylabel("mean severity (grade units, 0-4)")
    ax.set_ylim(0, 4.3)
    a = grading["auc_referable"]
    ax.set_title(f"{grading['source']}: referable AUC {a['value']:.2f} [{a['ci'][0]:.2f}, {a['ci'][1]:.2f}], n={grading['n']}", fontsize=9)
    fig.tight_layout()
    return fig


def figure_sanity(sanity):
    """Per method: input dependence and randomisation similarity with 95% CIs over eyes (lower is better)."""
    plt = pyplot()
    methods = list(sanity["methods"])
    fig, ax = plt.subplots(figsize=(1.2 * len(methods) + 2.4, 3.2))
    x = np.arange(len(methods))
    for off, key, colour, label in ((-0.2, "input_dependence", "tab:blue", f"input dependence ({sanity['n_eyes']} eyes)"),
                                    (0.2, "randomization_similarity", "tab:orange", f"randomisation similarity ({sanity['n_randomized']} eyes)")):
        for i, m in enumerate(methods):
            rec = sanity["methods"][m]
            v = rec.get(key)
            if v is None:
                ax.text(i + off, 0.02, "n/a", ha="center", fontsize=7, color="0.4")
                continue
            ci = rec.get(f"{key}_ci") or [v, v]
            ax.bar(i + off, v, 0.4, color=colour, yerr=_ci_err(v, ci), capsize=2, label=label if i == 0 else None)
    ax.legend(fontsize=7)
    ax.set_xticks(x, methods, rotation=20, fontsize=8)
    ax.set_ylabel("correlation (lower is better)")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_title(f"sanity of the maps: {sanity['source']} eyes", fontsize=9)
    fig.tight_layout()
    return fig


def figure_localisation(block, source: str):
    """One panel per measure: each method's mean over images with its 95% CI (the random map is the floor)."""
    plt = pyplot()
    methods = list(block["methods"])
    fig, axes = plt.subplots(1, len(LOCALISATION_MEASURES), figsize=(3.0 * len(LOCALISATION_MEASURES), 3.0))
    for ax, measure in zip(axes, LOCALISATION_MEASURES):
        for i, m in enumerate(methods):
            r = block["methods"][m][measure]
            if not np.isfinite(r["mean"]):
                continue
            ax.errorbar(i, r["mean"], yerr=_ci_err(r["mean"], r["ci"]), fmt="o", color="0.5" if m == "random" else "tab:red", capsize=3)
        ax.set_xticks(range(len(methods)), methods, rotation=35, ha="right", fontsize=7)
        ax.set_ylabel(MEASURE_LABELS[measure], fontsize=8)
        ax.set_ylim(0, 1.02)
        if measure == "pixel_auc":
            ax.axhline(0.5, color="k", ls="--", lw=0.8)
        n = next(iter(block["methods"].values()))[measure]["n"] if block["methods"] else 0
        ax.set_title(f"n={n} images", fontsize=8)
    fig.suptitle(f"Localisation on {source} (mean, 95% CI over images; grey: the random map)", fontsize=9)
    fig.tight_layout()
    return fig


def figure_maps(block, source: str):
    """The example image with its lesions outlined, and each method's map on it with a colour bar."""
    plt = pyplot()
    maps = block.get("_example_maps") or {}
    image, lesions = block.get("_example_image"), block.get("_example_lesions")
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(2.6 * (len(maps) + 1), 2.8))
    axes = np.atleast_1d(axes)
    axes[0].imshow(np.clip(image, 0, 1))
    axes[0].contour(lesions, levels=[0.5], colors="cyan", linewidths=0.5)
    axes[0].set_title(f"{block['example']['name']}\nlesions outlined", fontsize=8)
    for ax, (name, m) in zip(axes[1:], maps.items()):
        im = ax.imshow(m / (np.abs(m).max() + 1e-12), cmap="magma")
        ax.contour(lesions, levels=[0.5], colors="cyan", linewidths=0.3)
        ax.set_title(name, fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="evidence / max")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"Evidence maps on one {source} image (the one with the most lesion pixels)", fontsize=9)
    fig.tight_layout()
    return fig


def _save(fig, figures: Path, name: str) -> str:
    """figures/NAME.svg and figures/NAME.png (300 dpi); returns the PNG embedded at screen resolution."""
    fig.savefig(figures / f"{name}.svg", bbox_inches="tight")
    fig.savefig(figures / f"{name}.png", dpi=300, bbox_inches="tight")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _ci(d, digits: int = 3) -> str:
    if d is None or d.get("mean", d.get("value")) is None:
        return "-"
    v = d.get("mean", d.get("value"))
    lo, hi = d.get("ci") or (float("nan"), float("nan"))
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _table(head, rows) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}img{max-width:100%}.note{color:#555;font-size:90%}.warn{background:#fff4e5;border-left:6px solid #e69500;padding:0.3em 1em}
h2 small{font-weight:normal;color:#666;font-size:65%}"""


def write_audit(result, out) -> Path:
    """Write ``out/index.html``, ``out/audit.json`` and ``out/figures/``; returns the HTML path."""
    out = Path(out)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    g, s, loc, k, prov = result.grading, result.sanity, result.localisation, result.koch, result.provenance
    parts = []

    warn = "".join(f"<li>{html.escape(w)}</li>" for w in result.warnings)
    if warn:
        parts.append(f"<div class='warn'><b>Read with care</b><ul>{warn}</ul></div>")
    heads = "".join(f"<tr><th style='text-align:left'>{html.escape(a)}</th><td style='text-align:left'>{html.escape(b)}</td></tr>"
                    for a, b in result.headlines().items())
    parts.append(f"<h2>Summary</h2><table>{heads}</table>")

    # 1 grading
    if g.get("measured"):
        rows = [("referable AUC (grade >= 2)", _ci(g["auc_referable"])), ("QWK (cuts fit on these eyes)", _ci(g["qwk"])),
                ("QWK split-half (cuts fit on half the patients)", f"{g['qwk_split_half']:.3f}"), ("accuracy", f"{g['accuracy']:.3f}"),
                ("eyes / patients", f"{g['n']} / {g['patients']}")]
        png = _save(figure_grading(g), figures, "grading")
        parts.append(f"<h2>1 · Grading <small>measured on {html.escape(g['label'])}</small></h2>"
                     f"{_table(['figure', 'value [95% CI over patients]'], rows)}<img src='data:image/png;base64,{png}'/>")
    else:
        parts.append(f"<h2>1 · Grading <small>not measured</small></h2><p>{html.escape(g['why'])}.</p>")

    # 2 sanity
    rows = [(m, _ci({"mean": r["input_dependence"], "ci": r.get("input_dependence_ci")}),
             "-" if r.get("randomization_similarity") is None else _ci({"mean": r["randomization_similarity"], "ci": r.get("randomization_similarity_ci")}))
            for m, r in s["methods"].items()]
    rows += [(m, f"skipped: {why}", "") for m, why in s.get("skipped", {}).items()]
    head = ["method", "input dependence [95% CI]", f"randomisation similarity [95% CI] ({s['n_randomized']} eyes)"]
    png = _save(figure_sanity(s), figures, "sanity")
    parts.append(f"<h2>2 · Sanity of the evidence maps <small>measured on {s['n_eyes']} {html.escape(s['label'])}</small></h2>"
                 "<p class='note'>Input dependence: Pearson r of each eye's map with the mean map (1: the same map whatever the eye). "
                 "Randomisation similarity: rank correlation of each map with the map of a copy whose head and top two conv blocks "
                 "were re-initialised (Adebayo et al. 2018; high: the map does not depend on what was learned). Lower is better; "
                 "CIs over eyes.</p>"
                 f"{_table(head, rows)}"
                 f"<img src='data:image/png;base64,{png}'/>")

    # 3 localisation
    for source, block in loc["sources"].items():
        rows = [(m, *[_ci(r[x], 3) for x in LOCALISATION_MEASURES]) for m, r in block["methods"].items()]
        rows += [(m, f"skipped: {why}", "", "", "", "") for m, why in block["skipped"].items()]
        png1 = _save(figure_localisation(block, source), figures, f"localisation_{source}")
        png2 = _save(figure_maps(block, source), figures, f"maps_{source}")
        parts.append(f"<h2>3 · Localisation on lesion masks <small>measured on {block['n_images']} {html.escape(block['label'])}</small></h2>"
                     "<p class='note'>By Quantus's definitions (Hedström et al., JMLR 2023), inside the field of view, against the union "
                     "of the lesion masks: pointing game (the map's maximum on a lesion), relevance mass accuracy (the map's mass on "
                     "lesions), relevance rank accuracy (lesion share of the K highest pixels, K the lesion pixels), top-k intersection "
                     "(lesion share of the 1000 highest pixels), pixel AUC. Mean over images, 95% bootstrap CI over images; "
                     f"{block['lesion_pixels']} lesion pixels in all. The random map is the floor each is read against.</p>"
                     f"{_table(['method', *[MEASURE_LABELS[x] for x in LOCALISATION_MEASURES]], rows)}"
                     f"<img src='data:image/png;base64,{png1}'/><img src='data:image/png;base64,{png2}'/>")

    # 4 Koch
    rep = result.koch_report
    effects = "".join(f"<li>{html.escape(line)}</li>" for line in rep.effect_lines())
    koch_figs = [("severity", figure_severity(rep)), ("re-isolation", figure_hits(rep))]
    if rep.cases:
        koch_figs.insert(0, ("cases", figure_cases(rep.cases[:3], mode=k["mode"])))
    imgs = "".join(f"<img src='data:image/png;base64,{_save(f, figures, 'koch_' + n.replace('-', '_'))}'/>" for n, f in koch_figs)
    note = f"<p class='note'>{html.escape(k['method_note'])}.</p>" if k.get("method_note") else ""
    parts.append(f"<h2>4 · The Koch test <small>measured on {html.escape(k['label'])}, {k['mode']} synthesis</small></h2>"
                 f"{note}<ul>{effects}</ul>{imgs}")

    # provenance
    model = prov["model"]
    prow = [("kit", f"{prov['kit']['name']} {prov['kit']['version']} (commit {prov['kit']['git_commit'] or 'not a git checkout'})"),
            ("python / torch / numpy", f"{prov['python']} / {prov['torch']} / {prov['numpy']}"), ("device", f"{prov['device']}, {prov['cpu_threads']} CPU threads"),
            ("platform", prov["platform"]), ("model", f"{model['wrapped']} ({model['class']}), input {model['input_size']} px"),
            ("weights file", f"{model['weights_file'] or '(in memory)'}"), ("weights file sha256", model["weights_file_sha256"] or "-"),
            ("tensors sha256", model["tensors_sha256"] or "-"),
            ("adapter options", json.dumps(model.get("adapter_options", "-"))), ("data root", prov["data"]["root"] or "none (embedded data)"),
            ("images read (the most any section read from each dataset)", json.dumps(prov["data"]["images_read_by_dataset"])), ("audit options", json.dumps(prov["config"])),
            ("date (UTC)", prov["date"]), ("command", prov["command"] or "(called from Python)")]
    parts.append("<h2>Provenance</h2><table>" + "".join(
        f"<tr><th style='text-align:left'>{html.escape(a)}</th><td style='text-align:left'><code>{html.escape(str(b))}</code></td></tr>"
        for a, b in prow) + "</table>")

    title = f"Audit of {model['wrapped']} — Koch verdict: {result.verdict}"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{verdict_block(rep)}{''.join(parts)}</body></html>")
    tmp = out / ".index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out / "index.html")
    tmp = out / ".audit.json.tmp"
    tmp.write_text(json.dumps(result.to_json(), indent=1, default=_jsonable), encoding="utf-8")
    os.replace(tmp, out / "audit.json")
    return out / "index.html"


def _jsonable(obj):
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON: {type(obj).__name__}")
