"""Names on the broker: ACL users and key namespaces (one rule for every module here)."""

from __future__ import annotations

import re

from provisioner.errors import ConfigError

LINE_USER = "line"
LINE_NAMESPACE = "line:"

_STATION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_station_id(station_id: str) -> str:
    """``station_id`` if it is safe in ACL rules, key prefixes and user names. An id with a
    space or a ``*`` would widen its own ACL rule (``~st:*:*``), so anything else is refused."""
    if not _STATION_ID.fullmatch(station_id):
        raise ConfigError(
            f"station id {station_id!r} must be 1-64 letters, digits, - or _ "
            "(it names the station's broker user and key namespace)"
        )
    return station_id


def station_namespace(station_id: str) -> str:
    """The key prefix of station ``station_id``'s queues and results: ``st:<id>:``."""
    return f"st:{check_station_id(station_id)}:"


def station_user(station_id: str) -> str:
    """The ACL user of station ``station_id``: ``st-<id>``."""
    return f"st-{check_station_id(station_id)}"
