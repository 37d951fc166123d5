"""``koch-explore synth``: train the lesion synthesizer (generate/eval follow with the Koch report)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

__all__ = ["add_cli"]


def add_cli(sub) -> None:
    from .losses import LossWeights
    from .trainer import PRESETS, SynthTrainConfig

    p = sub.add_parser("synth", help="train the lesion synthesizer GAN (postulate 3)")
    ssub = p.add_subparsers(dest="synth_command", metavar="ACTION")
    t = ssub.add_parser("train", help=f"train (presets {', '.join(PRESETS)}); resumable; torchrun-ready")
    for f in fields(SynthTrainConfig):
        if f.name == "weights":
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type)
        if f.name == "detail_layers":
            t.add_argument(flag, nargs="+", default=list(f.default))
        elif kind.startswith("int"):
            t.add_argument(flag, type=int, default=f.default)
        elif kind.startswith("float"):
            t.add_argument(flag, type=float, default=f.default)
        else:
            t.add_argument(flag, default=f.default)
    for f in fields(LossWeights):
        t.add_argument(f"--w-{f.name}", type=float, default=f.default, help=f"loss weight of the {f.name} term")
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.set_defaults(func=_cli_train)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _cli_train(args) -> int:
    from .losses import LossWeights
    from .trainer import SynthTrainConfig, train

    kw = {f.name: getattr(args, f.name) for f in fields(SynthTrainConfig) if f.name != "weights"}
    kw["detail_layers"] = tuple(kw["detail_layers"])
    kw["weights"] = LossWeights(**{f.name: getattr(args, f"w_{f.name}") for f in fields(LossWeights)})
    try:
        res = train(SynthTrainConfig(**kw), resume=args.resume)
    except (FileNotFoundError, ValueError) as exc:
        print(f"synth train: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(res))
    return 0
