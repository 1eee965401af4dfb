"""``provisioner audit ...``: auditors query, export, verify and prove the trail.

One module per concern registers its commands on the shared app: :mod:`.verify` (the whole
trail and its checkpoints), :mod:`.query` (query and export), :mod:`.proofs` (proof files).
"""

from provisioner.cli.audit import proofs, query, verify
from provisioner.cli.audit.common import app

__all__ = ["app", "proofs", "query", "verify"]
