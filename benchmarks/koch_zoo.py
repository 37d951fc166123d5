"""Train and measure the known-answer zoo of issue 40 (deliverable 4): see koch_explore/koch/zoo.py.

::

    OMP_NUM_THREADS=1 python benchmarks/koch_zoo.py train --half dev
    OMP_NUM_THREADS=1 python benchmarks/koch_zoo.py measure --half dev
    OMP_NUM_THREADS=1 python benchmarks/koch_zoo.py train --half held-out
    # only once the verdict rule is frozen:
    OMP_NUM_THREADS=1 python benchmarks/koch_zoo.py measure --half held-out --rule-frozen
    python benchmarks/koch_zoo.py verdicts --half held-out      # the confusion table of docs/findings/koch-test.md#verdict
    # the same for the second held-out half (--half held-out-2), scored once under the second rule,
    # and for the replicated dose series (--half held-out-dose), scored once under the second rule

Weights go to ``runs/zoo/<half>/<name>.safetensors`` (with ``<name>.train.json``), Koch figures to
``runs/zoo/<half>/<name>.json``. Both steps are resumable: a model whose file exists is skipped.
``measure --half dev`` also measures the shipped phantom detector as a lesion-driven reference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from koch_explore.koch import zoo


@dataclass
class ZooPaths:
    root: Path = Path("runs/zoo")

    @property
    def pool(self) -> Path:
        return self.root / "pool.npz"

    def half(self, half: str) -> Path:
        return self.root / half


def train(half: str, only: list[str], steps: int | None, paths: ZooPaths) -> None:
    pool = zoo.build_pool(paths.pool)
    out = paths.half(half)
    out.mkdir(parents=True, exist_ok=True)
    for member in zoo.zoo_members(half):
        if only and member.name not in only:
            continue
        weights = out / f"{member.name}.safetensors"
        if weights.is_file():
            print(f"{member.name}: trained already", flush=True)
            continue
        if steps is not None:
            member.steps = steps
        model, record = zoo.train_member(member, pool, progress=True)
        record["valid"] = zoo.valid_member(member, record["grading"])
        zoo.save_member(model, record, weights)
        g = record["grading"]
        print(f"{member.name}: {record['train_s']:.0f} s, own-label rho {g['spearman_own_label']}, "
              f"lesion-grade rho {g['spearman_true_grade']}, valid {record['valid']}", flush=True)


def measure(half: str, only: list[str], paths: ZooPaths, reference: bool) -> None:
    out = paths.half(half)
    cfg = zoo.MeasureConfig()
    pool = zoo.load_pool(paths.pool)
    hosts = zoo.koch_hosts(cfg)
    synth, bank = zoo.transplant_setup(cfg.bank)
    todo = [m for m in zoo.zoo_members(half) if not only or m.name in only]
    for member in todo:
        target = out / f"{member.name}.json"
        weights = out / f"{member.name}.safetensors"
        if target.is_file():
            print(f"{member.name}: measured already", flush=True)
            continue
        if not weights.is_file():
            print(f"{member.name}: not trained yet, skipped", flush=True)
            continue
        record = json.loads(weights.with_suffix(".train.json").read_text())
        model = zoo.load_member(member, weights).eval()
        t0 = time.time()
        competence = zoo.member_competence(model, member, pool)
        report = zoo.measure(model, synth, bank, hosts, cfg, competence=competence, progress=True)
        _write(target, {"name": member.name, "known": member.known, "lesion_share": member.share, "member": asdict(member),
                        "grading": record["grading"], "valid": record.get("valid"), "train_s": record["train_s"],
                        "measure_s": time.time() - t0, "measure_config": asdict(cfg), "report": report})
        _print(member.name, report)
    if reference and not only:
        _measure_reference(out, cfg, hosts, synth, bank, paths)


def _measure_reference(out: Path, cfg, hosts, synth, bank, paths: ZooPaths) -> None:
    """The shipped phantom detector: lesion-driven by construction (trained on phantom grades)."""
    import koch_explore as ke

    target = out / "reference-phantom-detector.json"
    if target.is_file():
        print("reference: measured already", flush=True)
        return
    det = ke.load_detector("phantom")
    as_member = zoo.Member("reference", "phantom-detector", 0, share=1.0)  # graded on the plain pool
    pool = zoo.load_pool(paths.pool)
    grading = zoo.grading_figures(det, as_member, pool)
    t0 = time.time()
    report = zoo.measure(det, synth, bank, hosts, cfg, competence=zoo.member_competence(det, as_member, pool), progress=True)
    _write(target, {"name": "reference-phantom-detector", "known": "lesion-driven", "lesion_share": 1.0, "member": None,
                    "grading": grading, "valid": True, "train_s": None, "measure_s": time.time() - t0,
                    "measure_config": asdict(cfg), "report": report})
    _print("reference-phantom-detector", report)


def table(half: str, paths: ZooPaths) -> None:
    """One Markdown row per measured model of ``half`` (the raw figures; no verdict)."""
    head = ["name", "known", "share", "valid", "rho own", "rho grade", "sev 0", "sev 16", "rho sev~count", "AUC",
            "ctrl sev 16", "hit", "chance", "train s", "measure s"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for f in sorted(paths.half(half).glob("*.json")):
        if f.name.endswith(".train.json"):
            continue
        d = json.loads(f.read_text())
        r, g = d["report"], d["grading"]
        sev, ctrl = r["severity_by_count"], r.get("control_severity_by_count") or {}
        cells = [d["name"], d["known"], d["lesion_share"], d["valid"], g["spearman_own_label"], g["spearman_true_grade"],
                 sev.get("0"), sev.get("16"), r["spearman_severity_count"], r["placement_auc"], ctrl.get("16"),
                 r["hit_rate"], r["chance_hit_rate"], d["train_s"], d["measure_s"]]
        print("| " + " | ".join(f"{c:.2f}" if isinstance(c, float) else str(c) for c in cells) + " |")


def verdicts(half: str, paths: ZooPaths) -> None:
    """The confusion table of verdicts against the known answers of ``half`` (dose members and the reference
    reported apart, not counted), the false-positive rate (lesion-blind called lesion-driven) with its exact
    95% interval, and the dose series' effect sizes by lesion share."""
    from koch_explore.core.stats import exact_binomial_ci
    from koch_explore.koch.verdict import VERDICTS

    rows = []
    for f in sorted(paths.half(half).glob("*.json")):
        if not f.name.endswith(".train.json"):
            d = json.loads(f.read_text())
            rows.append(d)
    counted = [d for d in rows if d["known"] in ("lesion-driven", "lesion-blind") and d.get("member")]
    print(f"| known \\ verdict | {' | '.join(VERDICTS)} | n |\n|---|---|---|---|---|")
    for known in ("lesion-driven", "lesion-blind"):
        got = [d["report"]["verdict"] for d in counted if d["known"] == known]
        print(f"| {known} | " + " | ".join(str(got.count(v)) for v in VERDICTS) + f" | {len(got)} |")
    blind = [d for d in counted if d["known"] == "lesion-blind"]
    fp = sum(d["report"]["verdict"] == "lesion-driven" for d in blind)
    if blind:
        lo, hi = exact_binomial_ci(fp, len(blind))
        print(f"\nfalse-positive rate (lesion-blind called lesion-driven): {fp}/{len(blind)}, exact 95% CI [{lo:.3f}, {hi:.3f}]")
    print("\n| model | known | share | verdict | severity change 0 -> 16 [95% CI] | placement AUC [95% CI] | competence (referable AUC) | reasons |")
    print("|---|---|---|---|---|---|---|---|")
    for d in sorted(rows, key=lambda d: (d["known"], d.get("lesion_share") or 0, d["name"])):
        r = d["report"]
        e, comp = r["effects"], r.get("competence") or {}
        ch, auc = e["severity_change"], e["placement_auc"]
        ref = comp.get("referable_auc")
        print(f"| {d['name']} | {d['known']} | {d.get('lesion_share')} | **{r['verdict']}** | {ch['mean']:+.3f} [{ch['ci'][0]:+.3f}, "
              f"{ch['ci'][1]:+.3f}] | {auc['value']:.2f} [{auc['ci'][0]:.2f}, {auc['ci'][1]:.2f}] | "
              f"{'-' if ref is None else f'{ref:.2f}'} | {'; '.join(r['verdict_reasons'])} |")
    dose_order([d for d in rows if d["known"] == "dose"])


def dose_order(rows: list[dict]) -> None:
    """The dose series' effect sizes by lesion share: the mean over the members of each share (the order is read
    on these means), and every member's."""
    shares = sorted({d["lesion_share"] for d in rows})
    if not shares:
        return
    print("\n| lesion share | members | severity change 0 -> 16: mean (each) | hit minus chance: mean | placement AUC: mean |")
    print("|---|---|---|---|---|")
    means = []
    for share in shares:
        got = [d["report"]["effects"] for d in rows if d["lesion_share"] == share]
        change = [e["severity_change"]["mean"] for e in got]
        above = [e["hit_minus_chance"]["value"] for e in got]
        auc = [e["placement_auc"]["value"] for e in got]
        means.append(sum(change) / len(change))
        print(f"| {share} | {len(got)} | {means[-1]:+.3f} ({', '.join(f'{c:+.3f}' for c in change)}) | "
              f"{sum(above) / len(above):+.3f} | {sum(auc) / len(auc):.3f} |")
    ordered = all(a < b for a, b in zip(means, means[1:]))
    print(f"\nmean severity change rises with the lesion share: {'yes' if ordered else 'no'}")


def _write(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def _print(name: str, r: dict) -> None:
    sev = " ".join(f"{k}:{v:.2f}" for k, v in r["severity_by_count"].items())
    print(f"{name}: severity {sev} | AUC {r['placement_auc']:.3f} | hit {r['hit_rate']:.3f} chance {r['chance_hit_rate']:.3f} "
          f"| control hit {r.get('control_hit_rate')}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=("train", "measure", "table", "verdicts"))
    ap.add_argument("--half", choices=zoo.HALVES, required=True)
    ap.add_argument("--only", nargs="*", default=[], help="member names (default: all of the half)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: each member's own)")
    ap.add_argument("--root", default="runs/zoo")
    ap.add_argument("--no-reference", action="store_true", help="measure: skip the shipped phantom detector")
    ap.add_argument("--rule-frozen", action="store_true", help="measure a held-out half: the verdict rule is frozen")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # the machine is shared: one core per process
    paths = ZooPaths(Path(args.root))
    if args.step == "train":
        train(args.half, args.only, args.steps, paths)
    elif args.step == "table":
        table(args.half, paths)
    elif args.step == "verdicts":
        verdicts(args.half, paths)
    else:
        if args.half.startswith("held-out") and not args.rule_frozen:
            print("the held-out half is measured only once the verdict rule is frozen (--rule-frozen)", file=sys.stderr)
            return 2
        measure(args.half, args.only, paths, reference=args.half == "dev" and not args.no_reference)
    return 0


if __name__ == "__main__":
    sys.exit(main())
