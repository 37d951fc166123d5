"""``koch-explore vessels train | segment | eval``: argparse wired to :mod:`koch_explore.vessels`."""

from __future__ import annotations

import json

from .config import add_config_arguments, config_from_args


def add_cli(sub) -> None:
    from ..vessels.model import VesselConfig
    from ..vessels.train import VesselTrainConfig

    p = sub.add_parser("vessels", help="train, run and evaluate the vessel segmenter (the GAN's input)")
    vsub = p.add_subparsers(dest="vessels_command", metavar="ACTION")

    t = vsub.add_parser("train", help="train on DRIVE training (threshold fit on held-out training images); resumable")
    # Flat flags: training and architecture fields share one namespace (argparse rejects a collision).
    add_config_arguments(t, VesselTrainConfig)
    add_config_arguments(t, VesselConfig)
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.add_argument("--export", default=None, help="copy the best weights here when done (safetensors)")
    t.set_defaults(func=_train)

    s = vsub.add_parser("segment", help="write <stem>_vessels.png (binary) and <stem>_vessels_prob.png per image")
    s.add_argument("images", nargs="+")
    s.add_argument("--out", required=True, help="output folder (created)")
    s.add_argument("--weights", default=None, help="vessel safetensors (default: shipped DRIVE weights)")
    s.add_argument("--device", default="auto")
    s.add_argument("--tta", type=int, default=8, choices=[1, 2, 4, 8],
                   help="average over this many flips/rotations (default 8; 1 = single pass)")
    s.set_defaults(func=_segment)

    e = vsub.add_parser("eval", help="pixel AUC/F1/accuracy/sensitivity/specificity inside the FOV")
    e.add_argument("--root", default=None, help="data root containing DRIVE/ (or CHASE_DB1/), or that folder itself")
    e.add_argument("--dataset", default="DRIVE", choices=["DRIVE", "CHASE_DB1"])
    e.add_argument("--split", default=None, choices=["training", "test", "all"],
                   help="default: DRIVE test (20 images), CHASE_DB1 all 28 (cross-dataset)")
    e.add_argument("--weights", default=None)
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--tta", type=int, default=8, choices=[1, 2, 4, 8],
                   help="average over this many flips/rotations (default 8; 1 = single pass)")
    e.set_defaults(func=_eval)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _train(args) -> int:
    from ..vessels.model import VesselConfig
    from ..vessels.train import VesselTrainConfig, export_best, train

    cfg = config_from_args(VesselTrainConfig, args, model=config_from_args(VesselConfig, args))
    result = train(cfg, resume=args.resume)
    exported = export_best(cfg.out, args.export) if args.export else None
    if exported:
        print(f"exported {exported[0]} -> {exported[1]}", flush=True)
    print(json.dumps(result["best"]))
    return 0


def _segment(args) -> int:
    from ..data.io import FundusReadError
    from ..vessels.model import load_vessels, segment_file
    from .errors import report

    model = load_vessels(args.weights, args.device)
    failed = 0
    for name in args.images:  # one bad photo is reported and skipped; the others are still segmented
        try:
            binary_path, prob_path = segment_file(model, name, args.out, tta=args.tta)
        except FundusReadError as exc:
            report(args, exc)
            failed += 1
            continue
        print(f"{name}\t{binary_path}\t{prob_path}")
    return 1 if failed else 0


def _eval(args) -> int:
    from ..core.runtime import resolve_device
    from ..vessels.evaluate import evaluate_dataset

    # the device is checked before the dataset is searched and read, not after
    rep = evaluate_dataset(args.weights, args.dataset, args.split, args.root, device=resolve_device(args.device),
                           tta=args.tta, progress=not args.json)
    if args.json:
        print(json.dumps(rep))
    else:
        print(f"{rep['dataset']} {rep['split']}: n={rep['n']} pixels={rep['pixels']} auc={rep['auc']:.4f} f1={rep['f1']:.4f} "
              f"accuracy={rep['accuracy']:.4f} sensitivity={rep['sensitivity']:.4f} "
              f"specificity={rep['specificity']:.4f} (threshold {rep['threshold']:.3f})")
    return 0
