"""``koch-explore koch-test`` and ``koch-explore report``: postulate 4 on the command line."""

from __future__ import annotations

import json
import sys

from ..culture.cut import DEFAULT_RULE, RULE_THRESHOLDS, RULES, parse_threshold
from ..koch.hosts import HOSTS, POPULATIONS
from ..koch.test import KochConfig
from ..synthesis.synthesizer import MODES
from .grader import load_model_from_args, model_options


def _common(p) -> None:
    p.add_argument("--data", default="auto", choices=["auto", "real", "embedded", "phantom"],
                   help="real: DRIVE + CHASE_DB1 hosts, EyePACS descriptors; embedded: the same models on skimage's "
                        "retina photo (no data needed); phantom: phantom detector/synthesizer; auto: real when found, else embedded")
    p.add_argument("--root", default=None, help="data root (default: KOCH_DATA, ../shared/data, ./data)")
    p.add_argument("--trials", type=int, default=KochConfig.trials, help="hosts inoculated (default %(default)s)")
    p.add_argument("--mode", default="whole", choices=list(MODES),
                   help="whole: the paper's generator draws the whole fundus around each host's vessel tree; local: "
                        "lesions grown inside each host's real photo, the rest of it untouched (default %(default)s)")
    p.add_argument("--hosts", default="trees", metavar="{" + ",".join(HOSTS) + ",DIR}",
                   help="healthy hosts: trees = DRIVE + CHASE_DB1 with manual trees (the whole-fundus synthesizer's "
                        "training hosts); eyepacs-val / aptos-val = grade-0 photos of the held-out validation split "
                        "(no shipped model trained on them); embedded = skimage's retina photo; DIR = a folder of your "
                        "healthy photos (trees from the vessel segmenter where none is given)")
    p.add_argument("--host-count", type=int, default=68,
                   help="photos drawn for --hosts eyepacs-val/aptos-val/DIR (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default=None, help="evidence method used to re-isolate (default: the bank's own)")
    p.add_argument("--weights", "--detector", dest="weights", default=None,
                   help="the audited model's weights, as in every command: the detector's (a shipped name or safetensors; "
                        "default: the shipped one for --data) or, with --model, your model's safetensors")
    p.add_argument("--synthesizer", default=None,
                   help="synthesizer: a shipped name (real, local, deconvnet, phantom) or safetensors (default: the shipped "
                        "one for --data and --mode)")
    p.add_argument("--bank", default=None, help="descriptor bank: a shipped name or safetensors (default: the one shipped with the synthesizer)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--start", default=None,
                   help="layer the evidence starts from: the deconvnet's start, Grad-CAM's conv "
                        "(default: the bank's own when --method is the bank's and the model has that layer, else the model's default)")
    p.add_argument("--threshold", type=parse_threshold, default=None,
                   help="re-isolation cut: 'otsu' or a fraction of the map's maximum (default: the bank's own when it was cut "
                        "by the same rule, else the rule's: " + ", ".join(f"{r} {t}" for r, t in RULE_THRESHOLDS.items()) + ")")
    p.add_argument("--rule", default=None, choices=list(RULES),
                   help=f"re-isolation rule: one component per local peak, or one global cut (default {DEFAULT_RULE}: boxes "
                        "that grow with every cluster of lesions make the hit rate chance)")
    p.add_argument("--independent-layouts", action="store_true",
                   help="draw an independent layout per count instead of the nested dose series")
    p.add_argument("--no-control", action="store_true",
                   help="skip the transplant control (the same layouts pasted into the healthy synthesis as the real lesions; "
                        "without it a flat response is inconclusive)")
    p.add_argument("--population", default="auto", choices=["auto", *POPULATIONS, "none"],
                   help="graded photos the model's competence is measured on before a flat response may read "
                        "'not-lesion-driven' (auto: the hosts' own population where the kit has graded photos of it; "
                        "none: not measured, a flat response is then inconclusive)")


def add_cli(sub) -> None:
    k = sub.add_parser("koch-test", parents=[model_options()],
                       help="postulate 4: re-isolate inoculated lesions; hit rate and severity vs count")
    _common(k)
    k.add_argument("--json", action="store_true", help="print one JSON object")
    k.set_defaults(func=_koch_test)
    r = sub.add_parser("report", parents=[model_options()], help="run the Koch test and write an offline HTML report")
    _common(r)
    r.add_argument("--out", required=True, help="folder for index.html and report.json")
    r.set_defaults(func=_report)


def _run(args):
    """(report, data) for a CLI call."""
    from ..core.runtime import determinism_note, resolve_device
    from ..koch import default_setup, hosts_population, koch_test, population_competence

    device = resolve_device(args.device)
    if note := determinism_note(device):
        print(note, file=sys.stderr)
    audited = load_model_from_args(args, args.weights, device) if args.model else args.weights
    det, synth, bank, hosts, data = default_setup(args.data, args.root, audited, args.synthesizer, args.bank,
                                                  device, args.hosts, args.host_count, args.mode)
    cfg = KochConfig(trials=args.trials, seed=args.seed, method=args.method, threshold=args.threshold, start=args.start, rule=args.rule,
                     nested=not args.independent_layouts, control=not args.no_control)
    population = hosts_population(data, args.hosts, args.root) if args.population == "auto" else args.population
    competence = None if population in (None, "none") else population_competence(det, population, args.root)
    return koch_test(det, synth, bank, hosts, config=cfg, competence=competence), data


def _koch_test(args) -> int:
    rep, data = _run(args)
    hosts = args.hosts if data == "real" or args.hosts != "trees" else None
    print(json.dumps(rep.cli_json(data, hosts, args.mode)) if args.json else rep.summary(data, hosts, args.mode))
    return 0


def _report(args) -> int:
    from ..koch.report import write_report

    rep, data = _run(args)
    hosts = f", {args.hosts} hosts" if args.hosts != "trees" else ""
    path = write_report(rep, args.out, title=f"Koch report — {data} data{hosts}, {args.mode} synthesis")
    print(f"report written to {path}")
    return 0
