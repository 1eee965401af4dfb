"""Bearer-token authentication and role checks for every request but the readiness probe.

Implemented as ASGI middleware in front of routing, so an unauthenticated caller learns
nothing, not even which paths exist. The presented token is hashed and compared with the
known hashes; it is never stored, logged or echoed back. The role check is here too, keyed
on method and path alone, so no route can forget it: reads need reader, device writes need
writer, deleting devices and any registry change need admin. Refusals name the Cloud IoT
permission that was missing, as Google's did.

The token comes from ``Authorization: Bearer`` (Cloud IoT clients) or, on the ClearBlade
paths only, from ``ClearBlade-UserToken`` (what ``clearblade-cloud-iot`` sends).

Three kinds of request are not service accounts' and pass untouched (:func:`self_authenticated`),
each checked by the code that serves it: the device bridge's three routes (a device's own JWT
in ``Authorization: Bearer``, :mod:`provisioner.cloud.bridge_http`), the external brokers'
hooks under ``/hooks/`` (caller address, :mod:`provisioner.cloud.hooks`) and the MQTT bridge
plugin's ``/bridge/v1/`` (the bridge token). Only exact method and path shapes pass: the admin
routes beside them (``GET .../devices/{d}/configVersions``, ``POST ...:modifyCloudToDeviceConfig``)
still need a service account.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from provisioner.cloud.status import Code, error_response
from provisioner.cloud.tokens import Role, token_role

UNAUTHENTICATED_MESSAGE = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential."
)
CLEARBLADE_PREFIX = "/api/v/4/webhook/execute/"
_REGISTRY_PATH = re.compile(r"/v1/(projects/[^/]+/locations/[^/]+/registries(?:/[^/]+)?)")
_DEVICE_PATH = re.compile(
    r"/v1/(projects/[^/]+/locations/[^/]+/registries/[^/]+/devices(?:/[^/]+)?)"
)
_READS = frozenset({"GET", "HEAD"})
# The device bridge (cloudiotdevice v1 shapes): a device id has no ':' or '/', so a verb or
# sub-resource cannot be smuggled into the device segment.
_DEVICE_ROUTE = r"/v1/projects/[^/]+/locations/[^/]+/registries/[^/]+/devices/[^/:]+"
_DEVICE_JWT_ROUTES = (
    ("POST", re.compile(_DEVICE_ROUTE + r":publishEvent")),
    ("POST", re.compile(_DEVICE_ROUTE + r":setState")),
    ("GET", re.compile(_DEVICE_ROUTE + r"/config")),
)
_WRITER_VERBS = (
    (":modifyCloudToDeviceConfig", "cloudiot.devices.updateConfig"),
    (":sendCommandToDevice", "cloudiot.devices.sendCommand"),
    (":bindDeviceToGateway", "cloudiot.devices.bindGateway"),
    (":unbindDeviceFromGateway", "cloudiot.devices.unbindGateway"),
)
HOOKS_PREFIX = "/hooks/"
BRIDGE_PREFIX = "/bridge/v1/"


def self_authenticated(method: str, path: str) -> bool:
    """Whether the route behind ``method`` ``path`` authenticates its caller itself (a device
    JWT, the hook caller's address, the bridge token) instead of by a service account."""
    if path.startswith((HOOKS_PREFIX, BRIDGE_PREFIX)):
        return True
    method = method.upper()
    return any(method == m and rx.fullmatch(path) for m, rx in _DEVICE_JWT_ROUTES)


@dataclass(frozen=True)
class Need:
    """The role a request needs and the Cloud IoT permission that stands for it."""

    role: Role
    permission: str
    resource: str


def needed(method: str, path: str) -> Need:
    """What ``method`` on ``path`` requires. Unknown paths need reader: they end in 404."""
    method = method.upper()
    if m := _DEVICE_PATH.fullmatch(path):
        kind, resource = "devices", m.group(1)
    elif m := _REGISTRY_PATH.fullmatch(path):
        kind, resource = "registries", m.group(1)
    elif path.startswith(CLEARBLADE_PREFIX):
        kind, resource = "devices", path.removeprefix(CLEARBLADE_PREFIX)
    else:
        return Need(Role.READER, "cloudiot.devices.get", path)
    if method in _READS:
        return Need(Role.READER, f"cloudiot.{kind}.get", resource)
    # Cloud IoT's own permissions for the device-plane verbs; writers (the upload worker's
    # role) may send them, as they may update devices.
    for suffix, permission in _WRITER_VERBS:
        if method == "POST" and resource.endswith(suffix):
            return Need(Role.WRITER, permission, resource.removesuffix(suffix))
    verb = {"POST": "create", "PATCH": "update", "DELETE": "delete"}.get(method, method.lower())
    if kind == "devices" and verb in ("create", "update"):
        return Need(Role.WRITER, f"cloudiot.devices.{verb}", resource)
    return Need(Role.ADMIN, f"cloudiot.{kind}.{verb}", resource)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, if that is what it is."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _header(scope: Scope, name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in scope["headers"] if k == name), None)


class BearerAuth:
    """401 UNAUTHENTICATED unless the request carries a known token; 403 PERMISSION_DENIED
    unless that token's role allows the request."""

    def __init__(
        self, app: ASGIApp, token_roles: Mapping[str, Role], open_paths: Iterable[str]
    ) -> None:
        self.app = app
        self.roles = dict(token_roles)
        self.open_paths = frozenset(open_paths)

    def _token(self, scope: Scope) -> str | None:
        token = bearer_token(_header(scope, b"authorization"))
        if token is None and scope["path"].startswith(CLEARBLADE_PREFIX):
            token = (_header(scope, b"clearblade-usertoken") or "").strip() or None
        return token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] in self.open_paths
            or self_authenticated(scope["method"], scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        token = self._token(scope)
        role = None if token is None else token_role(token, self.roles)
        if role is None:
            response = error_response(
                Code.UNAUTHENTICATED,
                UNAUTHENTICATED_MESSAGE,
                headers={"WWW-Authenticate": 'Bearer realm="provisioner-registry"'},
            )
            await response(scope, receive, send)
            return
        need = needed(scope["method"], scope["path"])
        if role < need.role:
            response = error_response(
                Code.PERMISSION_DENIED,
                f"Permission '{need.permission}' denied on resource '{need.resource}' (or it "
                "may not exist).",
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
