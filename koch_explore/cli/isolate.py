"""``koch-explore isolate bank | eval | sanity | baseline``: postulates 1-2 on the command line."""

from __future__ import annotations

import argparse
import json

from ..culture.cut import DEFAULT_RULE, RULE_THRESHOLDS, RULES, parse_threshold
from ..culture.isolation import DEFAULT_MIN_SHARE
from ..evidence.base import DEFAULT_METHOD, METHODS
from .grader import load_model_from_args, model_options


def _evidence_options(method_default: str | None, method_help: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, parents=[model_options()])
    p.add_argument("--weights", default=None, help="detector: a shipped name (eyepacs, phantom) or safetensors (default eyepacs); "
                                                   "with --model, your model's safetensors")
    p.add_argument("--method", choices=list(METHODS), default=method_default, help=method_help)
    p.add_argument("--start", default=None,
                   help="layer the evidence starts from: the deconvnet's start layer (default: the model's, dense2 of the "
                        "detector), Grad-CAM's conv when it names one (else the last conv with cells of at most 32 px)")
    p.add_argument("--channels", type=int, default=None, help="deconvnet: project only the top-k channels of the start layer")
    p.add_argument("--batch-size", type=int, default=8)
    return p


def _cut_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--threshold", type=parse_threshold, default=None,
                   help="'otsu' or a fraction of the maximum (default: the rule's, "
                        + ", ".join(f"{r} {t}" for r, t in RULE_THRESHOLDS.items()) + ")")
    p.add_argument("--rule", choices=list(RULES), default=DEFAULT_RULE,
                   help="global: every pixel above the cut, components as they connect (the paper's); peaks: one component "
                        "per local maximum above the cut, grown to a fraction of its own height (default %(default)s)")
    p.add_argument("--blur-sigma", type=float, default=None, help="Gaussian sigma in px (default 10 px at 512, scaled)")
    p.add_argument("--min-area", type=int, default=None, help="smallest component kept, px (default 16 at 256, scaled)")
    p.add_argument("--min-share", type=float, default=DEFAULT_MIN_SHARE,
                   help=f"drop components whose severity share is below this (default {DEFAULT_MIN_SHARE}; 'nan' keeps all)")
    p.add_argument("--require-disease", action=argparse.BooleanOptionalAction, default=True,
                   help="isolate nothing from images the detector grades 0 (default on)")
    return p


def add_cli(sub) -> None:
    p = sub.add_parser("isolate", help="cut lesions out of the detector's evidence maps as pathological descriptors; score the cut")
    isub = p.add_subparsers(dest="isolate_command", metavar="ACTION")
    method_help = f"evidence map method (default {DEFAULT_METHOD})"
    ev, cut = _evidence_options(DEFAULT_METHOD, method_help), _cut_options()

    b = isub.add_parser("bank", parents=[ev, cut], help="explain fundus photos and save every evidence component as a descriptor bank",
                        description=f"Explain the detector ({DEFAULT_METHOD} by default), threshold the evidence and save every "
                                    "component as a descriptor bank (safetensors + JSON sidecar).")
    b.add_argument("images", nargs="+", metavar="IMAGE", help="fundus photos, or folders of them (searched recursively, sorted)")
    b.add_argument("--out", required=True, help="bank file to write (safetensors; the sidecar is BANK with .json)")
    b.add_argument("--shard-size", type=int, default=0,
                   help="photos per shard (a multiple of --batch-size): stream the photos, save each shard's bank under "
                        "OUT.shards/ as it is done, resume from them when re-run with the same arguments, split them "
                        "across torchrun ranks, then merge into OUT (default 0: one pass in memory)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=_bank)

    e = isub.add_parser("eval", parents=[ev, cut], help="score isolation against lesion truth: pointing game, pixel AUC per type")
    e.add_argument("--data", required=True, help="'phantom' (generated, exact truth) or a lesion folder (IDRiD_lesions or phantom layout)")
    e.add_argument("--count", type=int, default=16, help="phantoms to generate (default %(default)s)")
    e.add_argument("--size", type=int, default=None, help="phantom side before preparation (default: the detector's input size)")
    e.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=_eval)

    s = isub.add_parser("sanity", parents=[_evidence_options(None, "one evidence method (default: all of them)")],
                        help="do the maps depend on the image and on what the network learned? do they localise IDRiD lesions?")
    s.add_argument("--data", default=None, help="lesion folder (default IDRiD_lesions under the data root; 'none' to skip)")
    s.add_argument("--count", type=int, default=100, help="EyePACS validation eyes (default %(default)s)")
    s.add_argument("--root", default=None, help="data root (default: KOCH_DATA, ../shared/data, ./data)")
    s.add_argument("--cascade", action="store_true", help="also the cascading randomisation, 1 to all conv blocks re-initialised with the head")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=_sanity)

    h = isub.add_parser("baseline", parents=[model_options()], help="the healthy population's activation at --start (for deconvnet-excess)")
    h.add_argument("--weights", default=None, help="detector: a shipped name or safetensors (default eyepacs); with --model, your model's")
    h.add_argument("--start", default=None, help="layer (default: the model's deconvnet start, dense2 of the detector)")
    h.add_argument("--data", default="eyepacs", choices=["eyepacs", "phantom"], help="grade-0 EyePACS training eyes or phantoms")
    h.add_argument("--count", type=int, default=400, help="healthy eyes (default %(default)s)")
    h.add_argument("--root", default=None, help="data root (default: KOCH_DATA, ../shared/data, ./data)")
    h.set_defaults(func=_baseline)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _bank(args) -> int:

    from ..core.runtime import end_distributed, setup_distributed
    from ..core.shards import image_paths
    from ..culture.isolation import isolate_files
    from ..culture.sharded import isolate_sharded
    try:
        paths = image_paths(args.images)
        world, rank, device = setup_distributed("cpu")
        if world > 1 and args.shard_size < 1:
            raise ValueError("under torchrun, give --shard-size: the ranks split the photos by shards")
        detector = load_model_from_args(args, args.weights, device)
        options = dict(method=args.method, start=args.start, channels=args.channels, threshold=args.threshold,
                       blur_sigma=args.blur_sigma, min_area=args.min_area, min_share=args.min_share,
                       require_disease=args.require_disease, weights_label=args.weights or "default", rule=args.rule)
        if args.shard_size:
            done = isolate_sharded(detector, paths, args.out, args.shard_size, args.batch_size,
                                   progress=not args.no_progress, **options)
            if done is None:  # another rank than 0: rank 0 reports
                return 0
            count = done[1]
        else:
            bank = isolate_files(detector, paths, batch_size=args.batch_size, **options)
            bank.save(args.out)
            count = len(bank)
    finally:
        end_distributed()
    from ..culture.bank import bank_paths

    out, side = bank_paths(args.out)
    print(f"isolate: {count} descriptors from {len(paths)} images -> {out} (+ {side.name})")
    return 0


def _eval(args) -> int:
    from ..culture.evaluate import (
        evaluate_isolation,
        isolation_samples,
        isolation_table,
    )
    detector = load_model_from_args(args, args.weights)
    samples, types = isolation_samples(args.data, detector.input_size, args.count, args.size, args.seed)
    report = evaluate_isolation(detector, samples, types, args.method, args.start, args.channels, args.threshold,
                                args.blur_sigma, args.min_area, args.batch_size, args.min_share, args.require_disease,
                                rule=args.rule)
    report.update(data=str(args.data), weights=args.weights or "default", detector_hash=detector.weights_hash())
    print(json.dumps(report) if args.json else isolation_table(report))
    return 0


def _sanity(args) -> int:
    from ..evidence.sanity import run_sanity, sanity_table

    detector = load_model_from_args(args, args.weights)
    rep = run_sanity(detector, args.root, args.count, args.data, None if args.method is None else [args.method], args.start,
                     args.batch_size, progress=not args.json, cascade=args.cascade)
    print(json.dumps(rep) if args.json else sanity_table(rep))
    return 0


def _baseline(args) -> int:
    from ..evidence.baseline import build_healthy_baseline

    grader = load_model_from_args(args, args.weights)
    base, path = build_healthy_baseline(grader, args.start, args.data, args.count, args.root)
    print(f"isolate baseline: mean {base.layer} activation over {base.n_images} healthy {args.data} eyes -> {path}")
    return 0
