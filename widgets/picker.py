"""``LesionPicker``: click an isolated component to put its descriptor in a bank (or take it out).

Every component of the image's evidence map is cultured once into a candidate :class:`Descriptor`
(feature patches, Grams, severity share); clicking toggles the candidate under the cursor. The bank
saves and loads atomically like every bank. :meth:`on_change` lets another widget follow the
selection (04_inoculate's placer places what is picked); :meth:`snapshot` draws the current state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from koch_explore.core.images import as_image_batch
from koch_explore.culture.bank import DescriptorBank
from koch_explore.culture.cut import DEFAULT_RULE
from koch_explore.culture.isolation import isolate
from koch_explore.evidence.base import DEFAULT_METHOD, explain

from ._render import (
    BLANK_PNG,
    close_widgets,
    colourise,
    encode,
    image_figure,
    mosaic,
    plain_text,
    snapshot_panels,
    to_uint8,
)

__all__ = ["LesionPicker"]


class LesionPicker:
    """A clickable fundus with its components; selected ones go into :attr:`bank`.

    Plain-Python API: :meth:`click` (x, y in image pixels), :meth:`toggle` (candidate index),
    :attr:`candidates`, :attr:`selected`, :attr:`bank`, :meth:`save`, :meth:`load`, :meth:`on_change`,
    :meth:`snapshot`, :meth:`close`. ``rule``: the isolation rule, "peaks" (the default: one component per
    local peak of the map, lesion-sized candidates where one cut merges them) or "global" (one cut);
    ``threshold`` None: the rule's default.
    """

    def __init__(self, detector, image: np.ndarray, fov: np.ndarray | None = None, method: str = DEFAULT_METHOD,
                 threshold: float | str | None = None, image_id: str = "image", bank_path: str = "picked_bank.safetensors",
                 width: int = 512, rule: str = DEFAULT_RULE):
        import ipywidgets as W

        self.detector = detector
        x = as_image_batch(image[None] if np.ndim(image) == 3 else image)[:1].to(next(detector.parameters()).device)
        self.image = to_uint8(x[0].permute(1, 2, 0).cpu().numpy())
        ev = explain(detector, x, method)
        self.candidates = isolate(ev, images=x, detector=detector,
                                  threshold=threshold, fov=fov, image_ids=[image_id], require_disease=False, min_share=float("nan"),
                                  rule=rule)[0]
        self.method = method
        self.selected: list[int] = []
        self._listeners: list = []
        self._detail_rgb: np.ndarray | None = None
        self.bank = DescriptorBank(detector_hash=detector.weights_hash(), info={"built_by": "LesionPicker", "method": method})

        self.figure = image_figure(self.image, width, self._boxes())
        self.figure.data[0].on_click(self._on_click)
        self.info = W.HTML()
        self.detail = W.Image(value=BLANK_PNG, format="png")
        self.path_text = W.Text(value=str(bank_path), description="bank file")
        self.save_button, self.load_button = W.Button(description="save bank"), W.Button(description="load bank")
        self.save_button.on_click(lambda _b: self.save(self.path_text.value))
        self.load_button.on_click(lambda _b: self.load(self.path_text.value))
        side = W.VBox([self.info, self.detail])
        frame = W.Box([self.figure])
        frame.add_class("koch-picker")  # a handle for the browser test
        self._rows = [side, frame, W.HBox([frame, side]), W.HBox([self.path_text, self.save_button, self.load_button])]
        self.widget = W.VBox(self._rows[2:])
        self._redraw(None)

    # -- API -----------------------------------------------------------------------------------

    def click(self, x: float, y: float) -> int | None:
        """Toggle the smallest candidate whose box contains (x, y); returns its index or None."""
        inside = [k for k, d in enumerate(self.candidates)
                  if d.bbox[0] - 0.5 <= x < d.bbox[2] - 0.5 and d.bbox[1] - 0.5 <= y < d.bbox[3] - 0.5]
        if not inside:
            self.info.value = f"no component at ({x:.0f}, {y:.0f})"
            return None
        k = min(inside, key=lambda i: self.candidates[i].area)
        self.toggle(k)
        return k

    def toggle(self, k: int) -> None:
        if not 0 <= k < len(self.candidates):
            raise IndexError(f"candidate {k} of {len(self.candidates)}")
        if k in self.selected:
            self.selected.remove(k)
        else:
            self.selected.append(k)
        self.bank = DescriptorBank([self.candidates[i] for i in self.selected], detector_hash=self.bank.detector_hash, info=self.bank.info)
        self._redraw(k)
        self._changed()

    def on_change(self, callback) -> None:
        """Call ``callback(bank)`` after every change of the selection (a click, :meth:`toggle`, :meth:`load`)."""
        self._listeners.append(callback)

    def save(self, path: str | Path) -> Path:
        out = self.bank.save(path)
        self.info.value = f"saved {len(self.bank)} descriptors to {out}"
        return out

    def load(self, path: str | Path) -> DescriptorBank:
        """Replace the selection by a saved bank (its descriptors need not come from this image)."""
        self.bank = DescriptorBank.load(path, detector=self.detector)
        self.selected = [k for k, c in enumerate(self.candidates) if any(c.bbox == d.bbox and c.source == d.source for d in self.bank)]
        self._redraw(None)
        self.info.value = f"loaded {len(self.bank)} descriptors from {path}"
        self._changed()
        return self.bank

    def snapshot(self):
        """The widget's current state as a matplotlib ``Figure``: the image with every component's box
        (green: in the bank, yellow: not), the last clicked component's tiles, and the status line."""
        colours = ["#00ff66" if i in self.selected else "#ffd000" for i in range(len(self.candidates))]
        panels = [{"image": self.image, "boxes": [d.bbox for d in self.candidates], "colours": colours,
                   "title": f"{len(self.candidates)} components, {len(self.bank)} picked (green)"}]
        if self._detail_rgb is not None:
            panels.append({"image": self._detail_rgb, "title": "last clicked: patch, evidence, mask, features"})
        return snapshot_panels(panels, plain_text(self.info.value))

    def close(self) -> None:
        self._listeners.clear()
        self.figure.data[0].on_click(None)
        for b in (self.save_button, self.load_button):
            b._click_handlers.callbacks.clear()
        close_widgets(self.widget, *self._rows, self.info, self.detail, self.path_text, self.save_button, self.load_button, self.figure)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # -- internals -----------------------------------------------------------------------------

    def _changed(self) -> None:
        for callback in list(self._listeners):
            callback(self.bank)

    def _on_click(self, _trace, points, _state) -> None:
        if points.xs:
            self.click(points.xs[0], points.ys[0])

    def _boxes(self) -> list[dict]:
        """One plotly rectangle per candidate: green in the bank, yellow not."""
        shapes = []
        for i, d in enumerate(self.candidates):
            x0, y0, x1, y1 = d.bbox
            on = i in self.selected
            shapes.append(dict(type="rect", x0=x0 - 0.5, y0=y0 - 0.5, x1=x1 - 0.5, y1=y1 - 0.5,
                               line=dict(color="#00ff66" if on else "#ffd000", width=2 if on else 1)))
        return shapes

    def _redraw(self, k: int | None) -> None:
        self.figure.layout.shapes = self._boxes()
        head = f"{len(self.candidates)} components ({self.method}); <b>{len(self.bank)} in the bank</b>"
        if k is None:
            self.info.value = head
            return
        d = self.candidates[k]
        state = "added" if k in self.selected else "removed"
        self.info.value = (f"{head}<br>#{k} {state}: area {d.area} px, score {d.score:.2f}, "
                           f"severity share {d.severity_share:+.3f}")
        x0, y0, x1, y1 = d.bbox
        tiles = [self.image[y0:y1, x0:x1], colourise(d.evidence / (d.evidence.max() + 1e-12)), to_uint8(d.mask.astype(np.float32))]
        titles = ["patch", "evidence", "mask"]
        for n, f in d.features.items():
            m = np.abs(f).mean(0)
            tiles.append(colourise(m / (m.max() + 1e-12)))
            titles.append(f"{n} features")
        self._detail_rgb = mosaic(tiles, titles, tile=96, cols=3)
        self.detail.value = encode(self._detail_rgb)
