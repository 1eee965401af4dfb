"""The tamper-evident audit trail (hash chain now; Merkle log with HSM checkpoints later)."""
