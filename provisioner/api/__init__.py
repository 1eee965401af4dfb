"""The provisioner's own HTTP API (public CA material for now: CRLs and CA certificates)."""
