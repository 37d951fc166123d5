"""Short reference runs of the four trainers (detector, vessel segmenter, whole-fundus and local synthesizer) and of
a Koch-zoo member's fine-tune: per-step losses and a checksum of the weights each run ends with; and the outputs
of every shipped model on fixed inputs (so a change of how weights are saved and loaded shows). Recorded before the trainers move onto one
training loop (issue 43), so the refactor can show it reproduces them.

::

    OMP_NUM_THREADS=1 python benchmarks/trainer_reference.py record --out benchmarks/trainer_reference.json
    OMP_NUM_THREADS=1 python benchmarks/trainer_reference.py check --against benchmarks/trainer_reference.json

``benchmarks/trainer_reference.json`` holds the runs recorded before the refactor (torch 2.13.0+cpu, this
project's 2-core CPU machine, the data root at ../shared/data).

One thread, fixed seeds, 24 steps each, on phantoms where a trainer takes them (the detector, the
whole-fundus synthesizer) and on the data root's DRIVE / EyePACS where it does not (the vessel segmenter, the
local synthesizer: skipped without them). ``check`` prints, per trainer, the largest relative difference of
the losses and whether the checksums agree (bit-identical CPU runs give identical checksums; a refactor that
reorders float operations gives close losses and another checksum).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

STEPS = 24


def tensors_sha256(state: dict) -> str:
    """sha256 over a state dict's names, shapes and float values (sorted by name)."""
    h = hashlib.sha256()
    for k, v in sorted(state.items()):
        if not torch.is_tensor(v):
            continue
        t = v.detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.float().numpy().tobytes())
    return h.hexdigest()


def run_detector(work: Path) -> dict:
    from koch_explore.detect.train import TrainConfig, train

    losses = []
    cfg = TrainConfig(data="phantom", phantom_count=160, batch_size=4, epochs=1, amp=False, num_threads=1,
                      checkpoint_minutes=1e9, out=str(work / "detector"), device="cpu")
    train(cfg, callback=lambda step, rec: losses.append(rec["loss"]) or step < STEPS)
    state = torch.load(work / "detector" / "last.pt", map_location="cpu", weights_only=True)
    return {"losses": losses, "weights_sha256": tensors_sha256(state["model"]), "ema_sha256": tensors_sha256(state["ema"])}


def run_vessels(work: Path) -> dict | None:
    from koch_explore.data.roots import resolve_data_root
    from koch_explore.vessels.train import VesselTrainConfig, train

    root = resolve_data_root()
    if root is None or not (root / "DRIVE").is_dir():
        return None
    cfg = VesselTrainConfig(steps=STEPS, eval_every=STEPS, batch_size=4, out=str(work / "vessels"), num_threads=1, device="cpu")
    res = train(cfg, progress_bar=False)
    state = torch.load(work / "vessels" / "last.pt", map_location="cpu", weights_only=True)
    return {"losses": [float(x) for x in res["losses"]], "weights_sha256": tensors_sha256(state["model"]),
            "ema_sha256": tensors_sha256(state["ema"])}


def run_whole_synth(work: Path) -> dict:
    from koch_explore.core.weights import resolve_weights
    from koch_explore.synthesis.trainer import SynthTrainConfig, train

    records = []
    cfg = SynthTrainConfig(data="phantom", steps=STEPS, batch_size=1, max_lesions=2, bank=str(resolve_weights("bank", "phantom")),
                           out=str(work / "synth"), sample_every=0, checkpoint_minutes=1e9, num_threads=1, device="cpu")
    train(cfg, progress=False, callback=lambda step, rec, ema: records.append(rec) or True)
    state = torch.load(work / "synth" / "last.pt", map_location="cpu", weights_only=True)
    return {"losses": [r.get("g", r.get("d")) for r in records], "d_losses": [r.get("d") for r in records],
            "weights_sha256": tensors_sha256(state["G"]), "ema_sha256": tensors_sha256(state["ema"])}


def run_local_synth(work: Path) -> dict | None:
    from koch_explore.core.weights import resolve_weights
    from koch_explore.data.roots import resolve_data_root
    from koch_explore.synthesis.local_train import LocalTrainConfig, train_local

    root = resolve_data_root()
    if root is None or not (root / "EyePACS").is_dir():
        return None
    records = []
    cfg = LocalTrainConfig(steps=STEPS, bank=str(resolve_weights("bank", "local")), out=str(work / "local"),
                           sample_every=0, checkpoint_minutes=1e9, num_threads=1, device="cpu")
    train_local(cfg, progress=False, callback=lambda step, rec, ema: records.append(rec) or True)
    state = torch.load(work / "local" / "last.pt", map_location="cpu", weights_only=True)
    return {"losses": [r.get("g", r.get("d")) for r in records], "d_losses": [r.get("d") for r in records],
            "weights_sha256": tensors_sha256(state["G"]), "ema_sha256": tensors_sha256(state["ema"])}


def run_fine_tune(work: Path) -> dict:
    """A Koch-zoo member's training (:func:`~koch_explore.detect.adapter.fine_tune`, the known-answer models)."""
    from koch_explore.data.phantom import generate_phantom
    from koch_explore.detect.adapter import fine_tune
    from koch_explore.koch.zoo import Member

    member = Member("lesion-driven", "resnet", seed=3)
    phantoms = [generate_phantom(s, size=128, grade=s % 5) for s in range(40)]
    images = np.stack([(np.clip(p.image, 0, 1) * 255 + 0.5).astype(np.uint8) for p in phantoms])
    torch.manual_seed(member.seed)
    model = member.adapt()
    losses = fine_tune(model, images, np.array([p.grade for p in phantoms]), steps=STEPS, batch_size=8, seed=member.seed,
                       progress=False)
    return {"losses": [float(v) for v in losses], "weights_sha256": tensors_sha256(model.state_dict())}


def shipped_outputs() -> dict:
    """Each shipped model loaded and run on fixed inputs (two phantoms; a layout drawn from each synthesizer's
    own bank): the outputs' checksums and sums, so a change of how weights are saved or loaded shows."""
    from koch_explore.core.weights import SHIPPED
    from koch_explore.culture import load_bank
    from koch_explore.data.phantom import generate_phantom
    from koch_explore.detect.model import load_detector
    from koch_explore.synthesis.synthesizer import load_synthesizer, random_layout
    from koch_explore.vessels import load_vessels

    phantoms = [generate_phantom(s, size=256, grade=g) for s, g in ((11, 0), (12, 3))]
    x = torch.from_numpy(np.stack([np.clip(p.image, 0, 1) for p in phantoms]).astype(np.float32)).permute(0, 3, 1, 2).contiguous()
    out = {}

    def note(name, t):
        t = torch.as_tensor(np.asarray(t)).double()
        out[name] = {"sha256": hashlib.sha256(t.float().numpy().tobytes()).hexdigest(), "sum": float(t.sum()),
                     "abs_sum": float(t.abs().sum())}

    with torch.no_grad():
        for name in SHIPPED["detector"]:
            note(f"detector/{name}", load_detector(name)(x))
        for name in SHIPPED["vessels"]:
            note(f"vessels/{name}", load_vessels(name).segment(phantoms[0].image, phantoms[0].fov, tta=1)[0])
        host = {"image": np.clip(phantoms[0].image, 0, 1).astype(np.float32), "fov": phantoms[0].fov.astype(bool),
                "vessels": phantoms[0].vessels.astype(np.float32), "name": "phantom_11"}
        for name in SHIPPED["synthesizer"]:
            synth, bank = load_synthesizer(name), load_bank(name)
            layout = random_layout(bank, 4, host["fov"], seed=5)
            note(f"synthesizer/{name}", synth.synthesize_host(host, layout, seed=3))
    return out


TRAINERS = {"detector": run_detector, "vessels": run_vessels, "whole_synth": run_whole_synth, "local_synth": run_local_synth,
            "zoo_member": run_fine_tune}


def record(names) -> dict:
    torch.set_num_threads(1)
    out = {"torch": torch.__version__, "steps": STEPS, "trainers": {}, "shipped": shipped_outputs()}
    with tempfile.TemporaryDirectory(prefix="koch-ref-") as tmp:
        for name in names:
            res = TRAINERS[name](Path(tmp))
            out["trainers"][name] = res
            print(f"{name}: " + ("skipped (its data is not under the data root)" if res is None else
                                 f"{len(res['losses'])} steps, last loss {res['losses'][-1]}, weights {res['weights_sha256'][:12]}"),
                  flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("record", "check"))
    ap.add_argument("--out", default="runs/trainer_reference.json", help="record: where the JSON goes")
    ap.add_argument("--against", default="benchmarks/trainer_reference.json", help="check: the recorded JSON")
    ap.add_argument("--only", nargs="*", default=list(TRAINERS), choices=list(TRAINERS))
    args = ap.parse_args()
    now = record(args.only)
    if args.step == "record":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(now, indent=1))
        print(f"written {args.out}")
        return
    before = json.loads(Path(args.against).read_text())
    for name, res in now["shipped"].items():
        ref = before.get("shipped", {}).get(name)
        if ref is None:
            print(f"shipped {name}: not recorded then")
            continue
        same = ref["sha256"] == res["sha256"]
        rel = abs(res["abs_sum"] - ref["abs_sum"]) / max(ref["abs_sum"], 1e-12)
        print(f"shipped {name}: output {'identical' if same else 'differs'} (relative difference of the absolute sum {rel:.1e})")
    for name, res in now["trainers"].items():
        ref = before["trainers"].get(name)
        if res is None or ref is None:
            print(f"{name}: not compared (skipped now or then)")
            continue
        a, b = np.asarray(ref["losses"], np.float64), np.asarray(res["losses"], np.float64)
        n = min(len(a), len(b))
        rel = float(np.max(np.abs(a[:n] - b[:n]) / np.maximum(np.abs(a[:n]), 1e-12))) if n else float("nan")
        print(f"{name}: {n} steps compared ({len(a)} then, {len(b)} now), largest relative loss difference {rel:.2e}, "
              f"weights {'identical' if ref['weights_sha256'] == res['weights_sha256'] else 'differ'}"
              + ("" if "ema_sha256" not in ref else f", EMA {'identical' if ref['ema_sha256'] == res['ema_sha256'] else 'differs'}"))


if __name__ == "__main__":
    main()
