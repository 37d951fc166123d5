"""``SynthTrainer``: train the lesion synthesizer in the background from a notebook.

Start (from ``config.init``, or from scratch), pause (a clean stop: checkpoint + exported EMA
generator), resume (from the checkpoint, on the device chosen now), and "retrain on this layout":
fine-tune the current generator on the descriptors a :class:`~koch_explore.widgets.DescriptorPlacer`
has placed, in a new run folder. The step counter moves every step; the loss curves and the EMA
generator's drawing of the placer's layout refresh every ``preview_every`` steps. The loop is
:func:`koch_explore.synthesis.trainer.train` itself, run in one worker thread; its callback is how
the widget sees progress and asks it to stop. The cell that shows the widget returns at once: the
buttons act on a run that is still going.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np

from koch_explore.synthesis.trainer import SynthTrainConfig, train

from ._render import (
    close_widgets,
    encode,
    figure_png,
    new_figure,
    plain_text,
    snapshot_panels,
    to_uint8,
)

__all__ = ["SynthTrainer"]

LOSSES = ("g", "d", "adv", "detail", "path", "style", "vessel")
"""The loss records drawn as curves (``train``'s history keys)."""


class SynthTrainer:
    """Plain-Python API: :meth:`start`, :meth:`pause`, :meth:`resume`, :meth:`wait`,
    :meth:`retrain_on_layout`, :meth:`retrain_on`, :meth:`set_device`, :meth:`synthesizer`,
    :meth:`snapshot`, :attr:`history`, :attr:`step`, :attr:`state`, :attr:`running`, :meth:`close`.

    ``placer``: a :class:`~koch_explore.widgets.DescriptorPlacer` whose host and current layout the
    preview draws and whose layout "retrain on this layout" trains on. Without one, ``preview_host``
    ({"vessels", "fov"}) and ``preview_layout`` (a placed bank) give the preview.
    """

    def __init__(self, config: SynthTrainConfig, preview_host: dict | None = None, preview_layout=None,
                 preview_every: int = 25, placer=None):
        import ipywidgets as W
        import torch

        self.config, self.placer = config, placer
        if preview_host is None and placer is not None:
            preview_host = {"vessels": placer.vessels, "fov": placer.fov}
        self.preview_host, self.preview_layout, self.preview_every = preview_host, preview_layout, preview_every
        self.history: list[dict] = []
        self.step = 0
        self.state = "not started"
        self.result: dict | None = None
        self.error: BaseException | None = None
        self.trained_layout = None
        """The placed bank the last :meth:`retrain_on_layout` trained on."""
        self.preview_image: np.ndarray | None = None
        self._ema = None
        self._base_out, self._retrains, self._device_used = Path(config.out), 0, None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The worker thread (each step) and the main thread (buttons, observers) both redraw the status,
        # curves and preview: one lock makes each redraw whole.
        self._ui = threading.RLock()

        devices = ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        if config.device not in devices:
            devices.append(config.device)
        self.device_dropdown = W.Dropdown(options=devices, value=config.device, description="device",
                                          layout=W.Layout(width="180px"))
        self.steps_box = W.BoundedIntText(value=config.steps, min=1, max=10_000_000, description="steps",
                                          layout=W.Layout(width="180px"))
        self.start_button = W.Button(description="start", button_style="success",
                                     tooltip="train from the start weights into the run folder (a fresh run)")
        self.pause_button = W.Button(description="pause", tooltip="stop after this step: checkpoint and exported generator")
        self.resume_button = W.Button(description="resume", tooltip="continue the run folder's checkpoint up to 'steps'")
        self.retrain_button = W.Button(description="retrain on this layout", button_style="warning", disabled=placer is None,
                                       layout=W.Layout(width="auto"),
                                       tooltip="fine-tune the current generator on the lesions placed above (a new run folder)")
        self.status = W.HTML()
        self.curves = W.Image(format="png", layout=W.Layout(width="420px", height="260px"))  # new_figure(4.2, 2.6)
        self.sample = W.Image(format="png", layout=W.Layout(width="256px", height="256px"))
        self.start_button.on_click(lambda _b: self.start())
        self.pause_button.on_click(lambda _b: self.pause())
        self.resume_button.on_click(lambda _b: self.resume())
        self.retrain_button.on_click(lambda _b: self.retrain_on_layout())
        self.device_dropdown.observe(self._on_device, names="value")
        self.steps_box.observe(self._on_steps, names="value")
        self._rows = [W.HBox([self.start_button, self.pause_button, self.resume_button, self.retrain_button]),
                      W.HBox([self.device_dropdown, self.steps_box]), self.status, W.HBox([self.curves, self.sample])]
        self.widget = W.VBox(self._rows)
        self._draw(None)  # empty axes: the picture is there before the first step

    # -- API -----------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, resume: bool = False) -> bool:
        """Train in the background until ``config.steps``: a fresh run from ``config.init`` (or from
        scratch), or with ``resume`` from the run folder's checkpoint. Returns at once: True when a run
        started, False (and the status line says why) when one is already running."""
        if self.running:
            with self._ui:
                self.status.value = (f"already running (step {self.step} of {self.config.steps}): pause it first, "
                                     "then start or resume")
            return False
        self._stop.clear()
        self.error, self.state = None, "starting"
        if not resume:
            self.history, self.step, self.result, self._ema = [], 0, None, None
        self._device_used = self.config.device
        self._thread = threading.Thread(target=self._run, args=(self.config, resume), name="koch-synth-trainer", daemon=True)
        self._thread.start()
        self._status()
        return True

    def pause(self, timeout: float | None = None) -> None:
        """Ask the loop to stop after its current step; it checkpoints and exports on the way out."""
        self._stop.set()
        self.wait(timeout)

    def resume(self) -> None:
        """Continue from the run folder's checkpoint (up to ``config.steps``, on the chosen device)."""
        self.start(resume=True)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the run stops; raise if it failed."""
        self._join(timeout)
        if self.error is not None:
            raise RuntimeError(f"synthesizer training failed: {self.error}") from self.error

    def set_device(self, name: str) -> None:
        """"auto" (CUDA when present), "cpu" or "cuda": used from the next start, resume or retrain."""
        if name not in self.device_dropdown.options:
            raise ValueError(f"device {name!r}: one of {', '.join(self.device_dropdown.options)}")
        self.device_dropdown.value = name  # the observer updates the config

    def retrain_on_layout(self, steps: int | None = None) -> Path:
        """What the "retrain on this layout" button does: save the placer's layout (or, with nothing
        placed, the descriptors it places from) as a bank and fine-tune the current generator on it for
        ``steps`` (default: the steps box) in a new run folder ``<out>_layout<k>``; returns the bank file."""
        if self.placer is None:
            raise ValueError("no placer to take a layout from: give SynthTrainer(placer=...) or call retrain_on(bank_file, steps)")
        layout = self.placer.layout if len(self.placer.layout) else self.placer.bank.select(indices=self.placer.selected)
        self._retrains += 1
        out = self._base_out.with_name(f"{self._base_out.name}_layout{self._retrains}")
        out.mkdir(parents=True, exist_ok=True)
        bank_file = layout.save(out / "layout_bank.safetensors")
        self.trained_layout = layout
        self.retrain_on(bank_file, int(steps or self.steps_box.value), out, max_lesions=len(layout))
        return Path(bank_file)

    def retrain_on(self, bank_path: str | Path, steps: int, out: str | Path | None = None, max_lesions: int | None = None) -> None:
        """Fine-tune the current generator (this widget's last export, else ``config.init``) with only
        the descriptors in ``bank_path`` (e.g. lesions picked by hand) for ``steps`` steps, in a new run
        folder (default ``<out>_layout<k>``), from a fresh start."""
        self._stop.set()
        self._join()
        generator = Path(self.config.out) / "generator.safetensors"
        init = str(generator) if generator.exists() and (self.result is not None or self.step > 0) else self.config.init
        if out is None:
            self._retrains += 1
            out = self._base_out.with_name(f"{self._base_out.name}_layout{self._retrains}")
        changes = dict(bank=str(bank_path), init=init, out=str(out), steps=int(steps))
        if max_lesions:
            changes["max_lesions"] = int(max_lesions)
        self.config = dataclasses.replace(self.config, **changes)
        self.steps_box.value = int(steps)
        self.start(resume=False)

    def synthesizer(self):
        """The generator this widget last exported (``<run folder>/generator.safetensors``) as a
        :class:`~koch_explore.synthesis.synthesizer.LesionSynthesizer`."""
        from koch_explore.synthesis.synthesizer import load_synthesizer

        path = Path(self.config.out) / "generator.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: nothing exported yet (start, or retrain on a layout, first)")
        return load_synthesizer(path)

    def snapshot(self):
        """The widget's current state as a matplotlib ``Figure``: loss curves, the last preview and the
        status line (step counter, device, run folder)."""
        panels = [{"draw": self._plot_curves, "title": "losses (smoothed)"}]
        if self.preview_image is not None:
            panels.append({"image": self.preview_image, "title": "EMA generator on the layout",
                           "boxes": [d.bbox for d in self._layout() or []]})
        return snapshot_panels(panels, plain_text(self.status.value), panel_size=3.8)

    def close(self, timeout: float = 60.0) -> bool:
        """Stop the run (it checkpoints on the way out), wait up to ``timeout`` seconds for it, and release
        the widgets. Returns False when the run was still finishing its step after ``timeout`` (it stops by
        itself, its thread is a daemon; nothing saved is lost)."""
        self._stop.set()
        self._join(timeout)
        stopped = not self.running
        self._ema = None
        for b in (self.start_button, self.pause_button, self.resume_button, self.retrain_button):
            b._click_handlers.callbacks.clear()
        self.device_dropdown.unobserve(self._on_device, names="value")
        self.steps_box.unobserve(self._on_steps, names="value")
        close_widgets(self.widget, *self._rows, self.start_button, self.pause_button, self.resume_button, self.retrain_button,
                      self.device_dropdown, self.steps_box, self.status, self.curves, self.sample)
        return stopped

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # -- internals -----------------------------------------------------------------------------

    def _join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
        self._status()

    def _run(self, cfg: SynthTrainConfig, resume: bool) -> None:
        import torch

        # train() sets torch's thread count and seeds its global generator: kernel-wide settings, put back
        # when the run ends so the notebook's next cells run as they would have without the widget
        threads, rng = torch.get_num_threads(), torch.get_rng_state()
        try:
            self.result = train(cfg, resume=resume, progress=False, callback=self._callback)
            self.state = "finished" if self.result["step"] >= cfg.steps else "paused"
        except BaseException as exc:  # shown in the widget and re-raised by wait()
            self.error, self.state = exc, "failed"
        finally:
            torch.set_num_threads(threads)
            torch.set_rng_state(rng)
            if self._ema is not None:
                self._draw(self._ema)  # the last picture is the final state
            self._status()

    def _callback(self, step: int, record: dict, ema) -> bool:
        self.step, self._ema, self.state = step, ema, "running"
        self.history.append(record)
        if self.preview_every and step % self.preview_every == 0:
            self._draw(ema)
        else:
            self._status()
        return not self._stop.is_set()

    def _on_device(self, change) -> None:
        self.config.device = change["new"]
        self._status()

    def _on_steps(self, change) -> None:
        self.config.steps = int(change["new"])  # a running loop reads it: raising it extends the run
        self._status()

    def _layout(self):
        if self.placer is not None:
            return self.placer.layout if len(self.placer.layout) else None
        return self.preview_layout

    def _plot_curves(self, ax) -> None:
        from matplotlib.ticker import MaxNLocator

        drawn = 0
        for k in LOSSES:
            # > 0 only: a log axis, and "path" is 0 on the steps that placed no lesion
            pts = np.array([(r["step"], r[k]) for r in self.history if r.get(k, 0) > 0 and "step" in r], np.float64)
            if not len(pts):
                continue
            w = max(1, len(pts) // 50)
            ax.plot(pts[w - 1:, 0], np.convolve(pts[:, 1], np.ones(w) / w, mode="valid"), label=k, lw=1,
                    marker="." if len(pts) < 20 else None)
            drawn += 1
        ax.set_xlabel("step", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        if drawn:
            ax.set_yscale("log")
            ax.legend(fontsize=6, ncol=2)
        else:
            ax.text(0.5, 0.5, "no step yet", ha="center", va="center", transform=ax.transAxes, fontsize=9)

    def _draw(self, ema) -> None:
        with self._ui:
            self._draw_locked(ema)

    def _draw_locked(self, ema) -> None:
        import cv2

        fig = new_figure(4.2, 2.6)
        ax = fig.add_subplot(1, 1, 1)
        self._plot_curves(ax)
        fig.tight_layout()
        self.curves.value = figure_png(fig)
        if ema is not None and self.preview_host is not None:
            import torch

            from koch_explore.synthesis.synthesizer import LesionSynthesizer

            h = self.preview_host
            with torch.no_grad():
                img = LesionSynthesizer(ema).synthesize(h["vessels"], h["fov"], self._layout(), seed=0)
            self.preview_image = to_uint8(img)
            self.sample.value = encode(cv2.resize(self.preview_image, (256, 256)))
        self._status()

    def _status(self) -> None:
        with self._ui:
            self._status_locked()

    def _status_locked(self) -> None:
        state = f"failed: {self.error}" if self.error is not None else self.state
        device = self.config.device
        if device == "auto":
            import torch

            device = f"auto ({'cuda' if torch.cuda.is_available() else 'cpu'})"
        if self.running and self._device_used != self.config.device:
            device += " from the next start"
        self.status.value = (f'<span class="koch-state">{state}</span> · '
                             f'<span class="koch-step">step {self.step} of {self.config.steps}</span>'
                             f" · device {device} · run folder {self.config.out}")
