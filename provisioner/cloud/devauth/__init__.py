"""Device authentication for the built-in cloud: device JWTs (:mod:`.jwt`) and Cloud IoT's
topic rules (:mod:`.topics`).

Pure functions only (no database, no I/O): every entry point a device reaches (the MQTT
bridge's plugin through the device plane, the HTTP bridge, the external broker hooks)
applies the same rules by calling these.
"""

from provisioner.cloud.devauth.jwt import (
    ALGORITHMS,
    MAX_LIFETIME_S,
    MAX_SKEW_S,
    DeviceClaims,
    JwtRefused,
    verify_device_jwt,
)

__all__ = [
    "ALGORITHMS",
    "MAX_LIFETIME_S",
    "MAX_SKEW_S",
    "DeviceClaims",
    "JwtRefused",
    "verify_device_jwt",
]
