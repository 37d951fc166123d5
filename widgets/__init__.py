"""ipywidgets UI layer of koch-explore, installed as ``koch_explore.widgets``.

One widget per thing a person does in the notebooks; each keeps a plain-Python API (set values,
call handlers) so tests drive it without a browser, and ``close()`` releases its observers,
networks and threads.

* :class:`LayerBrowser` — where the activation network starts, and its map at every layer;
* :class:`ThresholdExplorer` — slide the isolation threshold, watch components and their count;
* :class:`LesionPicker` — click components to put their descriptors in a bank;
* :class:`DescriptorPlacer` — click a healthy host to place descriptors, preview the synthesis;
* :class:`SynthTrainer` — train the synthesizer in the background, pause, resume, retrain on a layout.
"""

from .layers import LayerBrowser
from .picker import LesionPicker
from .placer import DescriptorPlacer
from .threshold import ThresholdExplorer
from .trainer import SynthTrainer

__all__ = ["DescriptorPlacer", "LayerBrowser", "LesionPicker", "SynthTrainer", "ThresholdExplorer"]
