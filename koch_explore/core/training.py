"""One training loop for every trainer of the kit: the detector, the vessel segmenter, the whole-fundus and the
local synthesizer, and the Koch zoo's known-answer models.

A trainer brings what only it knows: its networks and optimisers, its data, and one optimisation step. The
loop brings the rest, written once:

* **checkpoint**: ``out/last.pt`` holds every stateful part the trainer names (modules, optimisers, an
  :class:`EMA`, a ``torch.Generator``), the step, the minutes trained so far and the trainer's own JSON-able
  state (:attr:`TrainingLoop.state`: validation history, best score). It is written atomically every
  ``checkpoint_minutes`` and whenever the loop ends, for whatever reason;
* **resume**: :meth:`TrainingLoop.resume` reads it back and refuses one written under another configuration
  (:func:`~.runtime.check_resume_config` names each differing field);
* **one time limit**: ``max_minutes`` counts minutes of training in this invocation, from the loop's first
  step (validation inside the loop counts; reading data before it does not). At the limit the loop writes
  its checkpoint and returns; ``--resume`` continues;
* **stops agreed by every rank**: under ``torchrun`` rank 0 alone reads the clock and the callback, and its
  decision is broadcast after every step (:func:`~.runtime.agree_to_stop`), so no rank is left waiting in a
  collective that another has left;
* **progress and callbacks**: a ``tqdm`` bar on rank 0, and ``callback(step, record)`` on rank 0 after each
  step (returning ``False`` stops every rank cleanly: how a widget pauses).
"""

from __future__ import annotations

import copy
import json
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .runtime import (
    RESUMABLE_CHANGES,
    agree_to_stop,
    atomic_torch_save,
    check_resume_config,
)


class EMA:
    """Exponential moving average of a module's weights and buffers: a copy of the module, in eval mode, that
    the trainers validate, preview and ship instead of the raw weights (a GAN's generator and a regressor's
    validation figures both jump from step to step without it).

    With ``warmup`` the decay at step ``t`` is ``min(decay, (1 + t) / (10 + t))``: early on the average follows
    the weights closely, later it spans about ``1 / (1 - decay)`` steps. A fine-tune starts from trained
    weights and uses the plain ``decay`` (``warmup=False``): the warm-up would replace them by the first,
    noisiest steps. Floating-point tensors are averaged; integer buffers (BatchNorm's batch counter) copied.

    Not ``torch.optim.swa_utils.AveragedModel``: its first update copies the weights, so an average that
    starts from the initial weights (as every shipped model's did) cannot be written with it, and it averages
    integer buffers too."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.decay, self.warmup = float(decay), bool(warmup)
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move the average toward ``model``'s weights after optimisation step ``step`` (0 for the first)."""
        weight = 1 - self.decay_at(step)
        for mine, theirs in zip(self.module.state_dict().values(), model.state_dict().values()):
            if mine.is_floating_point():
                mine.lerp_(theirs.detach(), weight)
            else:
                mine.copy_(theirs)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)


class _GeneratorState:
    """A ``torch.Generator`` as a checkpoint part (its state is a uint8 tensor)."""

    def __init__(self, gen: torch.Generator):
        self.gen = gen

    def state_dict(self) -> torch.Tensor:
        return self.gen.get_state()

    def load_state_dict(self, state: torch.Tensor) -> None:
        self.gen.set_state(state)


class TrainingLoop:
    """The loop around a trainer's step (see the module's doc).

    ``out``: the run folder (``last.pt`` goes there; None: no checkpoint, for brief trainings in memory).
    ``config``: the run's configuration as JSON sees it, stored in the checkpoint and compared on resume
    (fields in ``may_change`` may differ). ``parts``: name -> anything with ``state_dict`` /
    ``load_state_dict`` (a ``torch.Generator`` is wrapped); the names are the checkpoint's keys.
    ``steps``: the planned number of steps (the bar's total; :meth:`run` ends there unless told otherwise).
    ``world``, ``rank``, ``device``: from :func:`~.runtime.setup_distributed` (defaults: one process).
    """

    def __init__(self, out: str | Path | None, config: dict, parts: dict[str, Any] | None = None, *, steps: int,
                 max_minutes: float | None = None, checkpoint_minutes: float = 5.0,
                 callback: Callable[[int, dict], bool | None] | None = None, progress: bool = True,
                 desc: str = "train", show: tuple[str, ...] = (), world: int = 1, rank: int = 0,
                 device: torch.device | str = "cpu", may_change=RESUMABLE_CHANGES):
        self.path = None if out is None else Path(out) / "last.pt"
        self.config = json.loads(json.dumps(config, default=str))
        self.parts: dict[str, Any] = {}
        self.add_parts(**(parts or {}))
        self.steps, self.max_minutes, self.checkpoint_minutes = int(steps), max_minutes, checkpoint_minutes
        self.callback, self.progress, self.desc, self.show = callback, progress, desc, tuple(show)
        self.world, self.rank, self.device, self.may_change = world, rank, device, may_change
        self.main = rank == 0
        self.step = 0
        self.state: dict[str, Any] = {}
        """The trainer's own state kept in the checkpoint (JSON-able: history, best score, ...)."""
        self.records: deque[dict] = deque(maxlen=50)
        """The last 50 steps' records (what :meth:`recent_means` averages)."""
        self.stopped: str | None = None
        """Why the last :meth:`run` ended early: "time limit", "callback", or None (it ran to the end)."""
        self.minutes_before = 0.0
        self._t0: float | None = None
        self._checkpoint: dict | None = None  # read by check_config(), so resume() does not read it again

    # -- time ---------------------------------------------------------------------------------------

    def minutes(self) -> float:
        """Minutes of training in this invocation (what ``max_minutes`` limits)."""
        return 0.0 if self._t0 is None else (time.time() - self._t0) / 60

    def total_minutes(self) -> float:
        """Minutes of training summed over this run's invocations (resumes included)."""
        return self.minutes_before + self.minutes()

    # -- checkpoint ---------------------------------------------------------------------------------

    def add_parts(self, **parts) -> None:
        """Name more stateful parts (for trainers that read their data before building their networks)."""
        self.parts.update({k: _GeneratorState(v) if isinstance(v, torch.Generator) else v for k, v in parts.items()})

    def check_config(self) -> None:
        """Refuse, before anything slow, to resume a ``last.pt`` written under another configuration (a no-op
        when there is none): ValueError naming each differing field."""
        if self.path is not None and self.path.is_file():
            self._checkpoint = torch.load(self.path, map_location="cpu", weights_only=True)  # kept for resume()
            check_resume_config(self.path, self._checkpoint.get("config"), self.config, self.may_change)

    def resume(self) -> bool:
        """Continue from ``last.pt`` when it exists: the configuration checked (ValueError naming what
        differs), every part restored, the step, the minutes and :attr:`state` set. Returns whether it
        resumed. Call it after the parts are built and before :meth:`run`, on every rank."""
        if self.path is None or not self.path.is_file():
            return False
        ck = self._checkpoint if self._checkpoint is not None else torch.load(self.path, map_location="cpu", weights_only=True)
        self._checkpoint = None
        check_resume_config(self.path, ck.get("config"), self.config, self.may_change)
        present = [k for k in self.parts if k in ck]  # a part added since (a generator's state) starts afresh
        if not present:
            raise ValueError(f"{self.path}: checkpoint holds none of {', '.join(self.parts)}: it belongs to another trainer")
        for k in present:
            self.parts[k].load_state_dict(ck[k])
        self.step, self.minutes_before = int(ck["step"]), float(ck.get("minutes", 0.0))
        # the trainer's state; checkpoints written before this loop kept each entry at the top level
        saved = json.loads(ck["state"]) if "state" in ck else {k: ck[k] for k in self.state if k in ck}
        self.state.update({k: json.loads(v) if isinstance(v, str) else v for k, v in saved.items()})
        if self.main:
            print(f"resumed from {self.path}: step {self.step}, {self.minutes_before:.1f} min trained", flush=True)
        return True

    def checkpoint(self) -> None:
        """Write ``last.pt`` atomically (rank 0 only; nothing without a run folder)."""
        if self.path is None or not self.main:
            return
        ck = {k: part.state_dict() for k, part in self.parts.items()}
        ck.update(step=self.step, minutes=self.total_minutes(), config=json.dumps(self.config),
                  state=json.dumps(self.state, default=str))
        atomic_torch_save(ck, self.path)

    # -- the loop -----------------------------------------------------------------------------------

    def run(self, train_step: Callable[[int], dict], *, until: Callable[[int], bool] | None = None,
            after_step: Callable[[int, dict], None] | None = None) -> str | None:
        """Call ``train_step(step)`` (one optimisation step, ``step`` counted from 0; returns a record of floats)
        until ``until(step)`` holds (default: ``step >= steps``), the time limit passes or the callback says
        stop. After each step: ``after_step(step, record)`` (the trainer's validation, previews; on every rank,
        the trainer decides which does what), a checkpoint when ``checkpoint_minutes`` have passed, then the
        stop decision, agreed by every rank. Ends with a checkpoint. Returns :attr:`stopped`."""
        from tqdm.auto import tqdm

        until = until or (lambda step: step >= self.steps)
        self._t0 = last_checkpoint = time.time()
        self.stopped = None
        bar = tqdm(total=self.steps, initial=self.step, desc=self.desc, disable=not (self.main and self.progress),
                   mininterval=5)
        while not until(self.step):
            record = train_step(self.step)
            self.step += 1
            record = {**record, "step": self.step}
            self.records.append(record)
            if self.main:
                bar.update(1)
                if self.show:
                    means = self.recent_means()
                    bar.set_postfix({k: f"{means[k]:.3f}" for k in self.show if k in means}, refresh=False)
            if after_step is not None:
                after_step(self.step, record)
            if self.main and time.time() - last_checkpoint > self.checkpoint_minutes * 60:
                self.checkpoint()
                last_checkpoint = time.time()
            time_up = self.max_minutes is not None and self.minutes() > self.max_minutes
            halt = self.main and self.callback is not None and self.callback(self.step, record) is False
            if agree_to_stop(time_up or halt, self.world, self.device):  # rank 0's clock and callback decide
                self.stopped = "callback" if halt else "time limit" if self.main else "rank 0"
                break
        bar.close()
        self.checkpoint()
        if self.stopped and self.main and self.path is not None:
            print(f"stopped by the {self.stopped} at step {self.step}; --resume continues", flush=True)
        return self.stopped

    def recent_means(self) -> dict[str, float]:
        """Each loss's mean over the last (up to) 50 steps."""
        keys = {k for r in self.records for k, v in r.items() if k != "step" and isinstance(v, (int, float))}
        return {k: sum(r[k] for r in self.records if k in r) / sum(1 for r in self.records if k in r) for k in sorted(keys)}


def read_checkpoint(path: str | Path) -> dict:
    """What a ``last.pt`` says of its run, without its tensors: ``step``, ``minutes`` (trained so far, resumes
    included), ``config`` and the trainer's state (``history``, ``best``, ...) as plain values."""
    ck = torch.load(Path(path), map_location="cpu", weights_only=True)
    config = ck.get("config")
    info = {"step": int(ck["step"]), "minutes": float(ck.get("minutes", 0.0)),
            "config": json.loads(config) if isinstance(config, str) else config}
    info.update(json.loads(ck["state"]) if "state" in ck else {})
    return info
