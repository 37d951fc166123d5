"""Every notebook's cost as a user meets it: papermill wall time and peak resident memory with the
default parameters, on the embedded data (a data root that holds no dataset) and on the real data root,
printed as one table; the quickstart (`make demo`'s job) is held to its budget (<= 5 min, <= 3 GB on
2 cores), and with ``--profile class`` every notebook to the class budget (<= 3 min, <= 1.5 GB of kernel
memory; a hub gives each student 1 core: ``--cores 1``).

Run: ``.venv/bin/python benchmarks/bench_notebooks.py [--only 00 04] [--modes embedded real] [--profile class --cores 1]``

Each notebook runs from a fresh temporary working folder outside the checkout (so its relative output
paths land there), in its own child process that starts papermill; the child reports the largest
resident set among its descendants (``RUSAGE_CHILDREN``: the kernel doing the work). Run it on an idle
machine: the figures are wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from koch_explore.core.profiles import CLASS_BUDGET

REPO = Path(__file__).resolve().parents[1]
QUICKSTART_S, QUICKSTART_GB = 300.0, 3.0
CLASS_S, CLASS_GB = CLASS_BUDGET
REAL_ROOTS = (os.environ.get("KOCH_DATA"), str(REPO.parent / "shared" / "data"), str(REPO / "data"))


def real_root() -> str | None:
    """The first data root that holds the datasets the notebooks look for (DRIVE and EyePACS)."""
    for root in REAL_ROOTS:
        if root and (Path(root) / "DRIVE").is_dir() and any(Path(root).glob("EyePACS*")):
            return root
    return None


def run_one(notebook: str, root: str, profile: str = "default", cores: int = 0, keep: str = "") -> dict:
    """Run one notebook under papermill in a temporary folder with ``KOCH_DATA=root`` and
    ``KOCH_PROFILE=profile``, on the first ``cores`` CPUs (taskset; 0: all), whose count the notebook's
    ``ke.use_profile`` reads as its thread budget; called in a child process so that its
    ``RUSAGE_CHILDREN`` covers this notebook's kernel only. ``keep``: a folder to copy the executed notebook to."""
    with tempfile.TemporaryDirectory(prefix="koch-bench-nb-") as cwd:
        env = {**os.environ, "KOCH_DATA": root, "PYTHONPATH": str(REPO), "KOCH_PROFILE": profile}
        env.pop("OMP_NUM_THREADS", None)  # the thread count must come from the CPU set, as on a hub
        pin = ["taskset", "-c", f"0-{cores - 1}"] if cores else []
        cmd = [*pin, sys.executable, "-m", "papermill", "--kernel", "python3", "--cwd", cwd,
               str(REPO / "notebooks" / notebook), str(Path(cwd) / notebook)]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        slowest = slowest_cells(Path(cwd) / notebook)
        if keep and (Path(cwd) / notebook).is_file():
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(cwd) / notebook, Path(keep) / notebook)
    rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # kB on Linux
    error = None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["failed"])[-1][:160]
    return {"notebook": notebook, "wall_s": wall, "peak_gb": rss_gb, "error": error, "slowest": slowest}


def slowest_cells(executed: Path, n: int = 2) -> list[tuple[int, float]]:
    """The ``n`` longest cells (index, seconds) of an executed notebook: where a budget goes."""
    if not executed.is_file():
        return []
    cells = json.loads(executed.read_text())["cells"]
    times = [(i, c["metadata"].get("papermill", {}).get("duration") or 0.0) for i, c in enumerate(cells)]
    return sorted(times, key=lambda t: -t[1])[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help="notebook number prefixes to run (default: all)")
    ap.add_argument("--modes", nargs="*", default=["embedded", "real"], choices=["embedded", "real"],
                    help="embedded: a data root holding no dataset; real: the data root when one is found")
    ap.add_argument("--profile", default="default", choices=["default", "class"],
                    help="the notebooks' profile (KOCH_PROFILE): class = sized for 1 core and 1.5 GB")
    ap.add_argument("--cores", type=int, default=0, help="run each notebook on this many CPUs (taskset); 0: all")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--keep", default="", help="copy each executed notebook into this folder (its cells' times)")
    ap.add_argument("--one", nargs=5, metavar=("NOTEBOOK", "ROOT", "PROFILE", "CORES", "KEEP"), help=argparse.SUPPRESS)  # the child's job
    args = ap.parse_args()
    if args.one:
        nb, root, profile, cores, keep = args.one
        print(json.dumps(run_one(nb, root, profile, int(cores), keep)))
        return
    notebooks = sorted(p.name for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")
                       if args.only is None or p.name[:2] in args.only)
    rows = []
    with tempfile.TemporaryDirectory(prefix="koch-empty-root-") as empty:
        roots = {"embedded": empty, "real": real_root()}
        for mode in args.modes:
            if roots[mode] is None:
                print(f"{mode}: no data root with DRIVE and EyePACS found ({', '.join(r for r in REAL_ROOTS if r)}); skipped")
                continue
            for nb in notebooks:
                keep = str(Path(args.keep).resolve() / mode) if args.keep else ""
                child = subprocess.run([sys.executable, __file__, "--one", nb, roots[mode], args.profile, str(args.cores), keep],
                                       capture_output=True, text=True, check=True)
                row = {"mode": mode, "profile": args.profile, "cores": args.cores or os.cpu_count(),
                       **json.loads(child.stdout.strip().splitlines()[-1])}
                rows.append(row)
                print(f"  {mode:8s} {nb:32s} {row['wall_s']:7.1f} s {row['peak_gb']:6.2f} GB"
                      + (f"  FAILED: {row['error']}" if row["error"] else "")
                      + "  slowest cells: " + ", ".join(f"[{i}] {t:.0f} s" for i, t in row.get("slowest", [])), flush=True)
    print(f"\nprofile {args.profile}, {args.cores or os.cpu_count()} core(s)")
    print("\n| notebook | data | papermill wall time | peak RSS | budget |\n|---|---|---:|---:|---|")
    for r in rows:
        budget = ""
        if args.profile == "class":
            fits = r["wall_s"] <= CLASS_S and r["peak_gb"] <= CLASS_GB
            budget = (f"{r['wall_s'] / CLASS_S:.2f} of {CLASS_S / 60:.0f} min, {r['peak_gb'] / CLASS_GB:.2f} of "
                      f"{CLASS_GB} GB{'' if fits else ' OVER'}")
        elif r["notebook"].startswith("00_"):
            budget = (f"{r['wall_s'] / QUICKSTART_S:.2f} of {QUICKSTART_S / 60:.0f} min, "
                      f"{r['peak_gb'] / QUICKSTART_GB:.2f} of {QUICKSTART_GB:.0f} GB")
        state = " (failed)" if r["error"] else ""
        print(f"| {r['notebook']}{state} | {r['mode']} | {r['wall_s']:.0f} s | {r['peak_gb']:.2f} GB | {budget} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if any(r["error"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
