"""The main job's cost: `make demo`'s quickstart notebook (papermill, embedded data) wall time and
peak resident memory, against the targets (<= 5 min, <= 3 GB on 2 cores).

Run: ``.venv/bin/python benchmarks/bench_pipeline.py [--data phantom|auto]``

The notebook runs in a child process (papermill starts its own kernel); peak RSS is the largest
resident set among the children (``RUSAGE_CHILDREN``), i.e. the kernel doing the work.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S, TARGET_GB = 300.0, 3.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="phantom", help="the quickstart's data parameter (phantom: embedded only)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "quickstart.ipynb"
        cmd = [sys.executable, "-m", "papermill", "--kernel", "python3", "--cwd", str(REPO / "notebooks"),
               str(REPO / "notebooks" / "00_quickstart.ipynb"), str(out), "-p", "data", args.data,
               "-p", "report_dir", str(Path(tmp) / "koch_report"), "-p", "out_dir", str(Path(tmp) / "phantoms")]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - t0
        rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # kB on Linux
        ok = (Path(tmp) / "koch_report" / "index.html").is_file()
    print(f"quickstart (data={args.data}) via papermill, {'report written' if ok else 'NO REPORT'}:")
    print(f"  wall time  {wall:7.1f} s   ratio to target {wall / TARGET_S:.2f} (<= 1 passes, target {TARGET_S:.0f} s)")
    print(f"  peak RSS   {rss_gb:7.2f} GB  ratio to target {rss_gb / TARGET_GB:.2f} (<= 1 passes, target {TARGET_GB:.0f} GB)")


if __name__ == "__main__":
    main()
