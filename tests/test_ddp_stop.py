"""A two-rank torchrun training (gloo, CPU) stopped mid-epoch, by its time limit and by a callback on rank 0:
both ranks leave the loop together (before, each rank read its own clock and only rank 0 left, so the
other waited in the next all-reduce), the checkpoint is written once, and ``--resume`` continues from it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from koch_explore.core.training import read_checkpoint

TORCHRUN = Path(sys.executable).with_name("torchrun")
COMMON = ["--data", "phantom", "--phantom-count", "24", "--phantom-size", "256", "--batch-size", "8", "--no-amp"]

CALLBACK_SCRIPT = '''
import sys
from koch_explore.detect.train import TrainConfig, train

cfg = TrainConfig(data="phantom", phantom_count=24, phantom_size=256, batch_size=8, epochs=2, amp=False, out=sys.argv[1])
train(cfg, callback=lambda step, record: step < 2)  # rank 0 says stop after the second step (the first epoch's last)
'''


def _torchrun(args, tmp_path, timeout=420):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", *args]
    # a hang is the failure this test exists for: the timeout turns it into a red test, not a stuck suite
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


@pytest.mark.slow
def test_a_time_limit_stops_both_ranks_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"
    res = _torchrun(["-m", "koch_explore", "detector", "train", *COMMON, "--epochs", "3", "--max-minutes", "0.0001",
                     "--out", str(out)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "stopped by the time limit at step 1;" in res.stdout
    ck = read_checkpoint(out / "last.pt")
    assert ck["step"] == 1 and ck["history"] == []  # mid-epoch: the first of 2 steps per epoch
    res = _torchrun(["-m", "koch_explore", "detector", "train", *COMMON, "--epochs", "1", "--resume", "--out", str(out)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed from {out / 'last.pt'}: step 1," in res.stdout
    ck = read_checkpoint(out / "last.pt")  # the epoch went on from its second step, none taken twice
    assert ck["step"] == 2 and [h["epoch"] for h in ck["history"]] == [1]


@pytest.mark.slow
def test_a_callback_on_rank_0_stops_both_ranks(tmp_path):
    script = tmp_path / "train_with_callback.py"
    script.write_text(CALLBACK_SCRIPT)
    out = tmp_path / "run"
    res = _torchrun([str(script), str(out)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "stopped by the callback at step 2;" in res.stdout
    assert read_checkpoint(out / "last.pt")["step"] == 2
