"""The MQTT bridge on Debian's mosquitto: its configuration and how to start and probe it.

mosquitto runs the product's plugin (``deploy/mosquitto/provisioner_plugin.c``), which asks
the registry server's device plane (``/bridge/v1``) for every decision; this package only
writes the broker's configuration and knows how to launch and probe it.
"""

from provisioner.cloud.mosquitto.config import (
    BridgeFiles,
    bridge_files,
    check_installed,
    mosquitto_argv,
    probe,
    write_config,
)

__all__ = [
    "BridgeFiles",
    "bridge_files",
    "check_installed",
    "mosquitto_argv",
    "probe",
    "write_config",
]
