"""``DescriptorPlacer``: click on a healthy host to place descriptors, rotate/scale/count them, and
preview the synthetic fundus the current generator draws (with the detector's severity). With a
local-mode synthesizer the host is a real photo (``photo=``): the clicks land on it and the lesions grow
in it, the rest of the photo untouched.

The bank it places from can change under it (:meth:`set_bank`: 04_inoculate hands it the lesions
picked in a :class:`~koch_explore.widgets.LesionPicker`); a :class:`~koch_explore.widgets.SynthTrainer`
given the placer retrains on its :attr:`layout`. :meth:`snapshot` draws the current state."""

from __future__ import annotations

import numpy as np

from koch_explore.core.geometry import in_mask
from koch_explore.culture.bank import DescriptorBank
from koch_explore.synthesis.synthesizer import random_layout

from ._render import (
    BLANK_PNG,
    close_widgets,
    encode,
    image_figure,
    plain_text,
    snapshot_panels,
    to_uint8,
)

__all__ = ["DescriptorPlacer"]


class DescriptorPlacer:
    """Host vessel tree + FOV, a bank to place from, and the placed layout (:attr:`layout`). In local mode
    ``photo`` is the host and ``vessels`` may be None (the local synthesizer reads no tree).

    Plain-Python API: :meth:`place` (x, y), :meth:`set_count`, :meth:`rotate`, :meth:`scale`,
    :meth:`clear`, :meth:`synthesize` (returns the image and shows it), :meth:`set_bank`,
    :meth:`snapshot`, :meth:`close`. ``selected``: bank indices placed by clicks (cycled in order).
    """

    def __init__(self, synthesizer, bank: DescriptorBank, vessels: np.ndarray | None, fov: np.ndarray, detector=None,
                 selected=None, seed: int = 0, width: int = 420, photo: np.ndarray | None = None):
        import ipywidgets as W

        if not len(bank):
            raise ValueError("the bank is empty: pick lesions first (LesionPicker)")
        self.synth, self.bank, self.detector = synthesizer, bank, detector
        self.default_bank = bank
        self.local = getattr(synthesizer, "mode", "whole") == "local"
        if self.local and photo is None:
            raise ValueError("a local-mode synthesizer grows lesions in a real photo: give photo= (the host's image)")
        if not self.local and vessels is None:
            raise ValueError("the whole-fundus generator draws the fundus around a vessel tree: give vessels= (the host's tree)")
        # local mode never reads the tree: a photo without one (ke.retina_photo()) is a host as it is
        self.vessels = None if vessels is None else np.asarray(vessels, np.float32)
        self.fov = np.asarray(fov, bool)
        self.photo = None if photo is None else np.asarray(photo, np.float32)
        self.selected = list(range(len(bank))) if selected is None else [int(i) for i in selected]
        self.seed = seed
        self.layout = DescriptorBank([], detector_hash=bank.detector_hash, info=dict(bank.info))
        self.image: np.ndarray | None = None
        self.severity: float | None = None
        h, w = self.fov.shape
        # the photo to click on when there is one to grow lesions in, else the tree the generator draws around
        self.host = to_uint8(self.photo) if self.local else to_uint8(np.where(self.fov, 0.25 + 0.6 * self.vessels, 0.0))
        self.figure = image_figure(self.host, width)
        self.figure.data[0].on_click(self._on_click)
        self.count_slider = W.IntSlider(value=0, min=0, max=32, description="count", continuous_update=False)
        self.rotate_slider = W.FloatSlider(value=0, min=-180, max=180, step=15, description="rotate last", continuous_update=False)
        self.scale_slider = W.FloatSlider(value=1.0, min=0.5, max=2.0, step=0.1, description="scale last", continuous_update=False)
        self.synth_button, self.clear_button = W.Button(description="synthesize", button_style="primary"), W.Button(description="clear")
        # a fixed size: in a row beside the figure an image would stretch to the row's height
        self.preview = W.Image(value=BLANK_PNG, format="png", layout=W.Layout(width=f"{width}px", height=f"{round(width * h / w)}px"))
        self.info = W.HTML()
        self.count_slider.observe(self._on_count, names="value")
        self.rotate_slider.observe(self._on_rotate, names="value")
        self.scale_slider.observe(self._on_scale, names="value")
        self.synth_button.on_click(lambda _b: self.synthesize())
        self.clear_button.on_click(lambda _b: self.clear())
        self._last_transform, self._last_base = (0.0, 1.0), None
        frame = W.Box([self.figure])
        frame.add_class("koch-placer")  # a handle for the browser test
        self._rows = [frame, W.HBox([frame, self.preview]), W.HBox([self.count_slider, self.rotate_slider, self.scale_slider]),
                      W.HBox([self.synth_button, self.clear_button, self.info])]
        self.widget = W.VBox(self._rows[1:])
        self._redraw()

    # -- API -----------------------------------------------------------------------------------

    def place(self, x: float, y: float) -> bool:
        """Place the next selected descriptor with its centroid at (x, y); False outside the FOV."""
        if not in_mask(self.fov, (x, y)):
            self.info.value = f"({x:.0f}, {y:.0f}) is outside the field of view"
            return False
        d = self.bank[self.selected[len(self.layout) % len(self.selected)]]
        self._last_base = d.relocated((float(x), float(y)))
        self.layout = DescriptorBank([*self.layout, self._last_base], detector_hash=self.layout.detector_hash, info=self.layout.info)
        self._last_transform = (0.0, 1.0)
        self._redraw()
        return True

    def set_count(self, n: int) -> None:
        """Exactly ``n`` placed lesions drawn from the selected descriptors at random valid positions."""
        pool = self.bank.select(indices=self.selected)
        self.layout = random_layout(pool, int(n), self.fov, seed=self.seed + int(n)) if n else DescriptorBank([], detector_hash=pool.detector_hash, info=pool.info)
        self._last_transform, self._last_base = (0.0, 1.0), None
        self._redraw()

    def rotate(self, degrees: float) -> None:
        """Rotate the last placed lesion to ``degrees`` (absolute, about its centroid)."""
        self._transform_last(degrees, self._last_transform[1])

    def scale(self, factor: float) -> None:
        """Scale the last placed lesion to ``factor`` (absolute)."""
        self._transform_last(self._last_transform[0], factor)

    def clear(self) -> None:
        self.layout = DescriptorBank([], detector_hash=self.layout.detector_hash, info=self.layout.info)
        self._last_transform, self._last_base = (0.0, 1.0), None
        self._redraw()

    def set_bank(self, bank: DescriptorBank) -> None:
        """Place from ``bank`` from now on (all of it selected); an empty bank means the one given at
        construction. Lesions already placed stay."""
        self.bank = bank if len(bank) else self.default_bank
        self.selected = list(range(len(self.bank)))
        self._last_transform, self._last_base = (0.0, 1.0), None
        self._redraw()

    def synthesize(self) -> np.ndarray:
        host = {"fov": self.fov, **({} if self.vessels is None else {"vessels": self.vessels}),
                **({} if self.photo is None else {"image": self.photo})}
        self.image = self.synth.synthesize_host(host, self.layout if len(self.layout) else None, seed=self.seed)
        self.preview.value = encode(to_uint8(self.image))
        msg = self._placed()
        if self.detector is not None:
            import torch

            with torch.no_grad():
                sev = float(self.detector(torch.from_numpy(self.image).permute(2, 0, 1)[None].contiguous()).reshape(-1)[0])
            msg += f"; detector severity {sev:.2f} (grade {int(self.detector.grade(torch.tensor([sev]))[0])})"
        self.info.value = msg
        self.severity = sev if self.detector is not None else None
        return self.image

    def snapshot(self):
        """The widget's current state as a matplotlib ``Figure``: the host's tree with the placed boxes,
        the last synthesis (if any) and the status line."""
        boxes = [d.bbox for d in self.layout]
        what = "host photo" if self.local else "host tree"
        panels = [{"image": self.host, "boxes": boxes, "title": f"{what}: {len(self.layout)} placed"}]
        if self.image is not None:
            panels.append({"image": np.clip(self.image, 0, 1), "boxes": boxes, "title": "last synthesis"})
        return snapshot_panels(panels, plain_text(self.info.value))

    def close(self) -> None:
        self.figure.data[0].on_click(None)
        for s, fn in ((self.count_slider, self._on_count), (self.rotate_slider, self._on_rotate), (self.scale_slider, self._on_scale)):
            s.unobserve(fn, names="value")
        for b in (self.synth_button, self.clear_button):
            b._click_handlers.callbacks.clear()
        close_widgets(self.widget, *self._rows, self.figure, self.count_slider, self.rotate_slider, self.scale_slider,
                      self.synth_button, self.clear_button, self.preview, self.info)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # -- internals -----------------------------------------------------------------------------

    def _transform_last(self, degrees: float, factor: float) -> None:
        if not len(self.layout):
            return
        i = len(self.layout) - 1
        if self._last_base is None:
            self._last_base = self.layout[i]
        # Always from the untouched placement: repeated warps would blur the patches.
        new = self._last_base.scaled(factor).rotated(degrees) if (degrees, factor) != (0.0, 1.0) else self._last_base
        self.layout = DescriptorBank([*list(self.layout)[:i], new], detector_hash=self.layout.detector_hash, info=self.layout.info)
        self._last_transform = (float(degrees), float(factor))
        self._redraw()

    def _on_click(self, _trace, points, _state) -> None:
        if points.xs:
            self.place(points.xs[0], points.ys[0])

    def _on_count(self, change) -> None:
        self.set_count(change["new"])

    def _on_rotate(self, change) -> None:
        self.rotate(change["new"])

    def _on_scale(self, change) -> None:
        self.scale(change["new"])

    def _redraw(self) -> None:
        self.figure.layout.shapes = [dict(type="rect", x0=d.bbox[0] - 0.5, y0=d.bbox[1] - 0.5, x1=d.bbox[2] - 0.5, y1=d.bbox[3] - 0.5,
                                          line=dict(color="#00e5ff", width=1.5)) for d in self.layout]
        src = f"the bank ({len(self.bank)} descriptors)" if self.bank is self.default_bank else f"{len(self.bank)} picked descriptor{'' if len(self.bank) == 1 else 's'}"
        self.info.value = f"{self._placed()} from {src} (click the {'photo' if self.local else 'tree'} to add; synthesize to preview)"

    def _placed(self) -> str:
        n = len(self.layout)
        return f'<span class="koch-placed">{n} lesion{"" if n == 1 else "s"} placed</span>'
