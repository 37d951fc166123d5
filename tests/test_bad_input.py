"""Bad input at every door of the command line: each is one line on stderr,
``koch-explore <command>: <file or value>: <problem>``, a non-zero exit, no traceback, and nothing
already saved is lost. Photos in grayscale, 16 bits or with an alpha channel are read, not refused.

The list (one test case each, the line the user reads in the case's ``expect``):
weights of another kind, a truncated weights file, a missing photo, a 1 px photo, a 20,000 px photo,
a bank cut by another detector, a bank sidecar edited by hand (a changed field, a deleted descriptor,
broken JSON), a layout placing a lesion outside the field of view, scale 0, scale -1, broken layout
JSON, count -1, trials 0, shards of another run, training --resume under another configuration.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import koch_explore as ke
from koch_explore.cli import main
from koch_explore.culture import BankFormatError
from koch_explore.data.io import write_image

WEIGHTS = Path(ke.__file__).parent / "weights"
HUGE_TURN = 360 * 2**40 + 45
"""45 degrees after 2**40 whole turns: exact in a float, but converted to radians as it stands its cosine
is off by 4e-4, so without the reduction to one turn the warped lesion would differ from 45 degrees'."""
DETECTOR = WEIGHTS / "detector_phantom_256.safetensors"
SYNTH = WEIGHTS / "synth_phantom_256.safetensors"
BANK = WEIGHTS / "synth_phantom_256.bank.safetensors"
OTHER_BANK = WEIGHTS / "synth_cpu256.bank.safetensors"  # cut with the EyePACS detector


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A phantom photo in every pixel format, its vessel tree and FOV, and the broken files."""
    d = tmp_path_factory.mktemp("bad_input")
    ph = ke.generate_phantom(3, size=256, grade=3)
    u8 = (np.clip(ph.image, 0, 1) * 255 + 0.5).astype(np.uint8)
    bgr = cv2.cvtColor(u8, cv2.COLOR_RGB2BGR)
    f = {"photo": d / "eye.png", "gray": d / "gray.png", "16bit": d / "16bit.png", "rgba": d / "rgba.png",
         "vessels": write_image(d / "vessels.png", ph.vessels), "fov": write_image(d / "fov.png", ph.fov)}
    cv2.imwrite(str(f["photo"]), bgr)
    cv2.imwrite(str(f["gray"]), cv2.cvtColor(u8, cv2.COLOR_RGB2GRAY))
    cv2.imwrite(str(f["16bit"]), bgr.astype(np.uint16) * 257)
    cv2.imwrite(str(f["rgba"]), cv2.cvtColor(u8, cv2.COLOR_RGB2BGRA))
    cv2.imwrite(str(d / "1px.png"), np.full((1, 1, 3), 128, np.uint8))
    from PIL import Image

    Image.new("1", (20000, 20000)).save(d / "20000px.png")  # 48 kB on disk, 1.2 GB decoded as RGB
    (d / "truncated.safetensors").write_bytes(DETECTOR.read_bytes()[:100_000])
    # bank sidecars edited by hand: a changed area, a deleted descriptor, broken JSON
    side = json.loads(BANK.with_suffix(".json").read_text())
    for name, edit in (("area", lambda s: s["descriptors"][0].update(area=99999)),
                       ("deleted", lambda s: s["descriptors"].pop(1)),
                       ("broken", None)):
        shutil.copy(BANK, d / f"bank_{name}.safetensors")
        if edit is None:
            (d / f"bank_{name}.json").write_text("{not json")
        else:
            s = json.loads(json.dumps(side))
            edit(s)
            (d / f"bank_{name}.json").write_text(json.dumps(s))
    layouts = {"outside": [{"index": 0, "to": [2, 2]}], "scale0": [{"index": 0, "to": [128, 128], "scale": 0}],
               "scale-1": [{"index": 0, "to": [128, 128], "scale": -1}], "rot45": [{"index": 0, "to": [128, 128], "rotate": 45}],
               "rothuge": [{"index": 0, "to": [128, 128], "rotate": HUGE_TURN}]}
    for name, layout in layouts.items():
        (d / f"layout_{name}.json").write_text(json.dumps(layout))
    (d / "layout_broken.json").write_text("[{")
    f["dir"] = d
    return f


def generate(f, *extra) -> list[str]:
    return ["synth", "generate", "--vessels", str(f["vessels"]), "--fov", str(f["fov"]), "--weights", str(SYNTH),
            "--out", str(f["dir"] / "out.png"), *extra]


# (command words, arguments after them given the files, the exact line after "koch-explore <command>: ")
CASES = {
    "weights of another kind": (
        lambda f: ["detector", "predict", str(f["photo"]), "--weights", str(WEIGHTS / "vessels_drive.safetensors")],
        lambda f: f"{WEIGHTS / 'vessels_drive.safetensors'}: not koch-explore detector weights (format='koch-explore/vessels')"),
    "generator weights of another kind": (
        lambda f: [*generate(f), "--weights", str(DETECTOR)],  # the last --weights wins
        lambda f: f"{DETECTOR}: not koch-explore lesion synthesizer weights (format='koch-explore/detector')"),
    "truncated weights": (
        lambda f: ["detector", "predict", str(f["photo"]), "--weights", str(f["dir"] / "truncated.safetensors")],
        lambda f: f"{f['dir'] / 'truncated.safetensors'}: not a readable safetensors file (Error while deserializing "
                  "header: incomplete metadata, file not fully covered)"),
    "missing photo": (
        lambda f: ["detector", "predict", str(f["dir"] / "missing.jpg"), "--weights", "phantom"],
        lambda f: f"{f['dir'] / 'missing.jpg'}: file does not exist"),
    "1 px photo": (
        lambda f: ["isolate", "bank", str(f["dir"] / "1px.png"), "--weights", "phantom", "--out", str(f["dir"] / "b.safetensors")],
        lambda f: f"{f['dir'] / '1px.png'}: image of 1x1 px is too small for a fundus photo (at least 16 px a side)"),
    "20,000 px photo": (
        lambda f: ["detector", "predict", str(f["dir"] / "20000px.png"), "--weights", "phantom"],
        lambda f: f"{f['dir'] / '20000px.png'}: image of 400 MP is larger than the 80 MP this kit decodes (a guard against "
                  "decompression bombs; fundus cameras take at most ~24 MP): downscale it first"),
    "bank of another detector": (
        lambda f: ["koch-test", "--data", "phantom", "--bank", str(OTHER_BANK), "--trials", "1"],
        lambda f: f"{OTHER_BANK}: descriptors were cut with detector weights "
                  f"{json.loads(OTHER_BANK.with_suffix('.json').read_text())['detector_hash']}, but the given detector's "
                  f"weights are {ke.load_detector('phantom').weights_hash()}; re-isolate with these weights"),
    "sidecar field edited": (
        lambda f: generate(f, "--bank", str(f["dir"] / "bank_area.safetensors")),
        lambda f: f"{f['dir'] / 'bank_area.json'}: descriptor 0: area 99999 but its mask has "
                  f"{int(ke.load_bank(BANK)[0].mask.sum())} pixels (sidecar edited by hand?)"),
    "sidecar descriptor deleted": (
        lambda f: generate(f, "--bank", str(f["dir"] / "bank_deleted.safetensors")),
        lambda f: f"{f['dir'] / 'bank_deleted.json'}: lists {len(ke.load_bank(BANK)) - 1} descriptors, bank_deleted.safetensors "
                  f"holds {len(ke.load_bank(BANK))} (sidecar edited by hand?)"),
    "sidecar not JSON": (
        lambda f: generate(f, "--bank", str(f["dir"] / "bank_broken.safetensors")),
        lambda f: f"{f['dir'] / 'bank_broken.json'}: descriptor bank sidecar is not readable JSON (Expecting property name "
                  "enclosed in double quotes: line 1 column 2 (char 1))"),
    "placement outside the field of view": (
        lambda f: generate(f, "--bank", str(BANK), "--layout", str(f["dir"] / "layout_outside.json")),
        lambda f: f"{f['dir'] / 'layout_outside.json'}: layout entry 0: 'to' [2, 2] lies outside the field of view of the "
                  "256x256 px generator canvas"),
    "scale 0": (
        lambda f: generate(f, "--bank", str(BANK), "--layout", str(f["dir"] / "layout_scale0.json")),
        lambda f: f"{f['dir'] / 'layout_scale0.json'}: layout entry 0: scale 0 must be a positive number"),
    "scale -1": (
        lambda f: generate(f, "--bank", str(BANK), "--layout", str(f["dir"] / "layout_scale-1.json")),
        lambda f: f"{f['dir'] / 'layout_scale-1.json'}: layout entry 0: scale -1 must be a positive number"),
    "layout not JSON": (
        lambda f: generate(f, "--bank", str(BANK), "--layout", str(f["dir"] / "layout_broken.json")),
        lambda f: f"{f['dir'] / 'layout_broken.json'}: Expecting property name enclosed in double quotes: line 1 column 3 (char 2)"),
    "count -1": (
        lambda f: generate(f, "--bank", str(BANK), "--count", "-1"),
        lambda f: "count must be >= 0, got -1"),
    "trials 0": (
        lambda f: ["koch-test", "--data", "phantom", "--trials", "0"],
        lambda f: "trials must be >= 1, got 0"),
    "a card for phantom weights": (
        lambda f: ["detector", "card", "--weights", "phantom", "--out", str(f["dir"] / "card.md")],
        lambda f: f"{DETECTOR}: trained on 'phantom' data; the card measures EyePACS-trained "
                  "weights on the EyePACS and APTOS validation splits (a phantom detector's figures are its trainer's own "
                  "validation report, as in detector_phantom_256.md)"),
    "phantom count -1": (
        lambda f: ["phantom", "--out", str(f["dir"] / "ph"), "--count", "-1"],
        lambda f: "--count -1, --seed 0, --size 512: --count and --seed must be >= 0 and --size >= 64"),
}


def command_of(argv: list[str]) -> str:
    return " ".join(["koch-explore", *argv[:1 if argv[0] in ("koch-test", "report", "phantom") else 2]])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and "%|" not in ln]  # tqdm bars aside
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_naming_it(case, files, capsys):
    args, expect = CASES[case]
    argv = args(files)
    assert main(argv) == 2
    assert one_error_line(capsys) == f"{command_of(argv)}: {expect(files)}"


def test_grayscale_16_bit_and_rgba_photos_are_read_at_every_door(files, capsys, tmp_path):
    """The 16-bit and RGBA copies are the 8-bit RGB photo's pixels: same severity; grayscale is read too."""
    photos = [str(files[k]) for k in ("photo", "16bit", "rgba", "gray")]
    assert main(["detector", "predict", *photos, "--weights", "phantom", "--json", "--no-progress"]) == 0
    sev = [r["severity"] for r in json.loads(capsys.readouterr().out)]
    assert sev[1] == pytest.approx(sev[0], abs=1e-5) and sev[2] == pytest.approx(sev[0], abs=1e-5) and np.isfinite(sev[3])
    labels = tmp_path / "labels.csv"
    labels.write_text("image,level\n" + "\n".join(f"{Path(p).stem},3" for p in photos) + "\n")
    assert main(["detector", "eval", "--images", str(files["photo"].parent), "--labels", str(labels), "--weights", "phantom",
                 "--json", "--no-progress"]) == 2  # the folder holds other images without a label row: named
    assert "no label row" in one_error_line(capsys)
    folder = tmp_path / "formats"
    folder.mkdir()
    for p in photos:
        shutil.copy(p, folder)
    assert main(["detector", "eval", "--images", str(folder), "--labels", str(labels), "--weights", "phantom", "--json",
                 "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 4
    assert main(["isolate", "bank", str(folder), "--weights", "phantom", "--out", str(tmp_path / "b.safetensors"),
                 "--no-progress"]) == 0
    assert {d.source for d in ke.load_bank(tmp_path / "b.safetensors")} >= {"16bit", "rgba", "eye"}
    assert main(["vessels", "segment", *photos[1:], "--out", str(tmp_path / "seg")]) == 0
    assert len(list((tmp_path / "seg").glob("*_vessels.png"))) == 3
    # masks and a colour reference in those formats too (the tree as gray, the FOV as RGBA, a 16-bit reference)
    assert main(["synth", "generate", "--vessels", str(files["gray"]), "--fov", str(files["rgba"]), "--weights", str(SYNTH),
                 "--colour-reference", str(files["16bit"]), "--out", str(tmp_path / "healthy.png")]) == 0
    capsys.readouterr()


def test_a_huge_rotation_wraps_to_one_turn(files, capsys):
    out45, outhuge = files["dir"] / "rot45.png", files["dir"] / "rothuge.png"
    for layout, out in (("rot45", out45), ("rothuge", outhuge)):
        assert main([*generate(files, "--bank", str(BANK), "--layout", str(files["dir"] / f"layout_{layout}.json")),
                     "--out", str(out)]) == 0  # the last --out wins
    assert np.array_equal(cv2.imread(str(out45)), cv2.imread(str(outhuge)))
    assert math.cos(math.radians(HUGE_TURN)) != math.cos(math.radians(45))  # the test would be empty otherwise
    d = ke.load_bank(BANK)[3]
    a, b = d.rotated(45), d.rotated(HUGE_TURN)
    assert a.bbox == b.bbox and np.array_equal(a.mask, b.mask) and np.array_equal(a.evidence, b.evidence)
    with pytest.raises(ValueError, match="finite number of degrees"):
        d.rotated(float("inf"))
    with pytest.raises(ValueError, match=r"relocate to \(300.0, 10.0\): outside the 256x256 px image"):
        d.relocated((300.0, 10.0))
    capsys.readouterr()


def test_a_failed_run_keeps_the_bank_already_saved(files, capsys, tmp_path):
    out = tmp_path / "bank.safetensors"
    assert main(["isolate", "bank", str(files["photo"]), "--weights", "phantom", "--out", str(out), "--no-progress"]) == 0
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (out, out.with_suffix(".json"))}
    capsys.readouterr()
    assert main(["isolate", "bank", str(files["photo"]), str(files["dir"] / "1px.png"), "--weights", "phantom",
                 "--out", str(out), "--no-progress"]) == 2
    assert "1px.png" in one_error_line(capsys)
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in before} == before
    assert len(ke.load_bank(out)) > 0


def test_shards_of_another_run_are_refused_not_mixed(files, capsys, tmp_path):
    out = tmp_path / "pred.csv"
    base = ["detector", "predict", str(files["photo"]), str(files["16bit"]), "--weights", "phantom", "--out", str(out),
            "--batch-size", "1", "--shard-size", "1", "--no-progress"]
    assert main(base) == 0
    capsys.readouterr()
    assert main([*base, "--tta"]) == 2
    assert one_error_line(capsys) == (f"koch-explore detector predict: {tmp_path / 'pred.shards'}: shards of another run "
                                      "(different tta); use another --out or remove the folder to start over")


def test_resume_under_another_configuration_is_refused_and_the_checkpoint_kept(capsys, tmp_path):
    out = tmp_path / "run"
    base = ["detector", "train", "--data", "phantom", "--phantom-count", "10", "--epochs", "1", "--batch-size", "4",
            "--out", str(out), "--no-amp", "--num-threads", "1"]
    assert main(base) == 0
    ckpt = out / "last.pt"
    before = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    capsys.readouterr()
    assert main([*base, "--lr", "0.01", "--seed", "3", "--resume"]) == 2
    assert one_error_line(capsys) == (f"koch-explore detector train: {ckpt}: checkpoint of another configuration "
                                      "(lr 0.001 -> 0.01, seed 0 -> 3); resume with its settings, or train into another --out")
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == before
    assert main([*base, "--epochs", "2", "--resume"]) == 0  # a longer run of the same configuration resumes
    assert "resumed from" in capsys.readouterr().out


def test_a_bug_is_one_line_too_and_debug_shows_its_traceback(monkeypatch, capsys):
    import koch_explore.cli.phantom as phantom_cli

    def broken(*_a, **_k):
        raise RuntimeError("simulated\nbug")

    monkeypatch.setattr(phantom_cli, "write_phantom_dataset", broken)
    assert main(["phantom", "--out", "/tmp/never", "--count", "1"]) == 1
    assert one_error_line(capsys) == ("koch-explore phantom: internal error RuntimeError: simulated bug "
                                      "(KOCH_DEBUG=1 shows the traceback; please report it)")
    monkeypatch.setenv("KOCH_DEBUG", "1")
    with pytest.raises(RuntimeError, match="simulated"):
        main(["phantom", "--out", "/tmp/never", "--count", "1"])


def test_a_wrong_flag_or_value_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["detector", "predict", "eye.png", "--batch-size", "many"])
    assert exit_.value.code == 2
    assert one_error_line(capsys) == "koch-explore detector predict: argument --batch-size: invalid int value: 'many' (see --help)"


def test_an_edited_record_is_caught_by_the_sidecar_checksum(tmp_path, capsys):
    """A field no consistency check reads (the score) edited by hand: the records' checksum catches it."""
    path = ke.load_bank(BANK).select(indices=[0, 1, 2]).save(tmp_path / "bank.safetensors")
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["descriptors"][1]["score"] = 0.99
    side.write_text(json.dumps(meta))
    with pytest.raises(BankFormatError, match="do not match their checksum"):
        ke.load_bank(path)


# --------------------------------------------------------------------------- issue 39: roots, devices, --model
# Run as the user runs them, in a fresh process: the environment (KOCH_DATA) is read there, and the
# one line is all that reaches stderr (no warning or note printed before the error).


def cli_subprocess(argv: list[str], cwd=None, **env: str) -> tuple[int, list[str]]:
    """(exit status, stderr lines but tqdm bars) of ``koch-explore ARGV`` in a new process."""
    import os
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items() if k != "KOCH_DEBUG"}  # a traceback would be asked for
    done = subprocess.run([sys.executable, "-m", "koch_explore", *argv], capture_output=True, text=True,
                          env={**environ, **env}, cwd=cwd, timeout=300)
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    return done.returncode, [ln for ln in done.stderr.splitlines() if ln.strip() and "%|" not in ln]


def one_line_exit_2(argv: list[str], *named: str, **env: str) -> str:
    code, lines = cli_subprocess(argv, **env)
    assert code == 2 and len(lines) == 1, (code, lines)
    for name in named:
        assert name in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("how", ["KOCH_DATA missing", "--root missing", "--root empty", "KOCH_DATA empty"])
def test_a_data_root_that_is_not_there_or_holds_nothing_is_one_line(how, tmp_path):
    """A mistyped KOCH_DATA used to be skipped (data check then ran on ../shared/data and said all is
    well); a root holding none of the datasets used to pass as a table of "missing" rows, exit 0."""
    missing, empty = tmp_path / "nonexistent", tmp_path / "empty"
    empty.mkdir()
    argv, env = ["data", "check", "--quiet"], {}
    if how == "KOCH_DATA missing":
        env["KOCH_DATA"] = str(missing)
        named = ("KOCH_DATA", str(missing))
    elif how == "--root missing":
        argv += ["--root", str(missing)]
        named = (str(missing),)
    elif how == "--root empty":
        argv += ["--root", str(empty)]
        named = (str(empty), "DRIVE", "EyePACS")
    else:
        env["KOCH_DATA"] = str(empty)
        named = (str(empty), "DRIVE", "EyePACS")
    line = one_line_exit_2(argv, *named, **env)
    assert line.startswith("koch-explore data check: ")


def test_an_existing_empty_koch_data_still_falls_back_to_the_embedded_data(tmp_path, monkeypatch):
    """What the notebooks' ``empty_root`` fixture relies on: the library takes an existing root that holds
    no dataset, and each call falls back to the embedded data; only a missing folder is refused."""
    from koch_explore.data.roots import resolve_data_root

    monkeypatch.setenv("KOCH_DATA", str(tmp_path))
    assert resolve_data_root() == tmp_path.resolve()
    assert ke.diseased_eyes(1, 64).source == "phantoms"
    monkeypatch.setenv("KOCH_DATA", str(tmp_path / "typo"))
    with pytest.raises(FileNotFoundError, match="KOCH_DATA=.*typo: data root does not exist"):
        resolve_data_root()
    assert resolve_data_root(tmp_path) == tmp_path.resolve()  # an explicit root wins over the environment


def test_an_unknown_device_is_one_line(files):
    one_line_exit_2(["detector", "predict", "--device", "gpu", str(files["photo"]), "--weights", "phantom"],
                    "device 'gpu': expected auto, cpu, cuda or cuda:N")


def test_cuda_where_there_is_none_is_one_line(files):
    """On a CPU build of torch: said plainly, not "Torch not compiled with CUDA enabled" as a bug. On a
    CUDA machine the same door is a GPU index past the last one."""
    import torch

    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        device, named = f"cuda:{n}", f"this machine has {n} CUDA device"
    else:
        device, named = "cuda", "CUDA is not available on this machine"
    one_line_exit_2(["detector", "predict", "--device", device, str(files["photo"]), "--weights", "phantom"],
                    f"device '{device}'", named, "--device cpu" if device == "cuda" else "cuda:0")


def test_device_names_are_checked_in_one_place(monkeypatch):
    import torch

    from koch_explore.core.runtime import resolve_device

    assert resolve_device("cpu") == torch.device("cpu") and resolve_device("auto").type in ("cpu", "cuda")
    for bad in ("gpu", "CPU", "cuda:", "cuda:x", "cuda:-1", "mps", " cpu"):
        with pytest.raises(ValueError, match="expected auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"device 'cuda:2': this machine has 2 CUDA devices \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda:0': CUDA is not available on this machine"):
        resolve_device("cuda:0")
    # the loaders take the same names from Python
    for load in (ke.load_vessels, ke.load_detector, ke.load_synthesizer):
        with pytest.raises(ValueError, match="device 'gpu'"):
            load(None, device="gpu")
    from koch_explore.detect.adapter import load_model

    with pytest.raises(ValueError, match="device 'gpu'"):
        load_model(lambda: pytest.fail("the factory ran before the device was checked"), device="gpu")


def test_a_model_file_with_a_syntax_error_is_one_line(files, tmp_path):
    broken = tmp_path / "broken_model.py"
    broken.write_text("import torch\n\ndef make(:\n    return torch.nn.Conv2d(3, 5, 3)\n")
    line = one_line_exit_2(["detector", "predict", str(files["photo"]), "--model", f"{broken}:make"],
                           f"--model '{broken}:make'", "SyntaxError", "broken_model.py, line 3")
    assert f"importing {broken} raised SyntaxError" in line


def test_a_factory_that_raises_is_one_line(files, tmp_path):
    factory = tmp_path / "my_net.py"
    factory.write_text("def make(width):\n    raise RuntimeError('never reached')\n")
    line = one_line_exit_2(["detector", "predict", str(files["photo"]), "--model", f"{factory}:make"],
                           f"--model '{factory}:make'", "calling make() raised TypeError", "width")
    assert line == (f"koch-explore detector predict: --model '{factory}:make': calling make() raised TypeError: "
                    "make() missing 1 required positional argument: 'width'")
    # a factory given to load_model from Python is named the same way, its exception chained
    from koch_explore.detect.adapter import AdapterError, load_model

    def make():
        raise RuntimeError("out of\nmemory")

    with pytest.raises(AdapterError, match=r"factory make: calling make\(\) raised RuntimeError: out of") as caught:
        load_model(make)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value.__cause__, RuntimeError)

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        load_model(interrupted)
