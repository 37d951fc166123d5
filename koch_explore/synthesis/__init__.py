"""Postulate 3 ("inoculate"): place lesion descriptors on a healthy host, in one of two modes.

* whole (the paper's): :mod:`.generator` (U-Net drawing the whole fundus around a vessel tree, the optic
  disc's place optionally given, :mod:`.disc`), :mod:`.discriminator`, :mod:`.losses`, :mod:`.trainer`
  (``koch-explore synth train``), :mod:`.synthesizer` (:class:`LesionSynthesizer`);
* local: :mod:`.local` (:class:`LocalSynthesizer`, lesions grown inside a real healthy photo, every other
  pixel the photo's own) and :mod:`.local_train` (``koch-explore synth train-local``);
* both: :mod:`.transplant` (the real lesions pasted, the positive control), :mod:`.evaluate` and
  :mod:`.c2st` (``koch-explore synth eval``).
"""

from .generator import Generator, GeneratorConfig
from .local import LocalSynthesizer
from .synthesizer import MODES, LesionSynthesizer, load_synthesizer, random_layout

__all__ = ["MODES", "Generator", "GeneratorConfig", "LesionSynthesizer", "LocalSynthesizer", "load_synthesizer", "random_layout"]
