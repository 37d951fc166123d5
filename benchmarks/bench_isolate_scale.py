"""Isolation at scale: `isolate bank --shard-size` over 200 and 2,000 EyePACS training photos (peak
resident memory must stay within 15% of the 200-photo run's), and the 2,000-photo run killed (SIGKILL)
half way and resumed (total CPU work within 10% of the uninterrupted run's, the same bank). With
``--command predict`` the same for `detector predict --out CSV --shard-size` (the same predictions).

Run: ``.venv/bin/python benchmarks/bench_isolate_scale.py [--command isolate|predict] [--small 200] [--large 2000] [--shard-size 16] [--no-resume]``

Each run is the CLI in its own child process; the child reports the CPU time and the largest
resident set of its descendants (``RUSAGE_CHILDREN``). Needs the EyePACS data under the data root.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RSS_RATIO, WORK_RATIO = 1.15, 1.10


def training_photos(n: int) -> list[str]:
    """The first ``n`` EyePACS photos (sorted by name) of the detector's training patients."""
    from koch_explore.data.graded import GradedData, graded_split

    items, train, _ = graded_split("EyePACS", GradedData())
    train = set(train)
    return sorted(str(it.path) for it in items if it.name in train)[:n]


def run_cli(command: str, listing: str, out: str, shard_size: int, kill_at: float | None) -> dict:
    """The child's job: run `isolate bank` or `detector predict` over the photos listed in ``listing``;
    with ``kill_at``, SIGKILL it once that share of the shards is on disk."""
    from koch_explore.culture.sharded import shard_dir
    from koch_explore.detect.predict import predictions_shard_dir

    photos = Path(listing).read_text().split("\n")
    folder = Path(tempfile.mkdtemp(prefix="koch-bench-photos-"))
    for k, p in enumerate(photos):  # one folder of links: the CLI's folder input, in this order
        os.symlink(p, folder / f"{k:05d}_{Path(p).name}")
    words = ["isolate", "bank"] if command == "isolate" else ["detector", "predict"]
    cmd = [sys.executable, "-m", "koch_explore", *words, str(folder), "--out", out, "--weights", "eyepacs",
           "--shard-size", str(shard_size), "--no-progress"] + (["--batch-size", str(shard_size)] if command == "predict" else [])
    shards = shard_dir(out) if command == "isolate" else predictions_shard_dir(out)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = False
    if kill_at is not None:
        need = max(1, int(kill_at * -(-len(photos) // shard_size)))
        while proc.poll() is None and len(list(shards.glob("shard_*.json"))) < need:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        killed = True
    _, err = proc.communicate()
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": use.ru_utime + use.ru_stime, "peak_gb": use.ru_maxrss / 1024**2,
            "rc": proc.returncode, "killed": killed, "error": None if killed or proc.returncode == 0 else err.strip()[-300:]}


def child(command: str, listing: Path, out: Path, shard_size: int, kill_at: float | None = None) -> dict:
    args = [sys.executable, __file__, "--one", command, str(listing), str(out), str(shard_size)] + ([str(kill_at)] if kill_at else [])
    res = subprocess.run(args, capture_output=True, text=True, check=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--command", choices=["isolate", "predict"], default="isolate")
    ap.add_argument("--small", type=int, default=200)
    ap.add_argument("--large", type=int, default=2000)
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--no-resume", action="store_true", help="only the memory comparison, not the kill-and-resume runs")
    ap.add_argument("--one", nargs="+", help=argparse.SUPPRESS)  # the child's job
    args = ap.parse_args()
    if args.one:
        command, listing, out, shard = args.one[:4]
        print(json.dumps(run_cli(command, listing, out, int(shard), float(args.one[4]) if len(args.one) > 4 else None)))
        return
    with tempfile.TemporaryDirectory(prefix="koch-bench-scale-") as tmp:
        tmp = Path(tmp)
        try:
            photos = training_photos(args.large)
        except FileNotFoundError as exc:
            print(f"skipped: this benchmark needs the EyePACS photos ({exc})")
            return
        for n in (args.small, args.large):
            (tmp / f"list_{n}.txt").write_text("\n".join(photos[:n]))
        suffix = ".safetensors" if args.command == "isolate" else ".csv"
        small = child(args.command, tmp / f"list_{args.small}.txt", tmp / f"small{suffix}", args.shard_size)
        large = child(args.command, tmp / f"list_{args.large}.txt", tmp / f"large{suffix}", args.shard_size)
        if args.command == "isolate":
            side = lambda name: json.loads((tmp / f"{name}.json").read_text())  # noqa: E731
            result = f"{len(side('large')['descriptors'])} descriptors"
            same_output = lambda: side("large")["tensors_sha256"] == side("resumed")["tensors_sha256"] and \
                side("large")["descriptors"] == side("resumed")["descriptors"]  # noqa: E731
        else:
            result = f"{len((tmp / 'large.csv').read_text().splitlines()) - 1} rows"
            # each run reads the photos through its own folder of links: compare names and figures
            rows = lambda name: [(Path(r.split(",")[0]).name, *r.split(",")[1:])  # noqa: E731
                                 for r in (tmp / f"{name}.csv").read_text().splitlines()]
            same_output = lambda: rows("large") == rows("resumed")  # noqa: E731
        first = second = None
        if not args.no_resume:
            first = child(args.command, tmp / f"list_{args.large}.txt", tmp / f"resumed{suffix}", args.shard_size, kill_at=0.5)
            second = child(args.command, tmp / f"list_{args.large}.txt", tmp / f"resumed{suffix}", args.shard_size)
            same = same_output()
    for name, r in (("small", small), ("large", large), ("killed", first), ("resumed", second)):
        if r is None:
            continue
        if r["error"]:
            print(f"{name} run failed: {r['error']}")
    what = "isolate bank" if args.command == "isolate" else "detector predict"
    print(f"{what} --shard-size {args.shard_size}, EyePACS training photos, shipped detector"
          f"{', guided Grad-CAM' if args.command == 'isolate' else ''}:")
    print(f"  {args.small:5d} photos: wall {small['wall_s']:7.1f} s, CPU {small['cpu_s']:7.1f} s, peak RSS {small['peak_gb']:.2f} GB")
    print(f"  {args.large:5d} photos: wall {large['wall_s']:7.1f} s, CPU {large['cpu_s']:7.1f} s, peak RSS {large['peak_gb']:.2f} GB, "
          f"{result}")
    print(f"  peak RSS ratio {args.large} / {args.small}: {large['peak_gb'] / small['peak_gb']:.3f} (<= {RSS_RATIO} passes)")
    if first is None:
        return
    work = first["cpu_s"] + second["cpu_s"]
    print(f"  killed at half the shards ({first['wall_s']:.0f} s) and resumed ({second['wall_s']:.0f} s): CPU {work:.1f} s, "
          f"ratio to uninterrupted {work / large['cpu_s']:.3f} (<= {WORK_RATIO} passes); output identical: {same}")


if __name__ == "__main__":
    main()
