"""Postulate 4 ("re-isolate"): the Koch test, its hosts and its report.

* :mod:`.test`   -- :func:`koch_test`: inoculate healthy hosts with 0..16 descriptors, re-isolate, score
* :mod:`.scoring` -- one inoculated image scored, a run's images gathered, the host bootstrap
* :mod:`.verdict` -- effect sizes, competence and the verdict (lesion-driven / inconclusive / not-lesion-driven)
* :mod:`.hosts`  -- the healthy hosts (real, held-out, embedded, phantom) and the shipped models for them
* :mod:`.report` -- the offline HTML report
"""

from .hosts import (
           HOSTS,
           POPULATIONS,
           SETUPS,
           default_setup,
           embedded_hosts,
           folder_hosts,
           healthy_hosts,
           hosts_population,
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
from .verdict import (
           VERDICTS,
           VerdictRule,
           decide,
           effect_sizes,
           model_competence,
           population_competence,
)

__all__ = ["COUNTS", "HOSTS", "KochConfig", "POPULATIONS", "KochReport", "SETUPS", "TrialCase", "VERDICTS", "VerdictRule", "decide", "default_setup",
           "dose_layouts", "effect_sizes", "embedded_hosts", "folder_hosts", "healthy_hosts", "hosts_population", "koch_test", "model_competence",
           "population_competence", "resolve_data", "shipped_models", "transplant", "unseen_hosts", "write_report"]
