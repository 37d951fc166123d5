"""Postulate 4 ("re-isolate"): the Koch test, its hosts and its report.

* :mod:`.test`   -- :func:`koch_test`: inoculate healthy hosts with 0..16 descriptors, re-isolate, score
* :mod:`.hosts`  -- the healthy hosts (real, held-out, embedded, phantom) and the shipped models for them
* :mod:`.report` -- the offline HTML report
"""

from .hosts import (
           HOSTS,
           SETUPS,
           default_setup,
           embedded_hosts,
           folder_hosts,
           healthy_hosts,
           resolve_data,
           shipped_models,
           unseen_hosts,
)
from .report import write_report
from .test import (
           COUNTS,
           KochConfig,
           KochReport,
           TrialCase,
           dose_layouts,
           koch_test,
           transplant,
)

__all__ = ["COUNTS", "HOSTS", "KochConfig", "KochReport", "SETUPS", "TrialCase", "default_setup", "dose_layouts", "embedded_hosts",
           "folder_hosts", "healthy_hosts",
           "koch_test", "resolve_data", "shipped_models", "transplant", "unseen_hosts", "write_report"]
