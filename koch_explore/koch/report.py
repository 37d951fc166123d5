"""The Koch report: one self-contained HTML page (figures embedded as PNG) a person can open offline.

``write_report(report, out_dir)`` writes ``index.html`` and ``report.json`` (the numbers) for a
:class:`~koch_explore.koch.KochReport`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

import numpy as np

from ..plotting import colourise, draw_boxes, mosaic, pyplot

__all__ = ["write_report", "figure_cases", "figure_severity", "figure_hits", "figure_distributions", "verdict_block"]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _culture_mosaic(descriptors, tile: int = 48) -> np.ndarray:
    """The placed descriptors' evidence patches (normalised, masked) side by side, as RGB."""
    return mosaic([colourise(d.evidence * d.mask / (float((d.evidence * d.mask).max()) + 1e-12)) for d in descriptors[:8]],
                  tile=tile, cols=4)


def figure_cases(cases, size: float = 2.6, mode: str = "whole"):
    """One row per case: tree, healthy synthesis, culture (descriptors), inoculated, re-isolated. In local
    mode (lesions grown in the host photo) the first panel is where the inoculated photo differs from the
    photo instead of the tree, which that mode does not use."""
    plt = pyplot()
    rows = max(1, len(cases))
    fig, axes = plt.subplots(rows, 5, figsize=(size * 5, size * rows), squeeze=False)
    local = mode == "local"
    titles = ["pixels the lesions changed" if local else "host vessel tree",
              "healthy photo (0 lesions)" if local else "healthy synthesis (0 lesions)", "2 Culture: placed descriptors",
              "3 Inoculate: placed lesions", "4 Re-isolate: evidence + boxes"]
    for r, c in enumerate(cases):
        ax = axes[r]
        if local:
            changed = np.abs(np.asarray(c.inoculated, np.float32) - np.asarray(c.healthy, np.float32)).max(axis=-1)
            ax[0].imshow(changed > 0, cmap="gray")
        else:
            ax[0].imshow(c.vessels, cmap="gray")
        ax[1].imshow(np.clip(c.healthy, 0, 1))
        ax[2].imshow(_culture_mosaic(c.descriptors))
        ax[3].imshow(np.clip(c.inoculated, 0, 1))
        draw_boxes(ax[3], c.placed_boxes, colour="cyan", lw=1.0)
        ax[4].imshow(np.clip(c.inoculated, 0, 1))
        ev = np.where(c.fov, c.evidence / (c.evidence[c.fov].max() + 1e-12), np.nan)
        ax[4].imshow(ev, cmap="magma", alpha=0.55)
        draw_boxes(ax[4], [b for b, s in zip(c.found_boxes, c.spurious) if not s], colour="lime", lw=1.0)
        draw_boxes(ax[4], [b for b, s in zip(c.found_boxes, c.spurious) if s], colour="red", lw=1.0)
        for (x0, y0, x1, y1), h in zip(c.placed_boxes, c.hits):
            ax[4].plot([(x0 + x1) / 2], [(y0 + y1) / 2], marker="o" if h else "x", color="lime" if h else "red", ms=4)
        n_hit = sum(c.hits)
        for j, a in enumerate(ax):
            a.axis("off")
            if r == 0:
                a.set_title(titles[j], fontsize=8)
        ax[0].text(2, 12, c.host, color="white", fontsize=6)
        ax[4].text(2, 12, f"{n_hit}/{len(c.hits)} re-found, {sum(c.spurious)} spurious", color="white", fontsize=7)
        top = max(c.severities)  # the largest count given (16 in the paper's dose series)
        ax[3].text(2, c.inoculated.shape[0] - 6, f"severity {c.severities.get(0, float('nan')):.2f} (0) -> "
                   f"{c.severities[top]:.2f} ({top})", color="white", fontsize=6)
    fig.suptitle("1 Isolate -> 2 Culture -> 3 Inoculate -> 4 Re-isolate (cyan: placed; o/x: re-found or missed; "
                 "green/red boxes: components on/off a placement)", fontsize=8)
    fig.tight_layout()
    return fig


def figure_severity(report, ax=None):
    """Severity vs lesion count: every trial (thin), the mean with a bootstrap 95% band."""
    plt = pyplot()
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.6, 3.2))
    sev = np.asarray(report.severity)
    x = np.arange(len(report.counts))
    for row in sev:
        ax.plot(x, row, color="0.8", lw=0.6)
    rng = np.random.default_rng(0)
    boot = sev[rng.integers(0, len(sev), size=(500, len(sev)))].mean(1)
    lo, hi = np.percentile(boot, 2.5, axis=0), np.percentile(boot, 97.5, axis=0)
    ax.fill_between(x, lo, hi, color="tab:red", alpha=0.25, lw=0)
    ax.plot(x, sev.mean(0), color="tab:red", marker="o", lw=2, label="synthesized lesions: mean (95% CI)")
    if getattr(report, "control_severity", None):
        ctl = np.asarray(report.control_severity)
        ax.plot(x, np.r_[sev[:, report.counts.index(0)].mean(), ctl.mean(0)], color="tab:gray", marker="s", lw=1.5, ls="--",
                label="real lesions transplanted: mean")
    ax.set_xticks(x, [str(c) for c in report.counts])
    ax.set_xlabel("placed lesions")
    ax.set_ylabel("severity (grade units, 0-4)")
    change = (getattr(report, "effects", None) or {}).get("severity_change")
    if change:
        ax.set_title(f"change 0 -> {report.counts[-1]}: {change['mean']:+.2f} [{change['ci'][0]:+.2f}, {change['ci'][1]:+.2f}] grades",
                     fontsize=9)
    ax.legend(fontsize=7)
    return fig if fig is not None else ax.figure


def figure_hits(report):
    """Hit rate by count (beside the transplant control's, when run; the placement AUC by count as a
    line on the same 0-1 axis, 0.5 meaning the map does not point at the lesions), by lesion type, by ring of the
    field of view (beside each ring's chance) and by the descriptor's evidence in its source eye, with
    the chance level of decoy points."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(14.0, 3.0), gridspec_kw={"width_ratios": [1.4, 1, 1, 1]})
    ks = list(report.hit_rate_by_count)
    ctl = report.control_hit_rate_by_count
    if ctl:
        x = np.arange(len(ks))
        axes[0].bar(x - 0.2, [report.hit_rate_by_count[k] for k in ks], 0.4, color="tab:green", label="synthesized")
        axes[0].bar(x + 0.2, [ctl.get(k, np.nan) for k in ks], 0.4, color="tab:gray", label="real lesions transplanted")
        axes[0].set_xticks(x, ks)
    else:
        x = np.arange(len(ks))
        axes[0].bar(x, [report.hit_rate_by_count[k] for k in ks], color="tab:green")
        axes[0].set_xticks(x, ks)
    placed = getattr(report, "placed_counts", None)
    if placed:  # n per bar: the lesions placed at each count, over all trials
        counts = list(report.counts)
        for i, k in enumerate(ks):
            n = sum(row[counts.index(int(k))] for row in placed)
            axes[0].text(x[i] - (0.2 if ctl else 0.0), 0.02, f"n={n}", ha="center", va="bottom", fontsize=6, color="white", rotation=90)
    auc = getattr(report, "placement_auc_by_count", None)
    if auc:
        axes[0].plot(x, [auc.get(k, np.nan) for k in ks], "o-", color="tab:red", lw=1.2, ms=3, label="placement AUC")
    types = list(report.hit_rate_by_type)
    axes[1].bar(types, [report.hit_rate_by_type[t]["rate"] for t in types], color="tab:blue")
    for t_i, t in enumerate(types):
        axes[1].text(t_i, 0.02, f"n={report.hit_rate_by_type[t]['placed']}", ha="center", fontsize=7, color="white")
    rings = list(report.hit_rate_by_region)
    x = np.arange(len(rings))
    axes[2].bar(x - 0.2, [report.hit_rate_by_region[r]["rate"] for r in rings], 0.4, color="tab:purple", label="placed")
    axes[2].bar(x + 0.2, [report.hit_rate_by_region[r]["chance"] for r in rings], 0.4, color="tab:gray", label="decoys")
    axes[2].set_xticks(x, rings)
    strengths = list(report.hit_rate_by_strength)
    axes[3].bar(strengths, [report.hit_rate_by_strength[k]["rate"] for k in strengths], color="tab:orange")
    for ax, table in ((axes[2], report.hit_rate_by_region), (axes[3], report.hit_rate_by_strength)):
        for i, k in enumerate(table):
            ax.text(i - (0.2 if ax is axes[2] else 0), 0.02, f"n={table[k]['placed']}", ha="center", fontsize=7, color="white")
    titles = ["hit rate by lesion count", "hit rate by lesion type", "by ring of the field of view",
              "by evidence in the source eye"]
    chance_by_count = getattr(report, "chance_hit_rate_by_count", None) or {}
    if chance_by_count:  # boxes grow with the count: each count has its own chance level
        axes[0].plot(np.arange(len(ks)), [chance_by_count.get(k, np.nan) for k in ks], "k_", ms=22, mew=2, label="chance at this count")
    axes[0].set_xlabel("placed lesions")
    axes[1].set_xlabel("lesion type (the descriptor's)")
    axes[2].set_xlabel("ring of the field of view")
    axes[3].set_xlabel("evidence in the source eye (tercile)")
    for i, (ax, title) in enumerate(zip(axes, titles)):
        # the count panel marks each count's own chance, the ring panel a decoy bar per ring: one overall line elsewhere
        if not (i == 0 and chance_by_count) and i != 2:
            ax.axhline(report.chance_hit_rate, color="k", ls="--", lw=1, label=f"chance, all counts {report.chance_hit_rate:.2f}")
        ax.set_ylim(0, 1)
        ax.set_ylabel("share re-found")
        ax.set_title(title, fontsize=9)
        if i == 0:  # four entries: below the panel, not over its bars
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
        else:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def figure_distributions(report):
    """Components per re-isolated image, and severity per count."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.0))
    comp = np.asarray(report.components_per_image).reshape(-1, len(report.counts))
    ticks = (range(1, len(report.counts) + 1), [str(c) for c in report.counts])
    axes[0].boxplot([comp[:, j] for j in range(comp.shape[1])])
    axes[0].set_xticks(*ticks)
    axes[0].set_xlabel("placed lesions")
    axes[0].set_ylabel("re-isolated components")
    sev = np.asarray(report.severity)
    axes[1].boxplot([sev[:, j] for j in range(sev.shape[1])])
    axes[1].set_xticks(*ticks)
    axes[1].set_xlabel("placed lesions")
    axes[1].set_ylabel("severity")
    fig.tight_layout()
    return fig


VERDICT_COLOURS = {"lesion-driven": "#1b7837", "inconclusive": "#8c6d1f", "not-lesion-driven": "#b2182b"}


def verdict_block(report) -> str:
    """The report's first paragraph: the verdict, its reasons, and the rule that decided it, stated."""
    rule = report.verdict_rule or {}
    colour = VERDICT_COLOURS.get(report.verdict, "#444")
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in report.verdict_reasons)
    stated = (f"Lesion-driven: the severity change from 0 to the largest count has its 95% CI above "
              f"{rule.get('min_change', '?')} grades, the placement AUC's CI lies above 0.5 + {rule.get('auc_margin', '?')}, and "
              f"real lesions transplanted to the same places raise the severity too. Not lesion-driven: the severity change's CI "
              f"lies inside +-{rule.get('equivalence', '?')} grades for synthesized and transplanted lesions alike, in a model "
              f"that grades the hosts' population (referable AUC >= {rule.get('min_referable_auc', '?')}); or it rises with "
              f"synthesized lesions but not with real ones. Inconclusive otherwise, and with fewer than "
              f"{rule.get('min_hosts', '?')} distinct hosts. CIs resample distinct hosts, not trials.")
    comp = report.competence
    said = ("competence not measured" if not comp else
            f"competence on {comp.get('n')} graded {comp.get('population')} photos: referable AUC "
            f"{comp['referable_auc']:.2f}, grade-0 to grade>=2 gap {comp['spread']:.2f} grades" if comp.get("referable_auc") is not None
            else f"competence: no graded photos of both classes in {comp.get('population')}")
    res = report.resolution or {}
    return (f"<div style='border-left:6px solid {colour};padding:0.2em 1em;background:#fafafa'>"
            f"<p style='font-size:130%'>Verdict: <b style='color:{colour}'>{html.escape(report.verdict)}</b></p>"
            f"<ul>{reasons}</ul><p class='note'>{report.n_trials} trials on {report.distinct_hosts} distinct "
            f"host{'' if report.distinct_hosts == 1 else 's'}; "
            f"{html.escape(said)}; the model takes {res.get('model_input', '?')} px and was shown {res.get('hosts', '?')} px hosts.</p>"
            f"<p class='note'>The rule, stated before it was validated on models whose answer is known: {html.escape(stated)}</p></div>")


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}img{max-width:100%}.note{color:#555;font-size:90%}"""


def write_report(report, out_dir: str | os.PathLike, title: str = "Koch report") -> Path:
    """Write ``out_dir/index.html`` (self-contained) and ``out_dir/report.json``; returns the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    j = report.to_json()
    local = report.config.get("mode") == "local"
    rows = [
        ("hit rate", f"{report.hit_rate:.3f} [{report.hit_rate_ci[0]:.3f}, {report.hit_rate_ci[1]:.3f}]",
         "placed lesions whose centroid lies in a re-isolated box (95% bootstrap CI over distinct hosts)"),
        ("chance hit rate", f"{report.chance_hit_rate:.3f}", "the same for random points away from every placement"),
    ]
    if report.mask_hit_rate is not None:
        rows += [("on-component hit rate", f"{report.mask_hit_rate:.3f} (chance {report.mask_chance_hit_rate:.3f})",
                  "the same two rates without boxes: the point lies on a re-isolated component's own pixels")]
    rows += [
        ("placement AUC", f"{report.placement_auc:.3f} [{report.placement_auc_ci[0]:.3f}, {report.placement_auc_ci[1]:.3f}]",
         "threshold-free: the blurred evidence map at placement centroids ranked against the random points "
         "(0.5: it does not tell placed lesions from other places)"),
    ]
    if report.control_hit_rate is not None:
        rows += [
            ("transplant control: hit rate", f"{report.control_hit_rate:.3f} [{report.control_hit_rate_ci[0]:.3f}, "
             f"{report.control_hit_rate_ci[1]:.3f}] (chance {report.control_chance_hit_rate:.3f}, "
             f"placement AUC {report.control_placement_auc:.3f})",
             "the same layouts pasted into the healthy host (the synthesis, or the photo in local mode) as the real lesions, "
             "at the contrast the detector saw them in their source eyes: what re-isolation finds when the lesions are real"),
        ]
    rows += [
        ("spurious rate", f"{report.spurious_rate:.3f}", "re-isolated components overlapping no placed lesion"),
        ("components on healthy synthesis", f"{report.healthy_components:.2f}", "mean per 0-lesion image"),
        ("Spearman severity ~ count", f"{report.spearman_severity_count:.3f} [{report.spearman_ci[0]:.3f}, {report.spearman_ci[1]:.3f}]",
         "per-trial rho averaged (a rank, blind to the change's size: read the effect sizes); 95% CI over distinct hosts"),
        ("Spearman of the mean curve", f"{report.spearman_mean_curve:.3f}", "count vs mean severity"),
        ("vessel Dice", "-" if report.vessel_dice is None else f"{report.vessel_dice:.3f}",
         "vessel segmenter on the healthy synthesis vs the host tree" + (" (local mode: the photo itself, nothing to measure)" if local else "")),
        ("Frechet distance (dense1)", "-" if report.fd is None else f"{report.fd:.1f} [{report.fd_ci[0]:.1f}, {report.fd_ci[1]:.1f}]",
         "healthy syntheses vs the hosts' real photos" + (" (local mode: the photos themselves)" if local else "")),
    ]
    table = "".join(f"<tr><th style='text-align:left'>{html.escape(a)}</th><td>{html.escape(b)}</td>"
                    f"<td class='note' style='text-align:left'>{html.escape(c)}</td></tr>" for a, b, c in rows)
    effects = "".join(f"<li>{html.escape(line)}</li>" for line in report.effect_lines())
    sev = "".join(f"<td>{v:.3f}</td>" for v in report.severity_by_count.values())
    figs = [("The four postulates, case by case", figure_cases(report.cases, mode="local" if local else "whole")) if report.cases else None,
            ("Severity by placed lesions", figure_severity(report)),
            ("Which lesions are re-found", figure_hits(report)),
            ("Distributions", figure_distributions(report))]
    body = "".join(f"<h2>{html.escape(t)}</h2><img src='data:image/png;base64,{_png(f)}'/>" for t, f in (x for x in figs if x))
    cfg = html.escape(json.dumps(report.config))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>
{verdict_block(report)}
<h3>Effect sizes (95% CIs from a bootstrap over distinct hosts)</h3><ul>{effects}</ul>
<p>Koch's fourth postulate, measured: {report.n_trials} inoculations of {report.distinct_hosts} healthy
host{'' if report.distinct_hosts == 1 else 's'} with
{", ".join(map(str, report.counts))} descriptors each ({"a dose series: same noise per host, each count adds lesions to the last"
if report.config.get("nested", True) else "same noise per host, an independent layout per count"}; {"local mode: the lesions grown inside each "
"host's real photo, every other pixel the photo's own" if local else "whole mode: each fundus drawn around the host's vessel tree"}), and the
detector re-isolated lesions from the inoculated images with the evidence method that cultured the bank, cut by the
{html.escape(str(report.config.get("rule")))} rule at {html.escape(str(report.config.get("threshold")))} of each map's maximum.</p>
<table>{table}</table>
<h3>Mean severity by placed lesions</h3>
<table><tr>{''.join(f'<th>{c}</th>' for c in report.counts)}</tr><tr>{sev}</tr></table>
{body}
<h3>Configuration</h3><p class="note"><code>{cfg}</code></p>
</body></html>"""
    tmp = out / ".index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out / "index.html")
    (out / "report.json").write_text(json.dumps(j, indent=1), encoding="utf-8")
    return out / "index.html"
