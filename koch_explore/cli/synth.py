"""``koch-explore synth train | generate | eval``: argparse wired to :mod:`koch_explore.synthesis`."""

from __future__ import annotations

import json

from .config import add_config_arguments, config_from_args

__all__ = ["add_cli"]


def add_cli(sub) -> None:
    from ..synthesis.local_train import LocalTrainConfig, LocalWeights
    from ..synthesis.losses import LossWeights
    from ..synthesis.synthesizer import MODES
    from ..synthesis.trainer import PRESETS, SynthTrainConfig

    p = sub.add_parser("synth", help="train the lesion synthesizer GAN (postulate 3)")
    ssub = p.add_subparsers(dest="synth_command", metavar="ACTION")
    t = ssub.add_parser("train", help=f"train (presets {', '.join(PRESETS)}); resumable; torchrun-ready")
    add_config_arguments(t, SynthTrainConfig)
    add_config_arguments(t, LossWeights, prefix="--w-", help_default="loss weight of the {name} term")
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.set_defaults(func=_cli_train)

    lt = ssub.add_parser("train-local", help="train local mode: lesions grown inside real healthy photos (EyePACS); resumable")
    add_config_arguments(lt, LocalTrainConfig)
    add_config_arguments(lt, LocalWeights, prefix="--w-", help_default="loss weight of the {name} term")
    lt.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    lt.set_defaults(func=_cli_train_local)

    g = ssub.add_parser("generate", help="synthesize a fundus from a vessel tree (or inoculate a photo) with placed descriptors")
    g.add_argument("--vessels", default=None, help="whole mode: binary vessel tree image (any size; white = vessel)")
    g.add_argument("--fov", default=None, help="FOV mask image of the tree's size (whole mode; for --photo, default: estimated)")
    g.add_argument("--photo", default=None, help="local mode: the healthy photo to grow the lesions in (any size)")
    g.add_argument("--bank", default=None, help="descriptor bank (safetensors); omit for a healthy synthesis")
    g.add_argument("--layout", default=None,
                   help='JSON list of placements [{"index": i, "to": [x, y], "rotate": deg, "scale": f}] in '
                        "generator pixels; default: --count random placements")
    g.add_argument("--count", type=int, default=4, help="random placements when no --layout (default 4)")
    g.add_argument("--weights", required=True,
                   help="generator: a shipped name (real, local, ...) or safetensors (runs/synth/generator.safetensors, "
                        "runs/local/local_generator.safetensors, ...); its file says whether it is whole or local mode")
    g.add_argument("--seed", type=int, default=0, help="noise and placement seed")
    g.add_argument("--colour-reference", default=None, help="recolour to this photo's Lab statistics (Fig. 10)")
    g.add_argument("--out", required=True, help="output image (PNG)")
    g.set_defaults(func=_cli_generate)

    e = ssub.add_parser("eval", help="vessel_dice, Frechet distance (detector dense1) vs real, severity by lesion count, "
                                     "stripes, disc, lesion two-sample test")
    e.add_argument("--mode", default="whole", choices=list(MODES),
                   help="which shipped synthesizer when --weights is not given: whole (real) or local (default %(default)s)")
    e.add_argument("--weights", default=None, help="generator: a shipped name or safetensors (default: the shipped one for --mode)")
    e.add_argument("--bank", default=None,
                   help="descriptor bank to place from: a shipped name or safetensors (default: the synthesizer's shipped "
                        "bank: local, real or phantom)")
    e.add_argument("--hosts", default="trees", metavar="{trees,eyepacs-val,aptos-val,embedded,DIR}",
                   help="healthy hosts (as koch-test --hosts; --data real): trees = DRIVE + CHASE_DB1 (default), eyepacs-val / "
                        "aptos-val = held-out grade-0 photos, embedded, or a folder of healthy photos")
    e.add_argument("--host-count", type=int, default=68, help="photos drawn for --hosts other than trees (default %(default)s)")
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


def _cli_train_local(args) -> int:
    from ..synthesis.local_train import LocalTrainConfig, LocalWeights, train_local

    cfg = config_from_args(LocalTrainConfig, args, weights=config_from_args(LocalWeights, args, prefix="w_"))
    print(json.dumps(train_local(cfg, resume=args.resume)))
    return 0


def _cli_generate(args) -> int:
    from ..data.io import write_image
    from ..synthesis.synthesizer import synthesize_files

    image, placed = synthesize_files(args.weights, args.vessels, args.fov, args.bank, args.layout, args.count, args.seed,
                                     args.colour_reference, photo=args.photo)
    out = write_image(args.out, image)
    print(f"synth generate: {placed} lesions placed -> {out}")
    return 0


def _cli_eval(args) -> int:
    from ..culture.bank import load_bank
    from ..koch.hosts import healthy_hosts
    from ..synthesis.evaluate import evaluate_synthesizer
    from ..synthesis.synthesizer import MODES, LesionSynthesizer, load_synthesizer
    from ..synthesis.trainer import load_detector

    synth = load_synthesizer(args.weights or MODES[args.mode])
    detector = load_detector(args.data, args.detector)
    own_bank = "local" if synth.mode == "local" else ("phantom" if args.data == "phantom" else "real")
    bank = load_bank(args.bank or own_bank, detector=detector)
    hosts = healthy_hosts(args.data, args.hosts, args.root, synth.size, args.host_count,
                          trees=synth.mode != "local")[: args.max_hosts]
    baseline = LesionSynthesizer.load(args.baseline) if args.baseline else None
    check = load_detector(args.data, args.check_detector) if args.check_detector else None
    real_lesions = eyes = None
    if args.lesion_eyes:
        from ..data.diseased import diseased_eyes
        from ..synthesis.c2st import isolated_lesion_windows

        if detector.input_size != synth.size:  # windows of two scales would test the scale, not the lesions
            raise ValueError(f"{args.weights}: the synthesizer draws {synth.size} px, the detector isolates at "
                             f"{detector.input_size} px; the lesion two-sample test needs one scale (--lesion-eyes 0 skips it)")
        eyes = diseased_eyes(args.lesion_eyes, detector.input_size, "real" if args.data == "real" else "phantom", args.root,
                             seed=args.seed)
        real_lesions = isolated_lesion_windows(detector, eyes.images, eyes.names)
    rep = evaluate_synthesizer(synth, detector, hosts, bank, baseline, seed=args.seed, progress=not args.json,
                               check_detector=check, real_lesions=real_lesions,
                               diseased=None if eyes is None else eyes.images)
    if args.json:
        print(json.dumps(rep))
    else:
        for k, v in rep.items():
            print(f"{k:20s} {v}")
    return 0
