"""Postulate 3 ("inoculate"): synthesize a fundus from a vessel tree with placed lesion descriptors.

One concept per file: :mod:`.generator` (U-Net), :mod:`.discriminator`, :mod:`.losses`,
:mod:`.trainer` (``koch-explore synth train``), :mod:`.synthesizer` (:class:`LesionSynthesizer`).
"""

from .generator import Generator, GeneratorConfig
from .synthesizer import LesionSynthesizer, load_synthesizer, random_layout

__all__ = ["Generator", "GeneratorConfig", "LesionSynthesizer", "load_synthesizer", "random_layout"]
