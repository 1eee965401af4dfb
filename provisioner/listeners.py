"""The TCP ports this machine's services listen on, checked before anything is started.

One setting per listener (``registry.listen_port``, ``api.listen_port``); the URLs other
processes use derive from them (:attr:`Settings.registry_url`, :attr:`Settings.api_url`)
unless set explicitly. A port in use is found here, before any child starts, so the error
names the setting to change instead of showing up as a dead child's log line. ``provisioner
demo`` instead moves a taken port to a free one and says so; the move reaches the children
through the environment (``PROVISIONER_REGISTRY__LISTEN_PORT``), which overrides the file.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from provisioner.errors import ServiceUnavailableError
from provisioner.settings import Settings


@dataclass(frozen=True)
class Listener:
    """One listening service: its settings section and its address."""

    component: str  # "registry", "api", "bridge", "devices": the section and the child's name
    host: str
    port: int
    url_pinned: bool  # the section's URL is set explicitly, so it would not follow a move
    field: str = "listen_port"  # the port's setting in the section

    @property
    def setting(self) -> str:
        return f"{self.component}.{self.field}"

    @property
    def env_var(self) -> str:
        return f"PROVISIONER_{self.component.upper()}__{self.field.upper()}"


def listeners(settings: Settings) -> list[Listener]:
    return [
        Listener(
            "registry",
            settings.registry.listen_host,
            settings.registry.listen_port,
            settings.registry.url is not None,
        ),
        Listener(
            "api",
            settings.api.listen_host,
            settings.api.listen_port,
            settings.api.public_url is not None,
        ),
        *bridge_listeners(settings),
        *devices_listeners(settings),
    ]


def devices_listeners(settings: Settings) -> list[Listener]:
    """The device-facing HTTPS listener (when it runs). Like the bridge's, its port may be
    moved by the demo: devices reach it by the names in its certificate; but not when
    ``devices.public_url`` pins the address devices are told."""
    d = settings.devices
    if not d.enabled:
        return []
    return [Listener("devices", d.listen_host, d.port, d.public_url is not None, "port")]


def bridge_listeners(settings: Settings) -> list[Listener]:
    """The MQTT bridge's ports (when it runs). Devices reach them by the names in the
    server certificate, so a moved port is announced like the others."""
    b = settings.bridge
    if not b.enabled:
        return []
    return [
        Listener("bridge", b.host, port, False, name)
        for name, port in (
            ("mqtt_port", b.mqtt_port),
            ("alt_port", b.alt_port),
            ("wss_port", b.wss_port),
            ("mtls_port", b.mtls_port),
            ("https_port", b.https_port),  # served by the registry process
        )
        if port is not None
    ]


def port_free(host: str, port: int) -> bool:
    """Whether a server could bind ``host:port`` now (same options as the servers use)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def any_free_port(host: str) -> int:
    """A port the kernel says is free on ``host`` now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class PortPlan:
    """Where each listener goes: the settings to use, the environment for the children and
    one line per moved port for the operator."""

    settings: Settings
    env: dict[str, str]
    notes: list[str]


def plan_ports(settings: Settings, *, move_taken: bool) -> PortPlan:
    """Check every listener's port. A taken one is an error naming its setting, or, with
    ``move_taken`` (the demo) and a URL that follows the port, moved to a free port."""
    env: dict[str, str] = {}
    notes: list[str] = []
    updates: dict[str, dict[str, int]] = {}
    for ln in listeners(settings):
        if port_free(ln.host, ln.port):
            continue
        if not move_taken or ln.url_pinned:
            raise ServiceUnavailableError(
                f"port {ln.port} on {ln.host} is in use, the {ln.component} cannot listen: "
                f"stop what holds it or set {ln.setting} (or {ln.env_var})"
            )
        new = any_free_port(ln.host)
        updates.setdefault(ln.component, {})[ln.field] = new
        env[ln.env_var] = str(new)
        notes.append(f"port {ln.port} in use: {ln.component} on {new}")
    if not updates:
        return PortPlan(settings, env, notes)
    moved = settings.model_copy(
        update={
            name: getattr(settings, name).model_copy(update=fields)
            for name, fields in updates.items()
        }
    )
    return PortPlan(moved, env, notes)
