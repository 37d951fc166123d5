"""Local inoculation: lesions grown inside a real healthy photo, every other pixel the photo's own; the
optic disc and the spectrum term of the whole-fundus generator."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import koch_explore as ke
from koch_explore.core.weights import WeightsMismatchError, resolve_weights
from koch_explore.synthesis.local import (
    LocalConfig,
    LocalGenerator,
    LocalSynthesizer,
    placement_region,
)
from koch_explore.synthesis.transplant import transplant


@pytest.fixture(scope="module")
def photo():
    return ke.retina_photo(256)


@pytest.fixture(scope="module")
def bank():
    return ke.load_bank("local")


def _region(layout, cfg: LocalConfig, shape) -> np.ndarray:
    out = np.zeros(shape, bool)
    for d in layout:
        m = np.zeros(shape, np.uint8)
        x0, y0, x1, y1 = d.bbox
        m[y0:y1, x0:x1] = d.mask
        out |= placement_region(m, cfg)
    return out


def _noisy_generator(seed: int) -> LocalGenerator:
    """A generator whose every weight is random (the last conv too): whatever it draws, only the
    placement regions may change."""
    torch.manual_seed(seed)
    g = LocalGenerator(LocalConfig())
    torch.nn.init.normal_(g.to_rgb.weight, std=0.5)
    torch.nn.init.normal_(g.to_rgb.bias, std=0.5)
    return g


@pytest.mark.parametrize("which", ["shipped", "random"])
def test_pixels_beyond_the_dilated_placement_masks_are_the_photos_own(photo, bank, which):
    img, fov = photo
    synth = ke.load_synthesizer("local") if which == "shipped" else LocalSynthesizer(_noisy_generator(3))
    assert synth.mode == "local"
    layout = ke.random_layout(bank, 16, fov, seed=5)
    out = synth.inoculate(img, fov, layout)
    region = _region(layout, synth.cfg, fov.shape)
    assert out.shape == img.shape and out.dtype == np.float32
    assert np.array_equal(out[~region], img[~region])  # bit for bit, not within a tolerance
    assert 0.01 < region.mean() < 0.5  # the regions are the lesions and a ring, not the fundus
    changed = np.abs(out - img).max(axis=-1) > 1e-3
    assert changed[region].mean() > 0.2  # and inside them the lesions were grown
    assert np.array_equal(synth.inoculate(img, fov, None), img)


def test_an_untrained_local_generator_returns_the_transplant(photo, bank):
    """Its last conv starts at zero: training starts from the real lesions pasted, not from noise."""
    img, fov = photo
    layout = ke.random_layout(bank, 6, fov, seed=1)
    out = LocalSynthesizer(LocalGenerator(LocalConfig())).inoculate(img, fov, layout)
    pasted = transplant(None, img, layout)
    masks = _region(layout, LocalConfig(dilate=0, feather=0.0), fov.shape)
    assert np.abs(out - pasted)[masks & fov].max() < 1e-6  # on the lesions inside the FOV: the transplant itself
    assert np.array_equal(out[~fov], img[~fov])  # and nothing drawn on the black frame


def test_shipped_local_synthesizer_loads_strictly_and_by_its_header(tmp_path):
    synth = ke.load_synthesizer("local")
    assert isinstance(synth, LocalSynthesizer) and synth.detector_hash == ke.load_detector().weights_hash()
    assert isinstance(ke.load_synthesizer("real"), ke.LesionSynthesizer)
    with pytest.raises(WeightsMismatchError, match="not koch-explore local lesion synthesizer weights"):
        LocalSynthesizer.load(resolve_weights("synthesizer", "real"))
    path = synth.save(tmp_path / "copy.safetensors")
    again = ke.load_synthesizer(path)
    img, fov = ke.retina_photo(256)
    layout = ke.random_layout(ke.load_bank("local"), 4, fov, seed=0)
    assert np.array_equal(again.inoculate(img, fov, layout), synth.inoculate(img, fov, layout))


def test_local_mode_refuses_a_host_without_photo_and_a_bank_of_another_detector(photo):
    img, fov = photo
    synth = ke.load_synthesizer("local")
    with pytest.raises(ValueError, match="no photo"):
        synth.synthesize_host({"vessels": np.zeros((256, 256), np.float32), "fov": fov, "name": "tree only"}, None)
    phantom_bank = ke.load_bank("phantom")
    with pytest.raises(ValueError, match="other detector weights"):
        synth.inoculate(img, fov, ke.random_layout(phantom_bank, 2, fov, seed=0))
    with pytest.raises(ValueError, match="must be"):
        synth.inoculate(img[:128], fov[:128], None)


def test_koch_test_in_local_mode_on_the_embedded_photo(photo):
    """No data: the shipped local synthesizer grows the real bank's lesions in skimage's photo and in grade-0
    phantoms; the detector's severity rises with their number, on enough distinct hosts for a verdict
    (lesion-driven), and the healthy figures that would compare a photo with itself are left out."""
    det, synth, bank, hosts, data = ke.default_setup("embedded", mode="local")
    assert synth.mode == "local" and data == "embedded" and len(hosts) == 12 and hosts[0]["name"] == "skimage-retina"
    # three counts, not six: half the syntheses; 16 is still the largest, so the verdict reads the same change
    rep = ke.koch_test(det, synth, bank, hosts, config=ke.KochConfig(trials=8, counts=(0, 4, 16), seed=0), progress=False)
    assert rep.config["mode"] == "local" and rep.vessel_dice is None and rep.fd is None
    sev = rep.severity_by_count
    assert sev["16"] > sev["4"] > sev["0"]
    assert rep.effects["distinct_hosts"] == 8 and rep.verdict == "lesion-driven", rep.reading()
    assert "local synthesis" in rep.summary("embedded")
    with pytest.raises(ValueError, match="not phantom"):
        ke.default_setup("phantom", mode="local")


def test_folder_hosts_and_synth_generate_local_from_the_command_line(tmp_path, photo):
    from koch_explore.data.io import write_image

    img, _ = photo
    folder = tmp_path / "healthy"
    write_image(folder / "a.png", img)
    write_image(folder / "sub" / "b.png", img[:, ::-1])
    hosts = ke.healthy_hosts("embedded", str(folder), size=256)
    assert [h["name"].split("/")[-1] for h in hosts] == ["a.png", "b.png"] and all(h["vessels"].any() for h in hosts)

    out = tmp_path / "sick.png"
    run = subprocess.run([sys.executable, "-m", "koch_explore", "synth", "generate", "--weights", "local", "--photo",
                          str(folder / "a.png"), "--bank", "local", "--count", "6", "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "6 lesions placed" in run.stdout and out.is_file()
    run = subprocess.run([sys.executable, "-m", "koch_explore", "synth", "generate", "--weights", "local", "--bank", "local",
                          "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "give --photo" in run.stderr


def test_koch_test_cli_local_mode_json():
    run = subprocess.run([sys.executable, "-m", "koch_explore", "koch-test", "--data", "embedded", "--mode", "local",
                          "--trials", "1", "--no-control", "--json"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rep = json.loads(run.stdout)
    assert rep["mode"] == "local" and rep["hosts"] is None and rep["vessel_dice"] is None


# -- the whole-fundus generator's disc and spectrum ---------------------------------------------


def test_the_disc_is_found_from_the_vessel_tree_where_the_phantom_drew_it():
    from koch_explore.data.phantom import generate_phantom
    from koch_explore.synthesis.disc import disc_from_vessels, disc_map, host_disc

    for seed in (1, 2, 3, 4):
        ph = generate_phantom(seed, size=256, grade=0)
        x, y, r = disc_from_vessels(ph.vessels, ph.fov)
        assert np.hypot(x - ph.disc_center[0], y - ph.disc_center[1]) < 2 * ph.disc_radius
        host = {"vessels": ph.vessels, "fov": ph.fov}
        assert host_disc(host) == (x, y, r) and host_disc({**host, "disc": (5, 6, 7)}) == (5.0, 6.0, 7.0)
    m = disc_map((64, 64), (10.0, 20.0, 4.0))
    assert m[20, 10] == pytest.approx(1.0) and m[20, 10] > m[20, 14] > m[20, 30]


def test_a_generator_widened_for_the_disc_draws_what_it_drew_until_trained():
    from koch_explore.synthesis.generator import (
        Generator,
        GeneratorConfig,
        with_disc_input,
    )

    small = dict(size=64, ngf=8, ndf=8, depth=4, z_dim=16, z_channels=8, canvas_channels={"conv2": 4}, canvas_scales={"conv2": 2})
    torch.manual_seed(0)
    old = Generator(GeneratorConfig(**small)).eval()
    new = Generator(GeneratorConfig(**small, disc_channel=True)).eval()
    new.load_state_dict(with_disc_input(old.state_dict(), new))
    v = (torch.rand(2, 1, 64, 64) > 0.9).float()
    fov = torch.ones(2, 1, 64, 64)
    z = torch.randn(2, 16)
    disc = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(old(v, fov, z), new(v, fov, z, disc=disc))
    with pytest.raises(ValueError, match="give disc"):
        new(v, fov, z)


def test_the_spectrum_term_sees_stripes_and_is_zero_for_the_photo_itself():
    from koch_explore.data.phantom import generate_phantom
    from koch_explore.synthesis.losses import spectrum_term

    ph = generate_phantom(1, size=256, grade=0)
    img = torch.from_numpy(np.clip(ph.image, 0, 1)).permute(2, 0, 1)[None].float()
    fov = torch.from_numpy(ph.fov)[None, None].float()
    rows = (torch.arange(256) % 4 < 2).float()[None, None, :, None] * 0.1
    striped = (img - rows * fov).clamp(0, 1)
    assert spectrum_term(img, img, fov).item() == 0.0
    assert spectrum_term(striped, img, fov).item() > 0.05
    striped.requires_grad_(True)
    spectrum_term(striped, img, fov).backward()
    assert torch.isfinite(striped.grad).all() and striped.grad.abs().sum() > 0


def test_the_profile_term_sees_faint_stripes_in_either_direction_and_is_zero_for_the_photo_itself():
    """Stripes a few grey levels deep (what the first generator drew) move the row/column profile term by
    far more than the 2-D spectrum term, which spreads them over all orientations."""
    from koch_explore.data.phantom import generate_phantom
    from koch_explore.synthesis.losses import profile_term, spectrum_term

    ph = generate_phantom(1, size=256, grade=0)
    img = torch.from_numpy(np.clip(ph.image, 0, 1)).permute(2, 0, 1)[None].float()
    fov = torch.from_numpy(ph.fov)[None, None].float()
    wave = 0.01 * (torch.arange(256) % 3 == 0).float()
    for stripes in (wave[None, None, :, None], wave[None, None, None, :]):  # rows, then columns
        striped = (img - stripes * fov).clamp(0, 1)
        assert profile_term(img, img, fov).item() == 0.0
        assert profile_term(striped, img, fov).item() > 0.05
        assert profile_term(striped, img, fov).item() > 5 * spectrum_term(striped, img, fov).item()
    striped.requires_grad_(True)
    profile_term(striped, img, fov).backward()
    assert torch.isfinite(striped.grad).all() and striped.grad.abs().sum() > 0


def test_the_shading_term_sees_a_colour_drift_but_not_the_placed_lesions():
    from koch_explore.data.phantom import generate_phantom
    from koch_explore.synthesis.losses import shading_term

    ph = generate_phantom(2, size=256, grade=0)
    img = torch.from_numpy(np.clip(ph.image, 0, 1)).permute(2, 0, 1)[None].float()
    fov = torch.from_numpy(ph.fov)[None, None].float()
    assert shading_term(img, img, fov).item() == 0.0
    pinker = img.clone()
    pinker[:, 1] *= 0.8  # less green: the colour drift of a fine-tune without the term
    assert shading_term(pinker * fov, img, fov).item() > 0.01
    lesions = torch.zeros_like(fov)
    lesions[..., 120:136, 120:136] = 1
    inside = img.clone()
    inside[..., 124:132, 124:132] = 0  # a dark lesion placed there: the synthesis must differ there
    assert shading_term(inside, img, fov, lesions).item() == 0.0
    assert shading_term(inside, img, fov).item() > 0.0


@pytest.mark.real_data
def test_local_training_uses_training_eyes_only_checkpoints_and_resumes(tmp_path):
    """A few steps on EyePACS: grade-0 training photos as hosts, the bank's source eyes from the training
    split, a checkpoint that resumes to the same step count, the exported weights load as local mode."""
    from koch_explore.data.roots import resolve_data_root
    from koch_explore.synthesis.local_train import LocalTrainConfig, train_local

    root = resolve_data_root()
    if root is None or not (root / "EyePACS").is_dir():
        pytest.skip("EyePACS not available (set KOCH_DATA)")
    cfg = LocalTrainConfig(out=str(tmp_path / "run"), steps=2, hosts=8, bank_images=8, batch_size=2, max_lesions=2,
                           sample_every=0, num_threads=2)
    first = train_local(cfg, progress=False)
    assert first["step"] == 2 and np.isfinite(list(first["losses"].values())).all()
    bank = ke.load_bank(str(tmp_path / "run" / "bank.safetensors"))
    train_names = set(ke.graded_eyes("train", 256, aptos=False).names)
    assert len(bank) and {d.source for d in bank} <= train_names
    ckpt = (tmp_path / "run" / "last.pt").read_bytes()
    again = train_local(LocalTrainConfig(**{**cfg.__dict__, "steps": 3}), resume=True, progress=False)
    assert again["step"] == 3 and (tmp_path / "run" / "last.pt").read_bytes() != ckpt
    synth = ke.load_synthesizer(str(tmp_path / "run" / "local_generator.safetensors"))
    assert synth.mode == "local" and synth.metadata.get("steps") == "3"
    with pytest.raises(ValueError, match="another configuration"):
        train_local(LocalTrainConfig(**{**cfg.__dict__, "steps": 4, "lr_g": 1e-3}), resume=True, progress=False)


def test_synth_eval_in_local_mode_reports_the_lesion_figures_without_the_healthy_ones():
    run = subprocess.run([sys.executable, "-m", "koch_explore", "synth", "eval", "--mode", "local", "--hosts", "embedded",
                          "--lesion-eyes", "0", "--json"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rep = json.loads(run.stdout)
    assert rep["mode"] == "local" and rep["n_hosts"] == 12 and "vessel_dice" not in rep and "stripe_energy_ratio" not in rep
    sev = rep["severity_by_count"]
    assert sev["16"] > sev["0"]


def test_a_missing_host_folder_or_a_phantom_local_run_is_one_line(capsys):
    from koch_explore.cli import main

    assert main(["koch-test", "--data", "embedded", "--hosts", "/no/such/folder", "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hosts '/no/such/folder'" in err and "folder (or file) of healthy photos" in err
    assert main(["koch-test", "--data", "phantom", "--mode", "local", "--trials", "1"]) == 2
    assert "not phantom" in capsys.readouterr().err
