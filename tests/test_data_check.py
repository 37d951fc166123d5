"""Manifests and ``koch-explore data check``: found / partial / corrupt / missing, on toy and real data."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from koch_explore.cli import main
from koch_explore.data.check import check_all, check_dataset
from koch_explore.data.io import write_image
from koch_explore.data.manifests import (
    ManifestError,
    get_manifest,
    load_manifest,
    load_manifests,
    manifests_dir,
)
from koch_explore.data.roots import resolve_data_root

TOY_TOML = """
name = "Toy"
folder = "Toy"
title = "Toy graded set"
task = "grading"
description = "three synthetic photos"
licence = "test data"
checksums = "MANIFEST.json"

[key_files]
"labels.csv" = "{labels_sha}"

[roles.images]
kind = "image"
patterns = ["images/{{id}}.png"]
expected = 3

[roles.labels]
kind = "table"
patterns = ["labels.csv"]
expected = 1

[labels]
file = "labels.csv"
id_column = "image"
description = "grade 0-4"

[labels.columns.level]
0 = "No DR"
1 = "Mild"
2 = "Moderate"
3 = "Severe"
4 = "Proliferative"
"""


def _fundus(h: int = 48, w: int = 64, tint: float = 0.0) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w, 3), np.float32)
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.45 * min(h, w)) ** 2
    img[disc] = (0.8, 0.4 + tint, 0.2)
    return img


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_checksums(folder: Path) -> None:
    entries = [
        {"path": p.relative_to(folder).as_posix(), "bytes": p.stat().st_size, "sha256": _sha(p)}
        for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "MANIFEST.json"
    ]
    (folder / "MANIFEST.json").write_text(json.dumps({"checksums": entries}))


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A data root with one intact toy dataset, and a manifest directory describing it."""
    root = tmp_path / "data"
    folder = root / "Toy"
    for i, name in enumerate(["a_left", "a_right", "b_left"]):
        write_image(folder / "images" / f"{name}.png", _fundus(tint=0.1 * i))
    (folder / "labels.csv").write_text("image,level\na_left,0\na_right,2\nb_left,4\nc_left,1\n")
    _write_checksums(folder)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "toy.toml").write_text(TOY_TOML.format(labels_sha=_sha(folder / "labels.csv")))
    monkeypatch.setenv("KOCH_MANIFESTS", str(manifests))
    return root


def _status(root: Path):
    (status,) = check_all(root)
    return status


def _files(status) -> dict[str, str]:
    """Problems by file; several problems about one file are joined."""
    out: dict[str, str] = {}
    for p in status.problems:
        out[p.file] = f"{out[p.file]}; {p.problem}" if p.file in out else p.problem
    return out


# --------------------------------------------------------------------------- manifests


def test_project_manifests_describe_every_dataset():
    manifests = load_manifests()
    assert set(manifests) == {"DRIVE", "CHASE_DB1", "EyePACS", "IDRiD_lesions", "APTOS2019", "Messidor", "phantom"}
    for m in manifests.values():
        assert m.description and m.licence and m.labels.description and m.roles
        if m.name != "phantom":
            assert m.urls and m.citation, m.name
    assert manifests_dir().name == "data_manifests"


def test_manifest_expected_counts_and_key_files():
    expect = {
        "DRIVE": {"images": 40, "vessels": 40, "fov": 40, "vessels_2nd": 20},
        "CHASE_DB1": {"images": 28, "vessels": 28, "vessels_2nd": 28},
        "EyePACS": {"images": 5394, "images_512": 103, "labels": 1},
        "APTOS2019": {"images": 2930, "labels": 1},
        "IDRiD_lesions": {"images": 14},
    }
    for name, counts in expect.items():
        got = get_manifest(name).expected_counts({})
        assert {k: got[k] for k in counts} == counts
    assert "trainLabels.csv" in get_manifest("eyepacs").key_files
    assert "labels.csv" in get_manifest("aptos2019").key_files
    for m in load_manifests().values():
        assert m.checksums == "MANIFEST.json"


def test_messidor_labels_and_phantom_layout():
    messidor = get_manifest("messidor")
    assert set(messidor.labels.columns["Retinopathy grade"]) == {0, 1, 2, 3}
    assert set(messidor.labels.columns["Risk of macular edema"]) == {0, 1, 2}
    phantom = get_manifest("phantom")
    assert phantom.optional
    assert {"images", "vessels", "fov", "labels", "lesions_MA", "lesions_SE"} <= set(phantom.roles)
    assert phantom.expected_counts({"images": 7})["vessels"] == 7


def test_role_index_pairs_files_by_id(tmp_path):
    drive = get_manifest("DRIVE")
    for sub, pat in [("training/images", "21_training.tif"), ("training/1st_manual", "21_manual1.gif"),
                     ("test/images", "01_test.tif"), ("test/images", "notes.txt")]:
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
        (tmp_path / sub / pat).write_bytes(b"x")
    assert list(drive.roles["images"].index(tmp_path)) == ["01", "21"]
    assert drive.roles["vessels"].index(tmp_path)["21"].name == "21_manual1.gif"


def test_bad_manifests_name_their_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed")
    with pytest.raises(ManifestError, match="bad.toml.*not valid TOML"):
        load_manifest(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text('license = "misspelt"\n' + TOY_TOML.format(labels_sha="0" * 64))
    with pytest.raises(ManifestError, match="typo.toml.*unknown keys"):
        load_manifest(typo)
    short = tmp_path / "short.toml"
    short.write_text(TOY_TOML.format(labels_sha="abc"))
    with pytest.raises(ManifestError, match="sha256"):
        load_manifest(short)


def test_manifest_dir_from_environment(toy):
    assert list(load_manifests()) == ["Toy"]


# --------------------------------------------------------------------------- check on toy data


def test_intact_dataset_is_found(toy):
    s = _status(toy)
    assert s.status == "found", s.problems
    assert s.found == {"images": 3, "labels": 1} and s.expected == {"images": 3, "labels": 1}
    assert s.verified == 4  # 3 images + labels.csv


def test_altered_and_truncated_files_are_corrupt(toy):
    img = toy / "Toy/images/a_left.png"
    data = bytearray(img.read_bytes())
    data[len(data) // 2] ^= 0xFF
    img.write_bytes(bytes(data))
    cut = toy / "Toy/images/b_left.png"
    cut.write_bytes(cut.read_bytes()[:100])
    s = _status(toy)
    assert s.status == "corrupt"
    problems = _files(s)
    assert "sha256" in problems["images/a_left.png"]
    assert "size" in problems["images/b_left.png"] and "not a readable image" in problems["images/b_left.png"]
    assert s.verified == 2


def test_missing_file_makes_dataset_partial(toy):
    (toy / "Toy/images/a_right.png").unlink()
    s = _status(toy)
    assert s.status == "partial"
    assert "missing" in _files(s)["images/a_right.png"]
    assert "images: 2 files found, 3 expected" in _files(s)["images/{id}.png"]


def test_absent_manifest_json_is_partial_but_key_files_still_checked(toy):
    (toy / "Toy/MANIFEST.json").unlink()
    assert _status(toy).status == "partial"
    (toy / "Toy/labels.csv").write_text("image,level\na_left,0\na_right,2\nb_left,3\n")
    s = _status(toy)
    assert s.status == "corrupt" and "sha256" in _files(s)["labels.csv"]


def test_unreadable_manifest_json_is_corrupt(toy):
    (toy / "Toy/MANIFEST.json").write_text("{not json")
    s = _status(toy)
    assert s.status == "corrupt" and "unreadable" in _files(s)["MANIFEST.json"]


def test_regenerated_manifest_cannot_hide_a_changed_label_table(toy):
    (toy / "Toy/labels.csv").write_text("image,level\na_left,1\na_right,2\nb_left,4\n")
    _write_checksums(toy / "Toy")  # someone "fixed" the checksums after editing labels
    s = _status(toy)
    assert s.status == "corrupt"
    assert "differs from toy.toml" in _files(s)["labels.csv"]


def test_label_table_problems_are_corrupt(toy, tmp_path):
    manifests = Path(tmp_path / "manifests")
    (toy / "Toy/labels.csv").write_text("image,level\na_left,0\na_right,7\n")
    (manifests / "toy.toml").write_text(TOY_TOML.format(labels_sha=_sha(toy / "Toy/labels.csv")))
    _write_checksums(toy / "Toy")
    problems = _files(_status(toy))
    assert "not one of [0, 1, 2, 3, 4]" in problems["labels.csv"]
    assert "no row in labels.csv" in problems["images/b_left.png"]


def test_dataset_folder_absent_is_missing_not_an_error(toy):
    shutil.rmtree(toy / "Toy")
    (toy / "Other").mkdir()
    s = _status(toy)
    assert s.status == "missing" and s.path is None and s.expected == {"images": 3, "labels": 1}


def test_root_may_be_the_dataset_folder_itself(toy):
    (toy / "Toy").rename(toy / "somewhere")
    s = _status(toy / "somewhere")
    assert s.status == "found" and s.path == toy / "somewhere"


# --------------------------------------------------------------------------- the phantom is optional


def _phantom(folder: Path, n: int = 2) -> Path:
    for i in range(n):
        img = _fundus(tint=0.05 * i)
        write_image(folder / "images" / f"ph_{i}.png", img)
        write_image(folder / "fov" / f"ph_{i}.png", img.max(axis=2) > 0)
        write_image(folder / "vessels" / f"ph_{i}.png", np.eye(48, 64, dtype=bool))
    lesion = np.zeros((48, 64), bool)
    lesion[20:23, 30:33] = True
    write_image(folder / "lesions" / "MA" / "ph_0.png", lesion)
    (folder / "labels.csv").write_text("image,level\n" + "".join(f"ph_{i},{i}\n" for i in range(n)))
    return folder


def test_phantom_checked_only_when_present(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    assert "phantom" not in {s.name for s in check_all(root)}
    _phantom(root / "phantom")
    statuses = {s.name: s for s in check_all(root)}
    assert statuses["phantom"].status == "found", statuses["phantom"].problems
    assert statuses["phantom"].found["images"] == 2 and statuses["phantom"].found["lesions_MA"] == 1
    assert statuses["DRIVE"].status == "missing"


def test_root_pointing_at_a_phantom_folder_checks_only_it(tmp_path):
    folder = _phantom(tmp_path / "runs" / "my_phantom", n=3)
    (folder / "vessels" / "ph_2.png").unlink()
    (s,) = check_all(folder)
    assert s.name == "phantom" and s.status == "partial"
    assert "vessels: 2 files found, 3 expected" in _files(s)["vessels/{id}.png"]


def test_generated_phantom_matches_its_manifest(tmp_path, capsys):
    """`koch-explore phantom` output must be what phantom.toml describes."""
    from koch_explore.cli import build_parser

    if "phantom" not in build_parser().format_help():
        pytest.skip("koch-explore phantom is not available")
    out = tmp_path / "phantom"
    assert main(["phantom", "--out", str(out), "--count", "3", "--seed", "1", "--size", "128"]) == 0
    capsys.readouterr()
    (s,) = check_all(out)
    assert s.name == "phantom" and s.status == "found", s.problems
    assert s.found["images"] == s.found["vessels"] == s.found["fov"] == 3


def test_empty_dataset_folder_is_missing(toy):
    shutil.rmtree(toy / "Toy")
    (toy / "Toy" / "images").mkdir(parents=True)
    s = _status(toy)
    assert s.status == "missing" and "empty" in _files(s)["Toy"]


# --------------------------------------------------------------------------- command line


def test_cli_json_and_exit_codes(toy, capsys):
    assert main(["data", "check", "--root", str(toy), "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["root"] == str(toy.resolve())
    toy_report = report["datasets"]["Toy"]
    assert toy_report["status"] == "found" and toy_report["verified"] == 4
    assert toy_report["found"] == toy_report["expected"] == {"images": 3, "labels": 1}
    (toy / "Toy/images/a_left.png").write_bytes(b"")
    assert main(["data", "check", "--root", str(toy), "--json"]) == 1
    toy_report = json.loads(capsys.readouterr().out)["datasets"]["Toy"]
    assert toy_report["status"] == "corrupt"
    assert any(p["file"] == "images/a_left.png" and "empty" in p["problem"] for p in toy_report["problems"])


def test_cli_table(toy, capsys):
    assert main(["data", "check", "--root", str(toy)]) == 0
    out = capsys.readouterr().out
    assert "Toy" in out and "found" in out and "images 3/3" in out and "no dataset is corrupt" in out


def test_cli_usage_errors(toy, tmp_path, capsys):
    assert main(["data", "check", "--root", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["data", "check", "--root", str(toy), "--dataset", "Nope"]) == 2
    assert "unknown dataset" in capsys.readouterr().err


# --------------------------------------------------------------------------- real data


def _real_root() -> Path:
    root = resolve_data_root()
    if root is None or not (root / "DRIVE").is_dir():
        pytest.skip("real data not available (set KOCH_DATA or stage ../shared/data)")
    return root


def _real(name: str):
    root = _real_root()
    if not (root / name).is_dir():
        pytest.skip(f"{name} not staged under {root}")
    return check_dataset(get_manifest(name), root, progress=False)


@pytest.mark.real_data
def test_real_drive_is_complete():
    s = _real("DRIVE")
    assert s.status == "found", s.problems
    assert (s.found["images"], s.found["vessels"], s.found["fov"], s.found["vessels_2nd"]) == (40, 40, 40, 20)


@pytest.mark.real_data
def test_real_chase_is_complete():
    s = _real("CHASE_DB1")
    assert s.status == "found", s.problems
    assert s.found == {"images": 28, "vessels": 28, "vessels_2nd": 28}


@pytest.mark.real_data
def test_real_eyepacs_labels_and_images_all_verified():
    s = _real("EyePACS")
    listed = json.loads((s.path / "MANIFEST.json").read_text())["checksums"]
    assert s.status == "found", s.problems[:5]
    assert s.verified == len(listed) == 5394 + 103 + 2  # images, labels and README
    assert s.found == {"images": 5394, "images_512": 103, "labels": 1}


def _writable_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=shutil.copyfile)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)
    return dst


@pytest.mark.real_data
def test_real_corrupted_copy_is_reported(tmp_path, capsys):
    src = _real_root() / "IDRiD_lesions"
    if not src.is_dir():
        pytest.skip("IDRiD_lesions not staged")
    copy = _writable_copy(src, tmp_path / "root" / "IDRiD_lesions")
    flipped, truncated = copy / "IDRiD_03.jpg", copy / "IDRiD_05_HE.png"
    data = bytearray(flipped.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 16):
        data[i] ^= 0x5A
    flipped.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])

    code = main(["data", "check", "--root", str(tmp_path / "root"), "--dataset", "IDRiD_lesions", "--json", "--quiet"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    idrid = report["datasets"]["IDRiD_lesions"]
    assert idrid["status"] == "corrupt"
    named = {p["file"]: p["problem"] for p in idrid["problems"]}
    assert set(named) == {"IDRiD_03.jpg", "IDRiD_05_HE.png"}
    assert "sha256" in named["IDRiD_03.jpg"]
    assert "size" in named["IDRiD_05_HE.png"] and "not a readable image" in named["IDRiD_05_HE.png"]
    assert idrid["verified"] == 62 - 2


@pytest.mark.real_data
def test_real_every_staged_file_reads(capsys):
    """Reading every staged file once must pass in CI."""
    root = _real_root()
    start = time.perf_counter()
    code = main(["data", "check", "--root", str(root), "--json", "--quiet"])
    elapsed = time.perf_counter() - start
    report = json.loads(capsys.readouterr().out)
    corrupt = {n: d["problems"][:3] for n, d in report["datasets"].items() if d["status"] == "corrupt"}
    assert code == 0 and not corrupt
    staged = [p.name for p in root.iterdir() if (p / "MANIFEST.json").is_file()]
    for name in staged:
        assert report["datasets"][name]["status"] == "found", (name, report["datasets"][name]["problems"][:3])
    assert report["datasets"]["Messidor"]["status"] in ("missing", "found")
    assert elapsed < 60, f"full data check took {elapsed:.1f} s"
