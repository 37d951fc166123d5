"""``koch-explore audit``: grading, sanity, localisation and the Koch verdict of a model in one offline report."""

from __future__ import annotations

import sys

from ..appendix.config import AuditConfig
from .config import add_config_arguments, config_from_args
from .grader import load_model_from_args, model_options


def add_cli(sub) -> None:
    a = sub.add_parser("audit", parents=[model_options()],
                       help="one report a researcher can attach to a paper: grading, sanity of the maps, localisation on lesion "
                            "masks, the Koch test and its verdict, with provenance")
    a.add_argument("--weights", "--detector", dest="weights", default="eyepacs",
                   help="the audited model's weights: a shipped detector's name or safetensors (default %(default)s) or, with "
                        "--model, your model's safetensors")
    a.add_argument("--out", required=True, help="folder for index.html, audit.json and figures/")
    add_config_arguments(a, AuditConfig)
    a.set_defaults(func=_audit)


def _audit(args) -> int:
    from ..appendix import audit
    from ..core.runtime import determinism_note, resolve_device

    cfg = config_from_args(AuditConfig, args)
    device = resolve_device(cfg.device)
    if note := determinism_note(device):
        print(note, file=sys.stderr)
    model = load_model_from_args(args, args.weights, device)
    result = audit(model, args.out, cfg, command=["koch-explore", *sys.argv[1:]])
    for section, line in result.headlines().items():
        print(f"{section}: {line}")
    print(f"report: {args.out}/index.html")
    return 0
