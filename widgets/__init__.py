"""ipywidgets UI layer of koch-explore, installed as ``koch_explore.widgets``.

Widgets arrive with the isolate and synthesizer stages; every widget keeps a plain-Python API so
tests can drive it without a browser.
"""
