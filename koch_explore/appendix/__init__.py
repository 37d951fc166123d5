"""The audit as the appendix a researcher attaches to a paper: one command, one document (``koch-explore
audit``, ``ke.audit``, :func:`audit`; the package is not named ``audit`` so that ``ke.audit`` stays the
function). It stands on every
postulate's package (it grades, explains, scores the maps on lesion masks and runs the Koch test) and
nothing imports it back.

* :mod:`.config`     -- :class:`AuditConfig`, every option documented where declared
* :mod:`.sections`   -- grading, sanity, localisation and the Koch test, each saying what it was measured on
* :mod:`.provenance` -- the kit, the model, the data, the seeds and the command
* :mod:`.run`        -- :func:`audit` and :class:`Audit`
* :mod:`.report`     -- ``index.html``, ``audit.json`` and ``figures/``
"""

from .config import AUDIT_METHODS, DATASETS, AuditConfig
from .report import write_audit
from .run import Audit, audit

__all__ = ["AUDIT_METHODS", "Audit", "AuditConfig", "DATASETS", "audit", "write_audit"]
