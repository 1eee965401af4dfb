"""Queue and task names: the contract between producers and the three kinds of worker."""

from __future__ import annotations

HSM_QUEUE = "hsm"
REGISTRY_QUEUE = "registry"
STATION_PREFIX = "station."

PROVISION_TASK = "provisioner.provision_device"
SIGN_TASK = "provisioner.sign_certificate"
UPLOAD_TASK = "provisioner.upload_device"
SIGNER_STATUS_TASK = "provisioner.signer_status"  # the CA as the signer holds it (no PIN needed)
BLOCK_TASK = "provisioner.block_device"  # a revoked device blocked in the registry


def station_queue(station_id: str) -> str:
    return STATION_PREFIX + station_id
