"""ipywidgets UI layer of koch-explore, installed as ``koch_explore.widgets``.

One widget per thing a person does in the notebooks; each keeps a plain-Python API (set values,
call handlers) so tests drive it without a browser, and ``close()`` releases its observers,
networks and threads.

* :class:`LayerBrowser` — where the activation network starts, and its map at every layer;
* :class:`ThresholdExplorer` — slide the isolation threshold, watch components and their count;
* :class:`EyeThresholdExplorer` — the same with a dropdown of eyes (:class:`EyeCatalogue`: phantoms,
  the embedded photo, EyePACS validation eyes when found);
* :class:`LesionPicker` — click components to put their descriptors in a bank;
* :class:`DescriptorPlacer` — click a healthy host to place descriptors, preview the synthesis;
* :class:`SynthTrainer` — train the synthesizer in the background, pause, resume, retrain on a layout;
* :class:`KochTestRunner` — the Koch test on a button: verdict, severity by count, an inoculated host.

Every widget's ``snapshot()`` draws its current state as a matplotlib figure; :func:`show` displays a
widget and, where nobody clicks (``interactive=False``: papermill, ``nbconvert --execute``, tests), that
picture below it, so executed notebooks and their HTML show what the widgets showed. The notebooks pass
``interactive`` explicitly (True in JupyterLab and the Voila apps of ``notebooks/apps/``); None falls back
on :func:`is_interactive`, a guess that Voila defeats.
"""

from .eyes import EyeCatalogue, EyeThresholdExplorer
from .kochtest import KochTestRunner
from .layers import LayerBrowser
from .picker import LesionPicker
from .placer import DescriptorPlacer
from .static import is_interactive, resolve_interactive, show
from .threshold import ThresholdExplorer
from .trainer import SynthTrainer

__all__ = ["DescriptorPlacer", "EyeCatalogue", "EyeThresholdExplorer", "KochTestRunner", "LayerBrowser", "LesionPicker",
           "SynthTrainer", "ThresholdExplorer", "is_interactive", "resolve_interactive", "show"]
