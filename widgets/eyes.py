"""Eyes an app offers without any dataset, and EyePACS validation eyes when the data root holds them.

:class:`EyeCatalogue` names the eyes (phantoms of known grade, the embedded healthy photo, and, when
found, EyePACS validation eyes of grade 3 or 4) and reads each the first time it is asked for, so an app
starts in the time one eye takes, not all of them. :class:`EyeThresholdExplorer` is a
:class:`~koch_explore.widgets.ThresholdExplorer` with a dropdown of those eyes.
"""

from __future__ import annotations

import numpy as np

from koch_explore.culture.cut import DEFAULT_RULE
from koch_explore.detect.predict import predict_severity
from koch_explore.evidence.base import DEFAULT_METHOD, explain

from ._render import close_widgets
from .threshold import ThresholdExplorer

__all__ = ["EyeCatalogue", "EyeThresholdExplorer", "PHANTOM_EYES", "HEALTHY_PHOTO"]

PHANTOM_EYES = ((11, 3), (12, 4), (13, 2), (14, 1))
"""(seed, grade) of the phantom eyes offered, most diseased first; phantom 11 is 04_inoculate's picking eye."""
HEALTHY_PHOTO = "healthy photo (scikit-image)"
"""The label of the embedded photo, ``skimage.data.retina()``."""


class EyeCatalogue:
    """Labelled eyes (:attr:`labels`), each read the first time :meth:`load` asks for it: the first ``phantoms``
    of :data:`PHANTOM_EYES` (exact lesions, no data needed), the embedded healthy photo (``healthy``), and with
    ``data`` "auto" (when the data root holds EyePACS) or "real", up to ``eyepacs`` EyePACS validation eyes of
    grade 3 or 4 drawn with ``seed`` (patients the shipped detector never trained on; :attr:`eyepacs` lists
    their (name, grade, path)). ``data`` "embedded" or "phantom": no EyePACS eye even when there is one.
    Every eye is prepared at ``size`` (the detector's input)."""

    def __init__(self, data: str = "auto", phantoms: int = len(PHANTOM_EYES), eyepacs: int = 4, healthy: bool = True,
                 size: int = 256, seed: int = 0, root=None):
        if data not in ("auto", "real", "embedded", "phantom"):
            raise ValueError(f"data {data!r}: 'auto', 'real', 'embedded' or 'phantom'")
        self.size = int(size)
        self._readers: dict[str, tuple] = {}
        for phantom_seed, grade in PHANTOM_EYES[:max(0, phantoms)]:
            self._readers[f"phantom {phantom_seed} (grade {grade})"] = ("phantom", phantom_seed, grade)
        if healthy:
            self._readers[HEALTHY_PHOTO] = ("photo",)
        self.eyepacs = self._eyepacs_eyes(data, eyepacs, seed, root) if eyepacs > 0 else []
        for name, grade, path in self.eyepacs:
            self._readers[f"EyePACS {name} (grade {grade})"] = ("file", path)
        if not self._readers:
            raise ValueError("an empty catalogue: ask for phantoms, the healthy photo or EyePACS eyes")
        self._loaded: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def labels(self) -> list[str]:
        return list(self._readers)

    def load(self, label: str) -> tuple[np.ndarray, np.ndarray]:
        """(image float32 (S, S, 3) in [0, 1], FOV bool (S, S)) of the eye called ``label``."""
        if label not in self._readers:
            raise KeyError(f"no eye {label!r}; the catalogue holds {', '.join(self._readers)}")
        if label not in self._loaded:
            self._loaded[label] = self._read(self._readers[label])
        return self._loaded[label]

    def _read(self, how: tuple) -> tuple[np.ndarray, np.ndarray]:
        from koch_explore.data import prepare_fundus, read_image
        from koch_explore.data.embedded import retina_photo
        from koch_explore.data.phantom import generate_phantom

        if how[0] == "phantom":
            p = generate_phantom(how[1], size=self.size, grade=how[2])
            return np.clip(p.image, 0, 1).astype(np.float32), np.asarray(p.fov, bool)
        if how[0] == "photo":
            return retina_photo(self.size)
        image, fov = prepare_fundus(read_image(how[1]), self.size, path=how[1])
        return image.astype(np.float32), fov

    @staticmethod
    def _eyepacs_eyes(data: str, count: int, seed: int, root) -> list[tuple[str, int, object]]:
        """(name, grade, path) of ``count`` EyePACS validation eyes of grade >= 3, listed without reading a photo."""
        if data in ("embedded", "phantom"):
            return []
        from koch_explore.data.graded import GradedData, graded_split
        from koch_explore.data.roots import resolve_data_root

        r = resolve_data_root(root)
        if r is None or not (r / "EyePACS").is_dir():
            if data == "real":
                raise FileNotFoundError("data 'real' asks for EyePACS, and the data root (KOCH_DATA, ../shared/data, ./data) holds none")
            return []
        items, _, val = graded_split("EyePACS", GradedData(root=str(r)))
        by_name = {it.name: it for it in items}
        sick = [by_name[n] for n in val if by_name[n].grade >= 3]
        if not sick:
            return []
        pick = np.sort(np.random.default_rng(seed).choice(len(sick), size=min(count, len(sick)), replace=False))
        return [(sick[i].name, int(sick[i].grade), sick[i].path) for i in pick]


class EyeThresholdExplorer:
    """A dropdown of a catalogue's eyes above a :class:`ThresholdExplorer` of the chosen one: choosing an
    eye computes its evidence map (``method``) once and shows it at the same threshold and rule, with the
    detector's severity beside the dropdown.

    Plain-Python API: :meth:`choose` (a label), :attr:`label`, :attr:`explorer` (the threshold explorer:
    ``set_threshold``, ``count``, ...), :attr:`severity`, :meth:`snapshot`, :meth:`close`."""

    def __init__(self, detector, eyes: EyeCatalogue, label: str | None = None, method: str = DEFAULT_METHOD,
                 rule: str = DEFAULT_RULE, threshold: float | None = None, width: int = 512):
        import ipywidgets as W

        self.detector, self.eyes, self.method = detector, eyes, method
        label = eyes.labels[0] if label is None else label
        self.dropdown = W.Dropdown(options=eyes.labels, value=label, description="eye", layout=W.Layout(width="380px"))
        self.status = W.HTML()
        self.status.add_class("koch-eye")  # a handle for the browser test
        image, evidence, fov = self._evidence_of(label)
        self.explorer = ThresholdExplorer(image, evidence, fov, threshold=threshold, rule=rule,
                                          width=width, title=self._title(label))
        self.label = label
        self.dropdown.observe(self._on_choose, names="value")
        self._row = W.HBox([self.dropdown, self.status])
        self.widget = W.VBox([self._row, self.explorer.widget])

    def choose(self, label: str) -> None:
        """Show the eye called ``label`` (what choosing it in the dropdown does)."""
        if label not in self.eyes.labels:
            raise KeyError(f"no eye {label!r}; the catalogue holds {', '.join(self.eyes.labels)}")
        self.dropdown.value = label  # the observer computes and shows it

    def snapshot(self):
        """The explorer's picture of the chosen eye (see :meth:`ThresholdExplorer.snapshot`)."""
        return self.explorer.snapshot()

    def close(self) -> None:
        self.dropdown.unobserve(self._on_choose, names="value")
        self.explorer.close()
        close_widgets(self.widget, self._row, self.dropdown, self.status)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def _on_choose(self, change) -> None:
        label = change["new"]
        image, evidence, fov = self._evidence_of(label)
        self.label = label
        self.explorer.set_eye(image, evidence, fov, title=self._title(label))

    def _title(self, label: str) -> str:
        return f"{label}: {self.method} evidence"

    def _evidence_of(self, label: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image, evidence map, FOV) of an eye; the status line gets its severity."""
        image, fov = self.eyes.load(label)
        self.severity = float(predict_severity(self.detector, image)[0])
        self.status.value = f'the detector grades it <span class="koch-severity">{self.severity:.2f}</span> (0-4 scale)'
        return image, explain(self.detector, image, self.method).maps[0], fov
