"""``SynthTrainer``: train the lesion synthesizer in the background from a notebook.

Start, pause (a clean stop: checkpoint + exported EMA generator), resume (from the checkpoint), and
"retrain on this layout" (fine-tune the current generator with a hand-picked bank). Loss curves and
the EMA generator's preview refresh every ``preview_every`` steps. The loop is
:func:`koch_explore.synthesis.trainer.train` itself, run in one worker thread; its callback is how
the widget sees progress and asks it to stop.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np

from koch_explore.synthesis.trainer import SynthTrainConfig, train

from ._render import close_widgets, encode, to_uint8

__all__ = ["SynthTrainer"]


class SynthTrainer:
    """Plain-Python API: :meth:`start`, :meth:`pause`, :meth:`resume`, :meth:`wait`,
    :meth:`retrain_on`, :attr:`history`, :attr:`step`, :attr:`running`, :meth:`close`.

    ``preview``: an optional host {"vessels", "fov"} and a layout (placed bank) drawn every
    ``preview_every`` steps with the EMA generator.
    """

    def __init__(self, config: SynthTrainConfig, preview_host: dict | None = None, preview_layout=None,
                 preview_every: int = 25):
        import ipywidgets as W

        self.config = config
        self.preview_host, self.preview_layout, self.preview_every = preview_host, preview_layout, preview_every
        self.history: list[dict] = []
        self.step = 0
        self.result: dict | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start_button = W.Button(description="start", button_style="success")
        self.pause_button = W.Button(description="pause")
        self.resume_button = W.Button(description="resume")
        self.status = W.HTML()
        self.curves, self.sample = W.Image(format="png"), W.Image(format="png")
        self.start_button.on_click(lambda _b: self.start())
        self.pause_button.on_click(lambda _b: self.pause())
        self.resume_button.on_click(lambda _b: self.resume())
        self._rows = [W.HBox([self.start_button, self.pause_button, self.resume_button, self.status]),
                      W.HBox([self.curves, self.sample])]
        self.widget = W.VBox(self._rows)
        self._status()

    # -- API -----------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, resume: bool = True) -> None:
        """Train in the background until ``config.steps`` (resuming the run folder's checkpoint)."""
        if self.running:
            return
        self._stop.clear()
        self.error = None
        self._thread = threading.Thread(target=self._run, args=(resume,), name="koch-synth-trainer", daemon=True)
        self._thread.start()
        self._status()

    def pause(self, timeout: float | None = None) -> None:
        """Ask the loop to stop after its current step; it checkpoints and exports on the way out."""
        self._stop.set()
        self.wait(timeout)

    def resume(self) -> None:
        self.start(resume=True)

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
        self._status()
        if self.error is not None:
            raise RuntimeError(f"synthesizer training failed: {self.error}") from self.error

    def retrain_on(self, bank_path: str | Path, steps: int, out: str | Path | None = None) -> None:
        """Fine-tune the current generator with only the descriptors in ``bank_path`` (e.g. lesions
        picked by hand) for ``steps`` more steps, in a new run folder."""
        self.pause()
        generator = Path(self.config.out) / "generator.safetensors"
        out = Path(out) if out is not None else Path(self.config.out).with_name(Path(self.config.out).name + "_layout")
        self.config = dataclasses.replace(self.config, bank=str(bank_path), init=str(generator) if generator.exists() else None,
                                          out=str(out), steps=int(steps))
        self.history, self.step = [], 0
        self.start(resume=True)

    def close(self) -> None:
        self.pause()
        for b in (self.start_button, self.pause_button, self.resume_button):
            b._click_handlers.callbacks.clear()
        close_widgets(self.widget, *self._rows, self.start_button, self.pause_button, self.resume_button, self.status,
                      self.curves, self.sample)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # -- internals -----------------------------------------------------------------------------

    def _run(self, resume: bool) -> None:
        try:
            self.result = train(self.config, resume=resume, progress=False, callback=self._callback)
        except BaseException as exc:  # shown in the widget and re-raised by wait()
            self.error = exc
        finally:
            self._status()

    def _callback(self, step: int, record: dict, ema) -> bool:
        self.step = step
        self.history.append(record)
        if self.preview_every and step % self.preview_every == 0:
            self._draw(ema)
        return not self._stop.is_set()

    def _draw(self, ema) -> None:
        import cv2

        from koch_explore.plotting import pyplot

        plt = pyplot()
        fig, ax = plt.subplots(figsize=(4.2, 2.6))
        keys = [k for k in ("g", "d", "adv", "detail", "path", "style", "vessel") if any(k in r for r in self.history)]
        for k in keys:
            ys = np.array([r.get(k, np.nan) for r in self.history], np.float64)
            w = max(1, len(ys) // 50)
            smooth = np.convolve(np.nan_to_num(ys), np.ones(w) / w, mode="valid")
            ax.plot(np.arange(len(smooth)) + w, smooth, label=k, lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("step (this session)")
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        fig.canvas.draw()
        rgba = np.asarray(fig.canvas.buffer_rgba())
        plt.close(fig)
        self.curves.value = encode(np.ascontiguousarray(rgba[..., :3]))
        if self.preview_host is not None:
            from koch_explore.synthesis.synthesizer import LesionSynthesizer

            synth = LesionSynthesizer(ema)
            h = self.preview_host
            img = synth.synthesize(h["vessels"], h["fov"], self.preview_layout, seed=0)
            self.sample.value = encode(cv2.resize(to_uint8(img), (256, 256)))
        self._status()

    def _status(self) -> None:
        state = "running" if self.running else ("failed: " + str(self.error) if self.error else "stopped")
        self.status.value = f"{state} · step {self.step} of {self.config.steps} · run folder {self.config.out}"
