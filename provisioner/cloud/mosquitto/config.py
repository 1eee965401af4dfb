"""``<var>/bridge/mosquitto.conf`` and the helpers the supervisor launches mosquitto with.

Why these settings:

- ``allow_anonymous false`` and the plugin's basic-auth: every CONNECT goes to the device
  plane (a JWT as the password); the plugin refuses when the plane cannot be reached.
- ``per_listener_settings false``: one plugin and one rule set for every listener (8883,
  443, secure WebSockets), as the Cloud IoT bridge had.
- ``persistence false``: configs and commands live in the registry, not in the broker; a
  restarted broker must not replay anything.
- ``max_keepalive 1200``: Cloud IoT's 20-minute idle limit.
- ``user <us>``: mosquitto started as root drops to the ``mosquitto`` user, which cannot read
  the key and token under the var dir (0600, ours).
- logs to stdout: the supervisor captures them in ``<var>/log/bridge.out``.
- TLS 1.2 at least, the P-256 certificate of :mod:`provisioner.ca.bridge_cert`;
  ``require_certificate false`` on 8883/443/WebSockets (device auth is the JWT: a device
  there is never asked for a certificate it may not have).
- the mTLS listener (``bridge.mtls_port``): ``require_certificate true`` against
  ``clients.pem`` (the product's root and every intermediate, current and archived, written
  by the bridge certificate code), so a certificate of another CA fails the handshake;
  ``use_identity_as_username false``: the plugin still asks the device plane, which admits
  the certificate only if it is a current registry credential of the device it names (the
  registry's blocked flag and credentials are the deny-list, read on every connect).
  No ``crlfile``: mosquitto reads one when it sets up the listener, and the registry's
  answer is current.
"""

from __future__ import annotations

import os
import pwd
import socket
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import ServiceUnavailableError
from provisioner.settings import Settings, local_url

CONF_NAME = "mosquitto.conf"
DEFAULT_TIMEOUT_MS = 3000
# Cloud IoT's largest telemetry payload is 256 KB; room for the topic and headers.
MAX_PACKET_SIZE = 256 * 1024 + 4096


@dataclass(frozen=True)
class BridgeFiles:
    """Where the bridge's files are (all under :attr:`Settings.bridge_dir`)."""

    dir: Path
    conf: Path
    cert_chain: Path  # server certificate + intermediate
    key: Path  # 0600
    root: Path  # the root devices pin
    client_ca: Path  # root + intermediates: what the mTLS listener verifies clients with


def bridge_files(settings: Settings) -> BridgeFiles:
    d = settings.bridge_dir
    return BridgeFiles(
        d, d / CONF_NAME, d / "server.pem", d / "server.key", d / "ca.pem", d / "clients.pem"
    )


def _quote_ok(value: str, what: str) -> str:
    """mosquitto.conf has no quoting: a value with a newline would inject a directive."""
    if any(ch in value for ch in "\r\n\0"):
        raise ServiceUnavailableError(f"{what} must not contain a line break: {value!r}")
    return value


def render_config(settings: Settings, *, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> str:
    """The text of mosquitto.conf for ``settings`` (pure: no file is read or written)."""
    b = settings.bridge
    files = bridge_files(settings)
    user = pwd.getpwuid(os.getuid()).pw_name
    plane_url = local_url(settings.registry.listen_host, settings.registry.listen_port)
    lines = [
        "# Written by provisioner (provisioner/cloud/mosquitto/config.py) at every start;",
        "# change [bridge] in the settings instead of editing this file.",
        "per_listener_settings false",
        "allow_anonymous false",
        "persistence false",
        "max_keepalive 1200",
        f"max_packet_size {MAX_PACKET_SIZE}",
        f"user {_quote_ok(user, 'the user name')}",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        "log_timestamp true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "",
        f"plugin {_quote_ok(str(b.plugin_path), 'bridge.plugin')}",
        f"plugin_opt_url {_quote_ok(plane_url, 'the registry URL')}",
        f"plugin_opt_token_file {_quote_ok(str(settings.bridge_token_file), 'the token file')}",
        f"plugin_opt_timeout_ms {int(timeout_ms)}",
    ]
    host = _quote_ok(b.host, "bridge.host")
    tls = [
        f"certfile {_quote_ok(str(files.cert_chain), 'the certificate path')}",
        f"keyfile {_quote_ok(str(files.key), 'the key path')}",
        "tls_version tlsv1.2",
        "require_certificate false",
    ]
    for port in (b.mqtt_port, b.alt_port):
        if port is not None:
            lines += ["", f"listener {port} {host}", "protocol mqtt", *tls]
    if b.wss_port is not None:
        lines += ["", f"listener {b.wss_port} {host}", "protocol websockets", *tls]
    if b.mtls_port is not None:
        mtls = [
            *tls[:-1],
            "require_certificate true",
            f"cafile {_quote_ok(str(files.client_ca), 'the client CA path')}",
            "use_identity_as_username false",
        ]
        lines += ["", f"listener {b.mtls_port} {host}", "protocol mqtt", *mtls]
    return "\n".join(lines) + "\n"


def write_config(settings: Settings, *, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> Path:
    """Write ``<var>/bridge/mosquitto.conf`` (0600) and return its path."""
    files = bridge_files(settings)
    if not files.dir.is_dir():
        files.dir.mkdir(parents=True, mode=0o700)
        files.dir.chmod(0o700)
    tmp = files.conf.with_name(f".{CONF_NAME}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(render_config(settings, timeout_ms=timeout_ms))
    os.replace(tmp, files.conf)
    return files.conf


def check_installed(settings: Settings) -> None:
    """mosquitto and the plugin exist, or a ServiceUnavailableError says how to get them."""
    b = settings.bridge
    if not b.mosquitto.is_file():
        raise ServiceUnavailableError(
            f"{b.mosquitto} is not installed: run `make install` (apt: mosquitto), "
            "or set bridge.enabled = false"
        )
    if not b.plugin_path.is_file():
        raise ServiceUnavailableError(
            f"the bridge plugin {b.plugin_path} is missing: run `make install` (it builds "
            "deploy/mosquitto), or set bridge.plugin, or bridge.enabled = false"
        )


def mosquitto_argv(settings: Settings, conf: Path) -> list[str]:
    return [str(settings.bridge.mosquitto), "-c", str(conf)]


def probe(settings: Settings, timeout: float = 1.0) -> bool:
    """Whether the MQTT/TLS listener accepts TCP connections (mosquitto is up)."""
    b = settings.bridge
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(b.host, b.host)
    try:
        with socket.create_connection((host, b.mqtt_port), timeout=timeout):
            return True
    except OSError:
        return False
