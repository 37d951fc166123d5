"""Phantom colour fundus photographs with exact lesion ground truth.

The phantom is the embedded default dataset: tests, the quickstart notebook and a detector
trained without real data all use it. Each image is drawn procedurally from one integer seed,
so every lesion mask, vessel mask and grade is known exactly, and the same seed always gives
the same pixels.

What is drawn
-------------
* a circular field of view (black outside) with vignetting, uneven illumination, choroidal
  mottling and sensor noise over an orange-red fundus whose hue and brightness vary per image;
* a bright yellowish optic disc with a paler cup, left or right of centre (eye side random);
* a dark macula with a fovea about 2.5 disc diameters temporal to the disc;
* a branching vessel tree grown from the disc: arteries lighter and thinner, veins darker and
  wider, temporal arcades curving around the macula, widths tapering at every branch;
* lesions, never on a vessel, never on the disc, always inside the field of view, never
  touching each other (so every lesion is exactly one connected component of its mask):

  ======  =====================================================================
  ``MA``  microaneurysms: tiny dark red dots, 2-5 px across at 512 px
  ``HE``  haemorrhages: dark red dot/blot shapes and flame shapes along vessels
  ``EX``  hard exudates: bright yellow sharp-edged plaques in clumps and rings
          around the macula
  ``SE``  soft exudates (cotton-wool spots): pale, fluffy, soft-edged patches
          near the disc and the arcades
  ``NV``  neovascularisation: tufts of fine tortuous new vessels at the disc
          margin or along the arcades (proliferative disease only)
  ======  =====================================================================

Grade rule
----------
The grade is *derived* from the drawn lesions (see :data:`GRADE_RULE`), so a label always
agrees with the masks. When a grade is requested, lesion counts are sampled to produce it.

Modules
-------
* :mod:`.config`: the lesion-type constants, :data:`GRADE_RULE`, :class:`PhantomConfig`,
  :class:`PhantomFundus` and :func:`grade_from_instances`;
* :mod:`.painter`: the drawing code (scene, background, disc, vessel tree, lesions, photograph);
* :mod:`.generate`: :func:`generate_phantom`, :func:`overlay_lesions` and the dataset writer.

The ``koch-explore phantom`` command is in :mod:`koch_explore.cli.phantom`.
"""

from .config import (
    ALL_LESION_TYPES,
    GRADE_RULE,
    LESION_COLOURS,
    LESION_TYPES,
    QUADRANTS,
    IntRange,
    PhantomConfig,
    PhantomFundus,
    Range,
    grade_from_instances,
)
from .generate import (
    generate_phantom,
    overlay_lesions,
    phantom_name,
    phantom_seed,
    write_phantom_dataset,
)

__all__ = [
    "ALL_LESION_TYPES",
    "GRADE_RULE",
    "LESION_COLOURS",
    "LESION_TYPES",
    "QUADRANTS",
    "IntRange",
    "PhantomConfig",
    "PhantomFundus",
    "Range",
    "generate_phantom",
    "grade_from_instances",
    "overlay_lesions",
    "phantom_name",
    "phantom_seed",
    "write_phantom_dataset",
]
