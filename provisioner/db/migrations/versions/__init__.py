"""Revision files: one per schema change, applied in order by ``provisioner db upgrade``."""
