"""Draw the inoculation figure: the same healthy photo and the same 8 placed lesions, drawn by the
whole-fundus generator (the paper's mode) and grown by local mode.

    python examples/before_after.py --count 12 --out docs/img/inoculation_before_after.png
    python examples/before_after.py --host PHOTO.jpg --out figure.png
    python examples/before_after.py --whole koch_explore/weights/synth_cpu256.safetensors --out old.png  # the striped predecessor

Four panels: the host photo; the whole-fundus synthesis with the 8 lesions; the photo inoculated in local
mode with the same 8; a zoom on one of them (whole | local). Titles carry the detector's severity.
Runs without data (the embedded photo, the shipped bank) in ~10 s on two cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import koch_explore as ke
from koch_explore import plotting


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default=None, help="a healthy fundus photo (default: the embedded skimage photo)")
    ap.add_argument("--whole", default="real", help="whole-fundus synthesizer: shipped name or safetensors (default %(default)s)")
    ap.add_argument("--local", default="local", help="local synthesizer: shipped name or safetensors (default %(default)s)")
    ap.add_argument("--bank", default="local", help="descriptors to place: shipped name or safetensors (default %(default)s)")
    ap.add_argument("--count", type=int, default=8, help="lesions placed (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="PNG to write")
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    hosts = ke.healthy_hosts("embedded", "embedded" if args.host is None else args.host)
    host = hosts[0]
    detector, bank = ke.load_detector(), ke.load_bank(args.bank)
    whole, local = ke.load_synthesizer(args.whole), ke.load_synthesizer(args.local)
    layout = ke.random_layout(bank, args.count, host["fov"], seed=args.seed)
    before = whole.synthesize_host(host, layout, seed=args.seed)
    after = local.synthesize_host(host, layout, seed=args.seed)
    sev = ke.predict_severity(detector, np.stack([host["image"], before, after]))
    boxes = [d.bbox for d in layout]
    d = max(layout, key=lambda d: d.area)
    pair = np.concatenate([plotting.zoom(plotting.boxed(before, [d.bbox]), d.centroid, half=24, factor=4),
                           plotting.zoom(plotting.boxed(after, [d.bbox]), d.centroid, half=24, factor=4)], axis=1)
    fig = plotting.image_grid(
        [host["image"], plotting.boxed(before, boxes), plotting.boxed(after, boxes), pair],
        [f"healthy photo ({host['name'].split('/')[-1]})\nseverity {sev[0]:.2f}",
         f"whole mode ({Path(args.whole).stem}): {len(layout)} lesions\nseverity {sev[1]:.2f}",
         f"local mode: the same {len(layout)} in the photo\nseverity {sev[2]:.2f}", "one lesion, zoomed: whole | local"],
        cols=4, size=3.2)
    fig.savefig(args.out, dpi=80, bbox_inches="tight")
    print(f"wrote {args.out}: severity photo {sev[0]:.2f}, whole {sev[1]:.2f}, local {sev[2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
