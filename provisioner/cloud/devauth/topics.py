"""Cloud IoT's MQTT topic rules as pure functions: who may publish and subscribe where.

A device owns ``/devices/{id}/...`` and nothing else: it publishes telemetry to
``events[/subfolder]`` and state to ``state``, and receives ``config`` and ``commands/#``.
A gateway also publishes the control messages ``/devices/{child}/attach`` and ``/detach``
(the *child's* id is in the topic, as in Cloud IoT's gateway samples) and receives its
``errors``; once a child is attached, the gateway also speaks the child's own topics.

These are patterns in MQTT filter syntax (``+``/``#``), because that is what the broker
plugin and the external brokers' ACL hooks match against; :func:`matches` is the same
matching in Python for the device plane's own checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Cloud IoT device ids: a letter, then letters, digits and -+%_.~ (3..255 characters);
# numIds are digits. Anything else in a topic or client id level is not a device.
_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-+%_.~]{0,254}")
_CLIENT_ID = re.compile(
    r"projects/([^/]{1,255})/locations/([^/]{1,255})/registries/([^/]{1,255})/devices/([^/]{1,255})"
)
MAX_TOPIC = 1024
KINDS = ("events", "state", "config", "commands", "attach", "detach", "errors")


@dataclass(frozen=True)
class TopicParts:
    """A device topic taken apart: ``/devices/{device_id}/{kind}[/{subfolder}]``."""

    device_id: str
    kind: str
    subfolder: str


def own_publish(device_id: str, *, gateway: bool = False) -> list[str]:
    """The patterns a device may publish to (a gateway: also attach/detach of any child; the
    device plane then decides per message whether the child may be attached)."""
    base = [
        f"/devices/{device_id}/events",
        f"/devices/{device_id}/events/#",
        f"/devices/{device_id}/state",
    ]
    if gateway:
        base += ["/devices/+/attach", "/devices/+/detach"]
    return base


def own_subscribe(device_id: str, *, gateway: bool = False) -> list[str]:
    """The patterns a device may receive on (config, commands and, for a gateway, errors)."""
    base = [f"/devices/{device_id}/config", f"/devices/{device_id}/commands/#"]
    if gateway:
        base.append(f"/devices/{device_id}/errors")
    return base


def child_publish(child_id: str) -> list[str]:
    """What a gateway may publish for an attached child: its telemetry and state."""
    return own_publish(child_id)


def child_subscribe(child_id: str) -> list[str]:
    """What a gateway may receive for an attached child: its config and commands."""
    return own_subscribe(child_id)


def commands_topic(device_id: str, subfolder: str = "") -> str:
    """Where ``sendCommandToDevice`` delivers: ``commands`` or ``commands/{subfolder}``."""
    base = f"/devices/{device_id}/commands"
    return f"{base}/{subfolder}" if subfolder else base


def config_topic(device_id: str) -> str:
    return f"/devices/{device_id}/config"


def errors_topic(device_id: str) -> str:
    return f"/devices/{device_id}/errors"


def parse_topic(topic: str) -> TopicParts | None:
    """``/devices/{d}/{kind}[/{subfolder}]`` taken apart; None for anything else (another
    prefix, an unknown kind, a subfolder where the kind has none, an empty level)."""
    if not topic.startswith("/devices/") or len(topic) > MAX_TOPIC:
        return None
    levels = topic[len("/devices/") :].split("/", 2)
    if len(levels) < 2 or not _DEVICE_ID.fullmatch(levels[0]) or levels[1] not in KINDS:
        return None
    device_id, kind = levels[0], levels[1]
    subfolder = levels[2] if len(levels) == 3 else ""
    if len(levels) == 3 and (kind not in ("events", "commands") or not subfolder):
        return None
    return TopicParts(device_id, kind, subfolder)


def parse_client_id(client_id: str) -> tuple[str, str, str, str] | None:
    """(project, location, registry, device) of a Cloud IoT MQTT client id
    ``projects/{p}/locations/{l}/registries/{r}/devices/{d}``; None for anything else."""
    m = _CLIENT_ID.fullmatch(client_id)
    if m is None:
        return None
    project, location, registry, device = m.groups()
    return project, location, registry, device


def has_wildcard(topic: str) -> bool:
    return "+" in topic or "#" in topic


def matches(pattern: str, topic: str) -> bool:
    """Whether MQTT filter ``pattern`` matches ``topic`` (a concrete topic, or a filter that
    must then equal the pattern level by level where it has wildcards itself)."""
    p_levels = pattern.split("/")
    t_levels = topic.split("/")
    for i, p in enumerate(p_levels):
        if p == "#":
            return i == len(p_levels) - 1
        if i >= len(t_levels):
            return False
        t = t_levels[i]
        if p == "+":
            if t in ("#",):
                return False
            continue
        if p != t:
            return False
    return len(t_levels) == len(p_levels)


def any_match(patterns: list[str] | tuple[str, ...], topic: str) -> bool:
    return any(matches(p, topic) for p in patterns)
