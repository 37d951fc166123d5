"""``koch-explore detector train | eval | predict | card``: argparse wired to :mod:`koch_explore.detect`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .config import add_config_arguments, config_from_args
from .grader import load_model_from_args, model_options


def add_cli(sub) -> None:
    p = sub.add_parser("detector", help="train, evaluate and run the DR detector (postulate 1)")
    dsub = p.add_subparsers(dest="detector_command", metavar="ACTION")

    from ..detect.train import TrainConfig

    t = dsub.add_parser("train", help="train on EyePACS (+APTOS) or phantom grades; resumable; torchrun-ready")
    add_config_arguments(t, TrainConfig)
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.add_argument("--export", default=None, help="copy the best weights here when done (safetensors)")
    t.set_defaults(func=_train)

    e = dsub.add_parser("eval", parents=[model_options()], help="grade a folder of images against a label CSV; prints JSON with --json")
    e.add_argument("--images", required=True, help="folder of images (matched to labels by file stem)")
    e.add_argument("--labels", required=True, help="CSV with image,level (EyePACS) or id_code,diagnosis (APTOS)")
    e.add_argument("--weights", default=None, help="detector safetensors (default: shipped EyePACS weights); with --model, your model's")
    e.add_argument("--tta", action="store_true", help="average the 8 flips/90-degree rotations")
    e.add_argument("--pair-blend", type=float, default=0.0,
                   help="blend each eye's severity with its fellow eye's (<id>_left/_right in the folder): "
                        "(1-W)*s + W*s_fellow, W in [0, 0.5]; default 0 (off)")
    e.add_argument("--out", default=None, help="also write each photo's severity and grade here (.csv, else JSON)")
    _add_stream_options(e)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_eval)

    pr = dsub.add_parser("predict", parents=[model_options()], help="severity and grade per photo (files or folders, streamed)")
    pr.add_argument("images", nargs="+", metavar="IMAGE", help="fundus photos, or folders of them (searched recursively, sorted)")
    pr.add_argument("--weights", default=None, help="detector safetensors (default: shipped EyePACS weights); with --model, your model's")
    pr.add_argument("--tta", action="store_true", help="average the 8 flips/90-degree rotations")
    pr.add_argument("--out", default=None, help="write the rows here (.csv: image,severity,grade,grade_name; else a JSON list) "
                                                "instead of printing them")
    _add_stream_options(pr)
    pr.add_argument("--json", action="store_true", help="print the rows as one JSON list")
    pr.set_defaults(func=_predict)
    c = dsub.add_parser("card", help="measure weights on the validation splits and write their model card")
    c.add_argument("--weights", required=True, help="detector weights: a shipped name (eyepacs) or safetensors")
    c.add_argument("--root", default=None, help="data root (default: KOCH_DATA, ../shared/data, ./data)")
    c.add_argument("--out", default=None, help="card path (default: the weights path with .md)")
    c.add_argument("--command", dest="train_command", default="koch-explore detector train --data eyepacs",
                   help="training command for the card")
    c.add_argument("--hardware", default=None, help="hardware the weights were trained on (default: this machine)")
    c.add_argument("--no-tta", action="store_true")
    c.add_argument("--json", action="store_true", help="print the figures as JSON")
    c.set_defaults(func=_card)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _train(args) -> int:
    from ..detect.train import TrainConfig, train

    cfg = config_from_args(TrainConfig, args)
    best = train(cfg, resume=args.resume)
    if args.export and best.get("epoch"):
        import shutil

        shutil.copyfile(Path(cfg.out) / "best.safetensors", args.export)
    print(json.dumps({k: v for k, v in best.items() if k != "score"}, default=float))
    return 0


def _add_stream_options(p) -> None:
    p.add_argument("--batch-size", type=int, default=32, help="photos per forward pass (default %(default)s)")
    p.add_argument("--shard-size", type=int, default=0,
                   help="photos per shard (a multiple of --batch-size; needs --out): each shard is saved as it is done "
                        "(--out pred.csv: in pred.shards/), a re-run with the same arguments resumes from them, torchrun "
                        "ranks split the shards (default 0: one streamed pass)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _grader(args):
    """The model on this process's device (its rank's GPU under torchrun)."""
    from ..core.runtime import determinism_note, setup_distributed

    world, rank, dev = setup_distributed(args.device)
    if (note := determinism_note(dev)) and rank == 0:
        print(note, file=sys.stderr)
    if world > 1 and args.shard_size < 1:
        raise ValueError("under torchrun, give --shard-size: the ranks split the photos by shards")
    return load_model_from_args(args, args.weights, dev)


def _eval(args) -> int:
    from ..core.runtime import end_distributed
    from ..detect.predict import evaluate_folder

    try:
        model = _grader(args)
        rep = evaluate_folder(model, args.images, args.labels, tta=args.tta, pair_blend=args.pair_blend,
                              batch_size=args.batch_size, out=args.out, shard_size=args.shard_size,
                              progress=not args.no_progress)
    finally:
        end_distributed()
    if rep is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    if args.json:
        print(json.dumps(rep))
    else:
        print(f"n={rep['n']} qwk={rep['qwk']:.3f} accuracy={rep['accuracy']:.3f} auc_referable={rep['auc_referable']:.3f}")
        print("confusion (rows true 0-4, cols predicted):")
        for row in rep["confusion"]:
            print("  " + " ".join(f"{v:5d}" for v in row))
    return 0


def _predict(args) -> int:
    from ..core.runtime import end_distributed
    from ..core.shards import image_paths
    from ..detect.predict import predict_to_file

    try:
        paths = image_paths(args.images)
        rows = predict_to_file(_grader(args), paths, args.out, args.shard_size, args.batch_size, args.tta,
                               progress=not args.no_progress)
    finally:
        end_distributed()
    if rows is None:  # a torchrun rank other than 0
        return 0
    if args.json:
        print(json.dumps(rows))
    elif args.out:
        print(f"detector predict: {len(rows)} photos -> {args.out}")
    else:
        for r in rows:
            print(f"{r['image']}\tseverity {r['severity']:.2f}\tgrade {r['grade']} ({r['grade_name']})")
    return 0


def _card(args) -> int:
    from ..core.runtime import atomic_write
    from ..core.weights import resolve_weights
    from ..detect.card import evaluate_weights, hardware_string, model_card

    weights = resolve_weights("detector", args.weights)
    fig = evaluate_weights(weights, args.root, tta=not args.no_tta)
    out = Path(args.out) if args.out else weights.with_suffix(".md")
    out.parent.mkdir(parents=True, exist_ok=True)  # minutes of measuring must not die on a missing folder
    atomic_write(out, model_card(fig, args.train_command, args.hardware or hardware_string()))
    atomic_write(out.with_suffix(".json"), json.dumps(fig, indent=1, default=float))
    if args.json:
        print(json.dumps(fig, default=float))
    else:
        print(f"wrote {out}")
    return 0
