"""The one training loop (koch_explore.core.training): a run stopped by its callback and resumed ends with the
same weights, EMA and draws as one run straight through; another configuration is refused; checkpoints written
before the loop (the trainer's state at the top level) still resume."""

import pytest
import torch

from koch_explore.core.runtime import atomic_torch_save
from koch_explore.core.training import EMA, TrainingLoop, read_checkpoint

CONFIG = {"lr": 0.1, "steps": 6, "seed": 0}


def _run(out, steps=6, callback=None, resume=False, config=CONFIG):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    ema = EMA(net, 0.9)
    opt = torch.optim.SGD(net.parameters(), lr=config["lr"])
    gen = torch.Generator().manual_seed(1)  # the data's draws: restored on resume, not drawn again
    loop = TrainingLoop(out, config, {"net": net, "ema": ema, "opt": opt, "gen": gen}, steps=steps, callback=callback,
                        progress=False)
    loop.state.update(history=[])
    if resume:
        loop.resume()

    def step(i):
        x = torch.randn(4, 3, generator=gen)
        loss = net(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(net, i)
        loop.state["history"].append(i)
        return {"loss": loss.item()}

    loop.run(step)
    return loop, net, ema


def test_a_stopped_and_resumed_run_equals_one_run_straight_through(tmp_path):
    _, straight, straight_ema = _run(tmp_path / "a")
    loop, _, _ = _run(tmp_path / "b", callback=lambda step, record: step < 2)
    assert loop.stopped == "callback" and read_checkpoint(tmp_path / "b" / "last.pt")["step"] == 2
    loop, resumed, resumed_ema = _run(tmp_path / "b", resume=True)
    assert loop.step == 6 and loop.stopped is None and loop.state["history"] == [0, 1, 2, 3, 4, 5]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(straight_ema.state_dict().values(), resumed_ema.state_dict().values()):
        assert torch.equal(a, b)


def test_a_time_limit_stops_and_checkpoints(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    loop = TrainingLoop(tmp_path, CONFIG, {"net": net}, steps=10 ** 6, max_minutes=1e-6, progress=False)
    assert loop.run(lambda i: {"loss": 0.0}) == "time limit"
    assert 1 <= read_checkpoint(tmp_path / "last.pt")["step"] < 10 ** 6


def test_resume_under_another_configuration_is_refused(tmp_path):
    _run(tmp_path, steps=2)
    with pytest.raises(ValueError, match=r"another configuration \(lr 0.1 -> 0.2\)"):
        _run(tmp_path, resume=True, config={**CONFIG, "lr": 0.2})
    _run(tmp_path, resume=True, config={**CONFIG, "steps": 8})  # how long it runs may change


def test_a_checkpoint_written_before_the_loop_resumes(tmp_path):
    net = torch.nn.Linear(3, 1)
    atomic_torch_save({"net": net.state_dict(), "step": 4, "history": "[1, 2]", "config": CONFIG}, tmp_path / "last.pt")
    loop = TrainingLoop(tmp_path, CONFIG, {"net": torch.nn.Linear(3, 1)}, steps=4, progress=False)
    loop.state.update(history=[])
    assert loop.resume() and loop.step == 4 and loop.state["history"] == [1, 2]
    assert torch.equal(loop.parts["net"].weight, net.weight)
