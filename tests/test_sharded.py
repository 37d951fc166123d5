"""Isolation in shards: the same bank as one pass, resumed after SIGKILL without redoing finished
shards, and split across two torchrun ranks (gloo) into the same bank."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import koch_explore as ke
from koch_explore.core.shards import image_paths
from koch_explore.culture.sharded import isolate_sharded, shard_dir
from koch_explore.data.io import write_image

N, SHARD, BATCH = 16, 4, 2
CLI = [sys.executable, "-m", "koch_explore", "isolate", "bank"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Sixteen diseased phantom photos in a folder (what a user points the CLI at)."""
    folder = tmp_path_factory.mktemp("photos")
    for k in range(N):
        write_image(folder / f"eye_{k:02d}.png", ke.generate_phantom(700 + k, size=256, grade=2 + k % 3).image)
    return folder


@pytest.fixture(scope="module")
def one_pass(photos):
    det = ke.load_detector("phantom")
    from koch_explore.culture.isolation import isolate_files

    return isolate_files(det, image_paths([photos]), batch_size=BATCH, weights_label="phantom")


@pytest.fixture(scope="module")
def cli_one_pass(photos, tmp_path_factory):
    """The one-pass bank written by the CLI in a one-thread process: what the resumed and the torchrun
    runs (also one thread per process) must reproduce bit for bit. A different thread count changes
    float reductions in the last bits, so in-process runs are compared with in-process runs."""
    out = tmp_path_factory.mktemp("reference") / "bank.safetensors"
    res = subprocess.run([*CLI, str(photos), "--out", str(out), "--weights", "phantom", "--batch-size", str(BATCH)],
                         env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return ke.load_bank(out)


def same_bank(a, b) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert (x.source, x.bbox, x.area) == (y.source, y.bbox, y.area)
        assert np.array_equal(x.mask, y.mask) and np.array_equal(x.evidence, y.evidence)
        assert x.score == y.score and x.severity_share == y.severity_share
        assert x.features.keys() == y.features.keys() and all(np.array_equal(x.features[k], y.features[k]) for k in x.features)


def test_a_sharded_run_gives_the_one_pass_bank(photos, one_pass, tmp_path):
    det = ke.load_detector("phantom")
    path, n = isolate_sharded(det, image_paths([photos]), tmp_path / "bank.safetensors", SHARD, BATCH, progress=False,
                              weights_label="phantom")
    bank = ke.load_bank(path, detector=det)
    same_bank(one_pass, bank)
    assert n == len(bank) and bank.info["images"] == N and bank.info["method"] == one_pass.info["method"]
    assert len(list(shard_dir(tmp_path / "bank.safetensors").glob("shard_*.json"))) == N // SHARD
    with pytest.raises(ValueError, match="shards of another run .*options"):  # never mixed with other settings
        isolate_sharded(det, image_paths([photos]), tmp_path / "bank.safetensors", SHARD, BATCH, progress=False,
                        weights_label="phantom", threshold=0.3)
    with pytest.raises(ValueError, match="multiple of --batch-size"):
        isolate_sharded(det, image_paths([photos]), tmp_path / "other.safetensors", 3, BATCH, progress=False)


def test_a_killed_run_resumes_from_its_shards(photos, cli_one_pass, tmp_path):
    out = tmp_path / "bank.safetensors"
    args = [*CLI, str(photos), "--out", str(out), "--weights", "phantom", "--shard-size", str(SHARD),
            "--batch-size", str(BATCH), "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    folder, deadline = shard_dir(out), time.time() + 300
    while len(list(folder.glob("shard_*.json"))) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard_*")}
    assert 2 <= len(done) // 2 < N // SHARD and not out.exists(), "killed half way: some shards, no bank"
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert all(folder.joinpath(n).stat().st_mtime_ns == t for n, t in done.items()), "a finished shard was recomputed"
    same_bank(cli_one_pass, ke.load_bank(out))


def test_two_torchrun_ranks_write_the_one_pass_bank(photos, cli_one_pass, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "bank.safetensors"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "koch_explore", "isolate", "bank", str(photos),
           "--out", str(out), "--weights", "phantom", "--shard-size", str(SHARD), "--batch-size", str(BATCH), "--no-progress"]
    res = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    same_bank(cli_one_pass, ke.load_bank(out))


def test_a_folder_without_photos_is_one_clear_line(tmp_path, capsys):
    from koch_explore.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["isolate", "bank", str(tmp_path / "empty"), "--out", str(tmp_path / "b.safetensors"), "--weights", "phantom"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"koch-explore isolate bank: {tmp_path / 'empty'}: no photos (.jpg, .jpeg, .png, .tif, .tiff, .bmp) in this folder"


# -- prediction over large folders: the same machinery ------------------------------------------------

PREDICT = [sys.executable, "-m", "koch_explore", "detector", "predict"]


def test_sharded_predictions_are_the_one_pass_predictions_and_resume(photos, tmp_path):
    det = ke.load_detector("phantom")
    paths = ke.image_paths([photos])
    one = ke.predict_files(det, paths, batch_size=BATCH)
    out = tmp_path / "pred.csv"
    rows = ke.predict_sharded(det, paths, out, shard_size=SHARD, batch_size=BATCH, progress=False)
    assert rows == one and len(rows) == N
    lines = out.read_text().splitlines()
    assert lines[0] == "image,severity,grade,grade_name" and len(lines) == N + 1 and lines[1].startswith(str(paths[0]))
    # a lost shard is redone, the others are read back untouched
    folder = out.with_name(out.stem + ".shards")
    kept = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard_*.json") if p.name != "shard_00002.json"}
    (folder / "shard_00002.json").unlink()
    assert ke.predict_sharded(det, paths, out, shard_size=SHARD, batch_size=BATCH, progress=False) == one
    assert all((folder / n).stat().st_mtime_ns == t for n, t in kept.items())
    with pytest.raises(ValueError, match="shards of another run .*tta"):
        ke.predict_sharded(det, paths, out, shard_size=SHARD, batch_size=BATCH, tta=True, progress=False)


def test_two_torchrun_ranks_predict_what_one_process_predicts(photos, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    common = ["--weights", "phantom", "--shard-size", str(SHARD), "--batch-size", str(BATCH), "--no-progress", "--device", "cpu"]
    one = subprocess.run([*PREDICT, str(photos), "--out", str(tmp_path / "one.json"), *common], env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "koch_explore", "detector", "predict",
                          str(photos), "--out", str(tmp_path / "two.json"), *common], env=env, capture_output=True, text=True,
                         timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert a == b and len(a) == N


def test_eval_streams_a_folder_in_shards_into_the_one_pass_report(photos, tmp_path, capsys):
    from koch_explore.cli import main

    labels = tmp_path / "labels.csv"
    labels.write_text("image,level\n" + "\n".join(f"eye_{k:02d},{2 + k % 3}" for k in range(N)) + "\n")
    base = ["detector", "eval", "--images", str(photos), "--labels", str(labels), "--weights", "phantom",
            "--batch-size", str(BATCH), "--no-progress", "--json"]
    assert main(base) == 0
    one = json.loads(capsys.readouterr().out)
    assert main([*base, "--out", str(tmp_path / "pred.csv"), "--shard-size", str(SHARD)]) == 0
    assert json.loads(capsys.readouterr().out) == one and one["n"] == N
    assert main([*base, "--shard-size", str(SHARD)]) == 2
    assert capsys.readouterr().err.strip() == "koch-explore detector eval: --shard-size needs --out: the shards are kept beside the predictions file"
