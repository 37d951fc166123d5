"""``benchmarks/gpu_oneshot.sh --tiny``: the lent-GPU script's every step on this machine's CPU (parity
comparisons CPU against CPU, toy throughput, a phantom pack, one epoch), ending in a summary and weights."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_oneshot_tiny(tmp_path):
    out = tmp_path / "gpu"
    env = {k: v for k, v in os.environ.items() if k not in ("KOCH_PARITY_DEVICE", "KOCH_PARITY_REPORT")}
    res = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_oneshot.sh"), "--tiny", "--out", str(out)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert {"device", "tiny", "minutes_budget", "total_seconds", "steps", "parity", "throughput", "pack", "train", "weights", "card"} <= set(summary)
    assert summary["tiny"] is True and summary["total_seconds"] < summary["minutes_budget"] * 60
    steps = summary["steps"]
    assert [steps[s]["status"] for s in ("parity", "throughput", "pack", "train")] == ["ok"] * 4
    assert steps["card"]["status"] == "skipped" and "phantoms" in steps["card"]["note"]
    if summary["device"] == "cpu":  # the comparisons ran CPU against CPU, every one of them
        result = summary["parity"]["pytest"]
        assert " passed" in result and "skipped" not in result and "failed" not in result, result
        assert summary["parity"]["comparisons"] > 0
    for part in ("detector", "synthesizer"):
        assert all(v["images_per_s"] > 0 and v["steps_per_s"] > 0 for v in summary["throughput"][part].values()), part
    assert summary["pack"]["shards"] >= 3 and summary["pack"]["largest_shard_mib"] <= 4
    assert summary["train"]["epochs_done"] == 1
    assert Path(summary["weights"]).is_file() and Path(summary["weights"]) == out / "detector" / "best.safetensors"
    for log in ("gpu_oneshot", "parity", "throughput", "pack", "train"):
        assert (out / f"{log}.log").stat().st_size > 0, log
