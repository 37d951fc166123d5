"""``koch-explore synth train | generate | eval``: argparse wired to :mod:`koch_explore.synthesis`."""

from __future__ import annotations

import json

from .config import add_config_arguments, config_from_args

__all__ = ["add_cli"]


def add_cli(sub) -> None:
    from ..synthesis.losses import LossWeights
    from ..synthesis.trainer import PRESETS, SynthTrainConfig

    p = sub.add_parser("synth", help="train the lesion synthesizer GAN (postulate 3)")
    ssub = p.add_subparsers(dest="synth_command", metavar="ACTION")
    t = ssub.add_parser("train", help=f"train (presets {', '.join(PRESETS)}); resumable; torchrun-ready")
    add_config_arguments(t, SynthTrainConfig)
    add_config_arguments(t, LossWeights, prefix="--w-", help_default="loss weight of the {name} term")
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.set_defaults(func=_cli_train)

    g = ssub.add_parser("generate", help="synthesize a fundus from a vessel tree and placed descriptors")
    g.add_argument("--vessels", required=True, help="binary vessel tree image (any size; white = vessel)")
    g.add_argument("--fov", required=True, help="FOV mask image of the same size")
    g.add_argument("--bank", default=None, help="descriptor bank (safetensors); omit for a healthy synthesis")
    g.add_argument("--layout", default=None,
                   help='JSON list of placements [{"index": i, "to": [x, y], "rotate": deg, "scale": f}] in '
                        "generator pixels; default: --count random placements")
    g.add_argument("--count", type=int, default=4, help="random placements when no --layout (default 4)")
    g.add_argument("--weights", required=True, help="generator safetensors (runs/synth/generator.safetensors, ...)")
    g.add_argument("--seed", type=int, default=0, help="noise and placement seed")
    g.add_argument("--colour-reference", default=None, help="recolour to this photo's Lab statistics (Fig. 10)")
    g.add_argument("--out", required=True, help="output image (PNG)")
    g.set_defaults(func=_cli_generate)

    e = ssub.add_parser("eval", help="vessel_dice, Frechet distance (detector dense1) vs real, severity by lesion count")
    e.add_argument("--weights", required=True, help="generator safetensors")
    e.add_argument("--bank", required=True, help="descriptor bank to place from (e.g. runs/synth/bank.safetensors)")
    e.add_argument("--baseline", default=None, help="a second generator (the Tub-sGAN baseline) for fd_baseline")
    e.add_argument("--data", default="real", choices=["real", "phantom"], help="healthy hosts: DRIVE + CHASE_DB1, or phantoms")
    e.add_argument("--root", default=None)
    e.add_argument("--detector", default=None, help="detector weights (default: shipped EyePACS; phantom for --data phantom)")
    e.add_argument("--check-detector", default=None,
                   help="a second detector (e.g. koch_explore/weights/detector_phantom_256.safetensors) whose dense1 "
                        "space gives the Frechet figures again as fdcheck_*: one no training loss reads")
    e.add_argument("--max-hosts", type=int, default=None, help="use at most this many hosts (default all)")
    e.add_argument("--lesion-eyes", type=int, default=48,
                   help="diseased eyes (EyePACS validation grade >= 3 for --data real, phantoms otherwise) whose isolated "
                        "lesions are the real side of the lesion two-sample test (default %(default)s; 0 leaves it out)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_cli_eval)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _cli_train(args) -> int:
    from ..synthesis.losses import LossWeights
    from ..synthesis.trainer import SynthTrainConfig, train

    cfg = config_from_args(SynthTrainConfig, args, weights=config_from_args(LossWeights, args, prefix="w_"))
    res = train(cfg, resume=args.resume)
    print(json.dumps(res))
    return 0


def _cli_generate(args) -> int:
    from ..data.io import write_image
    from ..synthesis.synthesizer import synthesize_files

    image, placed = synthesize_files(args.weights, args.vessels, args.fov, args.bank, args.layout, args.count, args.seed,
                                     args.colour_reference)
    out = write_image(args.out, image)
    print(f"synth generate: {placed} lesions placed -> {out}")
    return 0


def _cli_eval(args) -> int:
    from ..culture.bank import DescriptorBank
    from ..synthesis.evaluate import evaluate_synthesizer
    from ..synthesis.synthesizer import LesionSynthesizer, load_synthesizer
    from ..synthesis.trainer import SynthTrainConfig, healthy_set, load_detector

    synth = load_synthesizer(args.weights)
    detector = load_detector(args.data, args.detector)
    bank = DescriptorBank.load(args.bank, detector=detector)
    hosts = healthy_set(SynthTrainConfig(data=args.data, root=args.root), synth.cfg.size)[: args.max_hosts]
    baseline = LesionSynthesizer.load(args.baseline) if args.baseline else None
    check = load_detector(args.data, args.check_detector) if args.check_detector else None
    real_lesions = None
    if args.lesion_eyes:
        from ..data.diseased import diseased_eyes
        from ..synthesis.c2st import isolated_lesion_windows

        if detector.input_size != synth.cfg.size:  # windows of two scales would test the scale, not the lesions
            raise ValueError(f"{args.weights}: the synthesizer draws {synth.cfg.size} px, the detector isolates at "
                             f"{detector.input_size} px; the lesion two-sample test needs one scale (--lesion-eyes 0 skips it)")
        eyes = diseased_eyes(args.lesion_eyes, detector.input_size, "real" if args.data == "real" else "phantom", args.root,
                             seed=args.seed)
        real_lesions = isolated_lesion_windows(detector, eyes.images, eyes.names)
    rep = evaluate_synthesizer(synth, detector, hosts, bank, baseline, seed=args.seed, progress=not args.json,
                               check_detector=check, real_lesions=real_lesions)
    if args.json:
        print(json.dumps(rep))
    else:
        for k, v in rep.items():
            print(f"{k:20s} {v}")
    return 0
