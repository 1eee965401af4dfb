"""Authentication and authorisation endpoints for production MQTT brokers (EMQX 5,
mosquitto-go-auth, VerneMQ), backed by the same device plane as the built-in bridge.

A site that runs its own broker points the broker's HTTP auth at these routes; each answers
in the shape that broker parses, and every decision is ``DevicePlane.check_mqtt`` (connect:
client id ``projects/{p}/locations/{l}/registries/{r}/devices/{d}``, password = the device JWT,
every JWT rule, blocked device, MQTT disabled on the registry) or ``DevicePlane.may`` (a
device's own topics, a gateway's attached devices). The broker then carries the messages: the
device plane does not see them, so telemetry goes to that broker's rule engine, not to the
event store, and configs/commands are the broker's to deliver (see docs/field.md).

Who may call: only addresses inside ``allow`` (``[bridge] hook_allow``, loopback by default),
because these routes answer "is this JWT good?" for anyone who asks. A caller may also present
``Authorization: Bearer <bridge token>`` (EMQX can send headers); when ``token_hash`` is set and
a bearer is presented it must be that token. A refused caller gets 403, which EMQX reads as
"ignore", mosquitto-go-auth and VerneMQ as a failed check: none of them lets the client in.

Passwords (JWTs) are never logged; refusals are logged with the client id and the rule that
failed (``jwt exp: ...``), as the JWT module words them.

Shapes, each checked against the broker's own documentation or source:

- EMQX 5 HTTP authentication (docs.emqx.com "Use HTTP Service", emqx-docs
  ``en_US/access-control/authn/http.md``): POST with the configured JSON body template
  (``${clientid}``, ``${username}``, ``${password}``, ``${peerhost}``, ``${cert_common_name}``;
  a form body is also read; GET, which would put the JWT in the URL and so in access logs,
  is not served); answer 200
  ``{"result": "allow"|"deny", "is_superuser": false}`` plus, from EMQX 5.8, ``expire_at`` (Unix
  seconds) after which EMQX disconnects the client: the JWT's ``exp``. 4xx/5xx mean "ignore".
- EMQX 5 HTTP authorisation (``en_US/access-control/authz/http.md``): ``${clientid}``,
  ``${username}``, ``${topic}``, ``${action}`` (``publish``/``subscribe``), ``${qos}``, by POST or
  GET (query string); answer 200 ``{"result": "allow"|"deny"}``.
- mosquitto-go-auth ``http`` backend (iegomez/mosquitto-go-auth ``backends/http.go``): POST
  JSON (``http_params_mode json``, the default) or a form (``form``) with ``username``,
  ``password``, ``clientid`` to the user URI; ``username`` to the superuser URI; ``username``,
  ``clientid``, ``topic``, ``acc`` (1 read, 2 write, 3 read+write, 4 subscribe) to the ACL URI.
  With ``http_response_mode status`` (the default) any non-2xx is a refusal; with ``json`` the
  body ``{"Ok": bool, "Error": str}`` decides (Go's JSON decoding ignores key case). Both are
  answered at once: 200 + ``Ok: true``, or 403 + ``Ok: false``.
- VerneMQ webhooks (vernemq/vmq-docs ``plugindevelopment/webhookplugins.md``;
  vernemq ``apps/vmq_webhooks/src/vmq_webhooks_plugin.erl``): POST with header
  ``vernemq-hook``; ``auth_on_register``/``_m5`` ``{peer_addr, peer_port, username, password,
  mountpoint, client_id, clean_session|clean_start, ...}``; ``auth_on_publish``/``_m5``
  ``{username, client_id, mountpoint, qos, topic, payload, retain}``; ``auth_on_subscribe``/``_m5``
  ``{username, client_id, mountpoint, topics: [{topic, qos}]}``. Answers always 200 (another
  status is logged by VerneMQ as an endpoint error): ``{"result": "ok"}`` or ``{"result":
  {"error": "not_allowed"}}``; a subscribe answers per topic: ``{"result": "ok", "topics":
  [{topic, qos}]}`` (MQTT 3, qos 128 = refused) or ``{"result": "ok", "modifiers": {"topics":
  [...]}}`` (MQTT 5, qos 135 = not authorised). QoS 2 subscriptions are granted at QoS 1 and
  QoS 2 publishes refused, as Cloud IoT did.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from provisioner.cloud.auth import bearer_token
from provisioner.cloud.plane.service import Admission, DevicePlane
from provisioner.cloud.tokens import token_matches

log = logging.getLogger(__name__)

PREFIX = "/hooks"
# VerneMQ's auth_on_publish carries the payload (base64) unless the hook is registered with
# ``no_payload = on``; a body this size still holds a 256 KB message.
MAX_BODY_BYTES = 1024 * 1024
# mosquitto's access bits (mosquitto_plugin.h MOSQ_ACL_*), as mosquitto-go-auth forwards them.
ACC_READ, ACC_WRITE, ACC_SUBSCRIBE = 1, 2, 4
# MQTT 3 SUBACK failure; MQTT 5 reason code "Not authorized".
SUBACK_FAILURE_V3, SUBACK_NOT_AUTHORIZED_V5 = 128, 135

Action = Literal["publish", "subscribe", "read"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class HookRefused(Exception):
    """The caller is not a broker this service answers (address or token)."""


class BadRequest(Exception):
    """A request that is not in the shape the broker sends."""


def parse_networks(allow: Sequence[str]) -> tuple[Network, ...]:
    """``[bridge] hook_allow`` as networks; a bare address is a /32 (/128)."""
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in allow)


def caller_allowed(host: str | None, networks: Sequence[Network]) -> bool:
    if not host:
        return False
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in n for n in networks)


async def _params(request: Request) -> dict[str, Any]:
    """What a broker sent: a JSON object, a form, or (EMQX's GET) the query string; query
    parameters fill in what the body lacks (EMQX templates may put ``clientid`` in the URL)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadRequest(f"body over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    out: dict[str, Any] = {}
    if raw.strip():
        if ctype == "application/x-www-form-urlencoded":
            try:
                out = dict(parse_qsl(raw.decode(), keep_blank_values=True))
            except UnicodeDecodeError:
                raise BadRequest("form body is not UTF-8") from None
        else:
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise BadRequest("body is not JSON") from None
            if not isinstance(body, dict):
                raise BadRequest("body is not a JSON object")
            out = body
    for key, value in request.query_params.items():
        if key != "password":  # a secret in a URL ends up in access logs: never taken from there
            out.setdefault(key, value)
    return out


def _text(params: Mapping[str, Any], key: str) -> str:
    """A string field; absent or null (VerneMQ sends null for no username) is ""."""
    value = params.get(key)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRequest(f"{key} is not a string")
    return str(value)


def _int(params: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = params.get(key, default)
    if isinstance(value, bool):
        raise BadRequest(f"{key} is not a number")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise BadRequest(f"{key} is not a number")


class Hooks:
    """The decisions, in the device plane's terms, shared by every broker's shape."""

    def __init__(self, plane: DevicePlane) -> None:
        self.plane = plane

    def authenticate(self, client_id: str, password: str) -> tuple[bool, int | None, str]:
        """(allowed, JWT exp, refusal reason). Blocks: call from a worker thread. The plane
        logs refusals (client id and rule, never the password)."""
        result = self.plane.check_mqtt(client_id, password)
        if isinstance(result, Admission):
            return True, int(result.expires_at), ""
        return False, None, result.reason

    def may(self, client_id: str, topic: str, action: Action) -> bool:
        return self.plane.may(client_id, topic, action)


def hooks_router(
    plane: DevicePlane, allow: Sequence[str], token_hash: str | None = None
) -> APIRouter:
    """``/hooks/emqx/*``, ``/hooks/goauth/*`` and ``/hooks/vernemq`` for callers in ``allow``
    (CIDRs). With ``token_hash`` (the bridge token's SHA-256), a presented bearer must match it.
    These paths are let past the service-account check by
    :func:`provisioner.cloud.auth.self_authenticated`."""
    networks = parse_networks(allow)
    hooks = Hooks(plane)
    router = APIRouter(prefix=PREFIX)

    def check_caller(request: Request) -> None:
        host = request.client.host if request.client else None
        if not caller_allowed(host, networks):
            log.warning("broker hook call from %s refused: not in bridge.hook_allow", host)
            raise HookRefused
        token = bearer_token(request.headers.get("authorization"))
        if token is not None and token_hash and not token_matches(token, [token_hash]):
            log.warning("broker hook call from %s refused: wrong bearer token", host)
            raise HookRefused

    async def guarded(request: Request) -> dict[str, Any] | JSONResponse:
        """The caller's parameters, or the refusal to send back."""
        try:
            check_caller(request)
            return await _params(request)
        except HookRefused:
            return JSONResponse(
                {"result": "deny", "Ok": False, "Error": "caller not allowed"}, status_code=403
            )
        except BadRequest as exc:
            return JSONResponse({"result": "deny", "Ok": False, "Error": str(exc)}, 400)

    # --- EMQX 5 ------------------------------------------------------------------------------

    @router.post("/emqx/authn")  # POST only: a GET would carry the JWT in the URL
    async def emqx_authn(request: Request) -> JSONResponse:
        params = await guarded(request)
        if isinstance(params, JSONResponse):
            return params
        try:
            client_id, password = _text(params, "clientid"), _text(params, "password")
        except BadRequest:
            return JSONResponse({"result": "deny"})
        ok, exp, _ = await run_in_threadpool(hooks.authenticate, client_id, password)
        if not ok:
            return JSONResponse({"result": "deny"})
        out: dict[str, Any] = {"result": "allow", "is_superuser": False}
        if exp is not None:
            out["expire_at"] = exp
        return JSONResponse(out)

    @router.api_route("/emqx/authz", methods=["POST", "GET"])
    async def emqx_authz(request: Request) -> JSONResponse:
        params = await guarded(request)
        if isinstance(params, JSONResponse):
            return params
        try:
            client_id, topic = _text(params, "clientid"), _text(params, "topic")
            action = _text(params, "action").lower()
            qos = _int(params, "qos", 0) if params.get("qos") not in (None, "") else 0
        except BadRequest:
            return JSONResponse({"result": "deny"})
        act: Action
        if action == "publish":
            act = "publish"
        elif action == "subscribe":
            act = "subscribe"
        else:
            return JSONResponse({"result": "deny"})
        if act == "publish" and qos == 2:
            return JSONResponse({"result": "deny"})  # Cloud IoT closed such connections
        allowed = await run_in_threadpool(hooks.may, client_id, topic, act)
        return JSONResponse({"result": "allow" if allowed else "deny"})

    # --- mosquitto-go-auth (http backend) ----------------------------------------------------

    def goauth(ok: bool, error: str = "") -> JSONResponse:
        return JSONResponse({"Ok": ok, "Error": error}, status_code=200 if ok else 403)

    @router.post("/goauth/user")
    async def goauth_user(request: Request) -> JSONResponse:
        params = await guarded(request)
        if isinstance(params, JSONResponse):
            return params
        try:
            client_id, password = _text(params, "clientid"), _text(params, "password")
        except BadRequest as exc:
            return goauth(False, str(exc))
        ok, _, reason = await run_in_threadpool(hooks.authenticate, client_id, password)
        return goauth(ok, reason)

    @router.post("/goauth/superuser")
    async def goauth_superuser(request: Request) -> JSONResponse:
        params = await guarded(request)
        if isinstance(params, JSONResponse):
            return params
        # No device is a superuser: that would skip every topic rule.
        return goauth(False, "no superusers")

    @router.post("/goauth/acl")
    async def goauth_acl(request: Request) -> JSONResponse:
        params = await guarded(request)
        if isinstance(params, JSONResponse):
            return params
        try:
            client_id, topic = _text(params, "clientid"), _text(params, "topic")
            acc = _int(params, "acc")
        except BadRequest as exc:
            return goauth(False, str(exc))
        actions: list[Action] = []
        if acc & ACC_WRITE:
            actions.append("publish")
        if acc & ACC_READ:
            actions.append("read")  # a delivery to the client, on a concrete topic
        if acc & ACC_SUBSCRIBE:
            actions.append("subscribe")
        if not actions or acc & ~(ACC_READ | ACC_WRITE | ACC_SUBSCRIBE):
            return goauth(False, f"unknown acc {acc}")
        for action in actions:
            if not await run_in_threadpool(hooks.may, client_id, topic, action):
                return goauth(False, f"{action} not allowed")
        return goauth(True)

    # --- VerneMQ webhooks --------------------------------------------------------------------

    def verne_error(error: str = "not_allowed") -> JSONResponse:
        return JSONResponse({"result": {"error": error}})

    @router.post("/vernemq")
    async def vernemq(request: Request) -> JSONResponse:
        params = await guarded(request)
        if isinstance(params, JSONResponse):
            return params
        hook = request.headers.get("vernemq-hook", "")
        try:
            client_id = _text(params, "client_id")
            if hook in ("auth_on_register", "auth_on_register_m5"):
                ok, _, _ = await run_in_threadpool(
                    hooks.authenticate, client_id, _text(params, "password")
                )
                return JSONResponse({"result": "ok"}) if ok else verne_error()
            if hook in ("auth_on_publish", "auth_on_publish_m5"):
                if _int(params, "qos", 0) == 2:
                    return verne_error()
                topic = _text(params, "topic")
                allowed = await run_in_threadpool(hooks.may, client_id, topic, "publish")
                return JSONResponse({"result": "ok"}) if allowed else verne_error()
            if hook in ("auth_on_subscribe", "auth_on_subscribe_m5"):
                return await _verne_subscribe(hooks, client_id, params, hook.endswith("_m5"))
        except BadRequest as exc:
            return verne_error(str(exc))
        return JSONResponse({"result": {"error": f"unsupported hook {hook[:64]!r}"}}, 400)

    return router


async def _verne_subscribe(
    hooks: Hooks, client_id: str, params: Mapping[str, Any], mqtt5: bool
) -> JSONResponse:
    """Per-topic answers: each topic granted at its QoS (2 downgraded to 1, as Cloud IoT
    did) or refused with 128 (MQTT 3) / 135 (MQTT 5)."""
    topics = params.get("topics")
    if not isinstance(topics, list) or not topics:
        raise BadRequest("topics is not a non-empty list")
    refused = SUBACK_NOT_AUTHORIZED_V5 if mqtt5 else SUBACK_FAILURE_V3
    out: list[dict[str, Any]] = []
    for entry in topics:
        if not isinstance(entry, dict):
            raise BadRequest("a topics entry is not an object")
        topic, qos = _text(entry, "topic"), _int(entry, "qos", 0)
        allowed = await run_in_threadpool(hooks.may, client_id, topic, "subscribe")
        out.append({"topic": topic, "qos": min(qos, 1) if allowed else refused})
    if mqtt5:
        return JSONResponse({"result": "ok", "modifiers": {"topics": out}})
    return JSONResponse({"result": "ok", "topics": out})
