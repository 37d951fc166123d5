"""Packed graded splits (``koch-explore data pack``): the same arrays as decoding, shards within their
size limit, a damaged shard refused by name, and detector training read from a pack."""

from __future__ import annotations

import json

import numpy as np
import pytest

from koch_explore.cli import main
from koch_explore.data.graded import GradedData, load_graded
from koch_explore.data.packed import (
    INDEX_NAME,
    MIB,
    load_packed,
    pack_graded,
    read_pack_index,
)
from koch_explore.detect.model import PRESETS, Detector, DetectorConfig
from koch_explore.detect.train import TrainConfig, train

PHANTOMS = GradedData(data="phantom", phantom_count=24, phantom_size=128)
SIZE = 128
MAX_MIB = 0.25  # 5 images of 128 px per shard: several shards from 24 phantoms


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    out = tmp_path_factory.mktemp("pack")
    index = pack_graded(PHANTOMS, SIZE, out, max_mib=MAX_MIB)
    return out, index


def test_round_trip_is_bit_identical_to_decoding(pack):
    out, index = pack
    decoded = load_graded(PHANTOMS, SIZE)
    packed = load_packed(out)
    assert set(packed) == set(decoded) == set(index["splits"])
    for split, arr in decoded.items():
        got = packed[split]
        assert got.images.dtype == np.uint8 and np.array_equal(got.images, arr.images), split
        assert got.grades.dtype == np.int64 and np.array_equal(got.grades, arr.grades), split
        assert (got.names, got.groups, got.source) == (arr.names, arr.groups, arr.source), split
    assert index["graded_data"]["phantom_count"] == PHANTOMS.phantom_count and index["size"] == SIZE


def test_shards_stay_under_the_limit_and_the_index_lists_them(pack):
    out, index = pack
    shards = [s for split in index["splits"].values() for s in split["shards"]]
    assert len(index["splits"]["train"]["shards"]) > 1  # the limit really split the data
    for s in shards:
        size = (out / s["file"]).stat().st_size
        assert size == s["bytes"] <= MAX_MIB * MIB, s["file"]
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(s["file"] for s in shards)
    assert read_pack_index(out) == json.loads((out / INDEX_NAME).read_text())


def test_corrupt_or_missing_shard_is_named(pack, tmp_path):
    import shutil

    out, index = pack
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    victim = copy / index["splits"]["train"]["shards"][1]["file"]
    data = bytearray(victim.read_bytes())
    data[-100] ^= 0xFF  # one pixel flipped: same size, other content
    victim.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=victim.name):
        load_packed(copy)
    assert set(load_packed(copy, splits=("val",))) == {"val"}  # the other split is still readable
    victim.unlink()
    with pytest.raises(ValueError, match=f"{victim.name}.*missing"):
        load_packed(copy)
    with pytest.raises(ValueError, match="packed at 128 px"):
        load_packed(out, size=256)


def test_repacking_replaces_the_older_pack(tmp_path):
    pack_graded(PHANTOMS, SIZE, tmp_path, max_mib=MAX_MIB)
    index = pack_graded(PHANTOMS, SIZE, tmp_path, max_mib=1.0)  # fewer, larger shards
    listed = {s["file"] for split in index["splits"].values() for s in split["shards"]}
    assert {p.name for p in tmp_path.glob("*.safetensors")} == listed  # no stale shard left
    assert not list(tmp_path.glob("*.tmp"))


def test_cli_pack_and_its_errors(tmp_path, capsys):
    out = tmp_path / "pack"
    rc = main(["data", "pack", "--out", str(out), "--data", "phantom", "--phantom-count", "12",
               "--phantom-size", "128", "--size", "128", "--max-mib", "1", "--quiet"])
    assert rc == 0 and "train 10 in" in capsys.readouterr().out
    assert read_pack_index(out)["graded_data"]["phantom_count"] == 12
    rc = main(["data", "pack", "--out", str(tmp_path / "bad"), "--data", "phantom", "--size", "128", "--max-mib", "0.01"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("koch-explore data pack: ") and "\n" not in err
    rc = main(["data", "pack", "--out", str(tmp_path / "bad"), "--root", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "nowhere" in err and "Traceback" not in err


SMALL = DetectorConfig(n=8, input_size=SIZE, dense_units=64)


def test_detector_trains_one_epoch_from_a_pack(pack, tmp_path):
    out, _ = pack
    PRESETS["test-packed"] = SMALL  # a small architecture keeps this test in seconds
    try:
        # data="eyepacs" on purpose: the pack's own settings (phantoms) must replace it
        cfg = TrainConfig(packed=str(out), preset="test-packed", epochs=1, batch_size=8, out=str(tmp_path / "run"), amp=False)
        best = train(cfg)
        assert best["epoch"] == 1
        weights = Detector.load(tmp_path / "run" / "best.safetensors")
        recorded = json.loads(weights.metadata["train_config"])
        assert recorded["data"] == "phantom" and recorded["phantom_count"] == PHANTOMS.phantom_count
        assert recorded["packed"] == str(out)
        with pytest.raises(ValueError, match=r"packed at 128 px, but preset o_O-256 trains at 256 px"):
            train(TrainConfig(packed=str(out), preset="o_O-256", epochs=1, out=str(tmp_path / "refused")))
    finally:
        PRESETS.pop("test-packed", None)


def test_a_failed_repack_leaves_the_older_pack_whole(tmp_path, monkeypatch):
    """A photo that does not decode half-way (after the training shards are written): the old pack
    still loads, bit for bit, and the failed run's shards are gone."""
    import koch_explore.data.packed as packed

    pack_graded(PHANTOMS, SIZE, tmp_path, max_mib=MAX_MIB)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_split_arrays = packed._split_arrays

    def failing(cfg, size, splits):
        for k, item in enumerate(real_split_arrays(cfg, size, splits)):
            if k == 1:
                raise ValueError("val-00003.png: file is truncated")
            yield item

    monkeypatch.setattr(packed, "_split_arrays", failing)
    with pytest.raises(ValueError, match="truncated"):
        pack_graded(PHANTOMS, SIZE, tmp_path, max_mib=MAX_MIB)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert set(load_packed(tmp_path)) >= {"train", "val"}
