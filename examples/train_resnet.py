"""Train the ResNet-style grader of ``examples/resnet_dr.py`` on EyePACS-256 (+ APTOS), on 2 CPU cores.

This is the "bring your own model" side of the kit: a model that knows nothing of koch_explore,
trained with cross-entropy over the five grades, then audited with the Koch test::

    python examples/train_resnet.py --out runs/resnet --max-minutes 55
    koch-explore koch-test --model examples/resnet_dr.py:resnet_dr --weights runs/resnet/best.safetensors --data real

(the adapter's options, ImageNet normalisation and a softmax over the grades, are stored in the
weights' header, so the audit needs no flags).

The eyes, split (patient-disjoint, the detector's own split) and augmentation are the kit's, so the
validation figures compare with the shipped detector's. ``last.pt`` is written atomically each
epoch (by the kit's training loop, :class:`koch_explore.core.training.TrainingLoop`) and ``--resume``
continues from it; the best EMA weights go to ``best.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from resnet_dr import IMAGENET_MEAN, IMAGENET_STD, resnet_dr  # noqa: E402

from koch_explore import adapt  # noqa: E402
from koch_explore.core.training import EMA, TrainingLoop  # noqa: E402
from koch_explore.data.graded import load_graded  # noqa: E402
from koch_explore.detect.predict import evaluate_split, to_tensor  # noqa: E402
from koch_explore.detect.train import (  # noqa: E402
    TrainConfig,
    augment,
    lr_at,
    sampling_probabilities,
)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/resnet", help="run folder: last.pt, best.safetensors, history.json")
    p.add_argument("--root", default=None, help="data root (default: KOCH_DATA, ../shared/data, ./data)")
    p.add_argument("--epochs", type=int, default=26)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-minutes", type=float, default=55.0, help="stop cleanly (checkpoint written) after this many minutes of training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    args = p.parse_args(argv)

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    # The detector's data settings (split, class-balance annealing): the same validation eyes.
    cfg = replace(TrainConfig(), root=args.root, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                  seed=args.seed, balance_epochs=10.0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu")
    amp = True  # bf16 autocast: native on this CPU (AMX), 0.35 s per batch of 32 against 0.9 s

    data = load_graded(cfg, 256)
    train_arr = data["train"]
    model = resnet_dr().to(memory_format=torch.channels_last)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    ema = EMA(model, 0.998)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    gen = torch.Generator()
    steps_per_epoch = len(train_arr.grades) // args.batch_size
    # the kit's training loop: atomic last.pt, --resume, the time limit, progress
    config = {k: v for k, v in vars(args).items() if k != "resume"}
    loop = TrainingLoop(out, config, {"model": model, "ema": ema, "opt": opt, "gen": gen},
                        steps=steps_per_epoch * args.epochs, max_minutes=args.max_minutes, desc="resnet", show=("loss",))
    loop.state.update(history=[], best={"score": -1.0}, epoch_losses=[])
    if args.resume:
        loop.resume()
    plan: dict = {}

    def step(i: int) -> dict:
        epoch, within = divmod(i, steps_per_epoch)
        if plan.get("epoch") != epoch:  # each epoch draws its eyes from its own class weights
            rng = np.random.default_rng([args.seed, epoch])
            plan.update(epoch=epoch, idx=rng.choice(len(train_arr.grades), size=steps_per_epoch * args.batch_size,
                                                    p=sampling_probabilities(train_arr.grades, epoch, cfg)))
            if within == 0:
                gen.manual_seed(args.seed * 7919 + epoch)
            model.train()
        batch = plan["idx"][within * args.batch_size:(within + 1) * args.batch_size]
        x = (augment(to_tensor(train_arr.images[batch], device), gen) - mean) / std
        y = torch.from_numpy(train_arr.grades[batch]).long()
        for g in opt.param_groups:
            g["lr"] = lr_at(i, loop.steps, steps_per_epoch, args.lr)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(model, i)
        return {"loss": loss.item()}

    def end_of_epoch(i: int, record: dict) -> None:
        state = loop.state
        state["epoch_losses"].append(record["loss"])
        if i % steps_per_epoch:
            return
        epoch = i // steps_per_epoch
        shadow = resnet_dr()
        shadow.load_state_dict(ema.state_dict())
        graded = adapt(shadow, mean=IMAGENET_MEAN, std=IMAGENET_STD, output="softmax")
        rep, _ = evaluate_split(graded, data["val"], device, False, amp)
        aptos, _ = evaluate_split(graded, data["aptos_val"], device, False, amp)
        rec = {"epoch": epoch, "loss": float(np.mean(state["epoch_losses"])), "minutes": loop.total_minutes(),
               "val": {k: rep[k] for k in ("n", "qwk", "qwk_split_half", "auc_referable")},
               "aptos_val": {k: aptos[k] for k in ("n", "qwk", "auc_referable")}}
        state["history"].append(rec)
        state["epoch_losses"] = []
        score = rep["qwk_split_half"] + 0.5 * rep["auc_referable"]
        mark = ""
        if score > state["best"]["score"]:
            state["best"] = {"score": score, **rec}
            # the adapter's options travel in the header: `--model ... --weights best.safetensors` needs no flags
            graded.save(out / "best.safetensors", metadata={"factory": "examples/resnet_dr.py:resnet_dr", "val": state["best"]})
            mark = "  * best"
        print(f"epoch {epoch} ({rec['minutes']:.1f} min): loss {rec['loss']:.3f} val qwk {rep['qwk']:.3f} "
              f"(split-half {rep['qwk_split_half']:.3f}) auc {rep['auc_referable']:.3f} | aptos qwk {aptos['qwk']:.3f}{mark}",
              flush=True)
        (out / "history.json").write_text(json.dumps(state["history"], indent=1))
        loop.checkpoint()

    loop.run(step, after_step=end_of_epoch)
    return loop.state["best"]

if __name__ == "__main__":
    main()
