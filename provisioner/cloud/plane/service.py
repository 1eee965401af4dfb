"""The device plane: every decision about a device's connection, in one place.

The broker plugin (mosquitto, ``deploy/mosquitto``) decides nothing itself: it asks this
service at connect, at each subscribe and gateway control message, and every 100 ms (``sync``)
hands over the telemetry it buffered and receives back which clients to disconnect and which
messages to deliver. The HTTP bridge and the external brokers' hooks call the same methods, so
one set of rules (:mod:`provisioner.cloud.devauth`) governs every way in.

What it enforces is Cloud IoT's device plane: a device connects with a JWT as its password
(or, on the bridge's mTLS listener, with a client certificate that is one of its registry
credentials, no JWT needed) and is disconnected when the JWT (the certificate) expires or
when it is deleted, blocked, loses the credential it connected with, or its registry
disables MQTT; it publishes only to its own ``events`` and ``state`` topics and receives only
its own ``config`` (the latest version on subscribe) and ``commands`` (only while connected
and subscribed); a gateway also speaks for the devices it attached, as its
``gatewayAuthMethod`` allows.

One instance per registry server process (``app.state.plane``). Connected sessions are kept
in memory (:mod:`.sessions`); everything durable goes to the registry's database. Methods
that touch the database block: call them from a worker thread.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import col

from provisioner.cloud import device_data, events, store
from provisioner.cloud.credentials import NO_EXPIRY, Credential
from provisioner.cloud.devauth import topics
from provisioner.cloud.devauth.client_cert import (
    CertificateRefused,
    load_client_certificate,
    matching_credential,
    named_device,
)
from provisioner.cloud.devauth.jwt import (
    DeviceClaims,
    JwtRefused,
    credential_expired,
    verify_device_jwt,
    verify_with_credential,
)
from provisioner.cloud.device_data import DeviceConfig
from provisioner.cloud.plane.sessions import (
    MAX_KICKS,
    MAX_SUBSCRIPTIONS,
    Delivery,
    Session,
    SessionTable,
)
from provisioner.cloud.status import ApiError, Code
from provisioner.cloud.store import StoredDevice, StoredRegistry

log = logging.getLogger(__name__)

# Cloud IoT's limits on one telemetry message (256 KB) and one state (64 KB).
MAX_EVENT_BYTES = 256 * 1024
MAX_STATE_BYTES = device_data.MAX_STATE_BYTES
MAX_CLIENT_ID_SHOWN = 200

GATEWAY = "GATEWAY"
ASSOCIATION_ONLY = "ASSOCIATION_ONLY"
DEVICE_AUTH_TOKEN_ONLY = "DEVICE_AUTH_TOKEN_ONLY"
ASSOCIATION_AND_DEVICE_AUTH_TOKEN = "ASSOCIATION_AND_DEVICE_AUTH_TOKEN"
GATEWAY_ATTACHMENT_ERROR = "GATEWAY_ATTACHMENT_ERROR"


@dataclass(frozen=True)
class Admission:
    """An accepted connect: the topic patterns the broker lets the client use and when to
    disconnect it (the JWT's ``exp``; for a certificate-only connect, the certificate's
    notAfter, and ``claims`` is None). ``session`` is 0 for a stateless check
    (:meth:`DevicePlane.check_mqtt`)."""

    session: int
    client_id: str
    registry: StoredRegistry
    device: StoredDevice
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    expires_at: int
    claims: DeviceClaims | None
    method: str = "jwt"  # or "certificate" (mTLS without a JWT)

    @property
    def allow(self) -> bool:
        return True


@dataclass(frozen=True)
class _Admitted:
    """What :meth:`DevicePlane._admit` found: the credential that authenticated the connect
    (it is watched: removed or expired, the session ends) and until when."""

    registry: StoredRegistry
    device: StoredDevice
    credential: Credential
    claims: DeviceClaims | None
    expires_at: int
    method: str


@dataclass(frozen=True)
class Refusal:
    """A refused connect. ``reason`` is ``"<rule>: <plain words>"`` (JWT rules as
    ``"jwt <rule>: ..."``); it names no secret and may be logged by the caller."""

    rule: str
    reason: str

    @property
    def allow(self) -> bool:
        return False


@dataclass(frozen=True)
class SubscribeResult:
    allow: bool
    deliver: list[Delivery] = field(default_factory=list)


@dataclass(frozen=True)
class ControlResult:
    """The answer to a gateway's attach/detach: the full new pattern lists (they replace the
    old ones), messages to deliver (errors), and whether to close the connection."""

    allow: bool
    publish: list[str] = field(default_factory=list)
    subscribe: list[str] = field(default_factory=list)
    deliver: list[Delivery] = field(default_factory=list)
    kick: bool = False


@dataclass(frozen=True)
class Message:
    """A message a client published, as the plugin buffered it."""

    client_id: str
    session: int
    topic: str
    payload: bytes
    qos: int = 0


@dataclass(frozen=True)
class SyncResult:
    kick: list[tuple[str, int]]  # (client id, session)
    deliver: list[Delivery]


def _refusal(rule: str, words: str) -> Refusal:
    return Refusal(rule, f"{rule}: {words}")


def _shown(client_id: str) -> str:
    """A client id for a log line: whatever a client sent, bounded."""
    return repr(client_id[:MAX_CLIENT_ID_SHOWN])


def _credential_deadline(credential: Credential) -> float | None:
    """When the credential expires (Unix time); None if never."""
    if credential.expiration_time == NO_EXPIRY:
        return None
    try:
        when = datetime.fromisoformat(credential.expiration_time.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _same_key(a: Credential, b: Credential) -> bool:
    return a.format == b.format and a.key == b.key


class DevicePlane:
    """The device plane of one registry server (see the module docstring)."""

    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self._clock = clock
        self._sessions = SessionTable()
        # The newest registry values seen (connect, registry_changed): a sync routes events
        # by the registry's notification configs as they are now, not as at connect.
        self._registries: dict[int, StoredRegistry] = {}

    # --- helpers -------------------------------------------------------------------------

    def _now(self) -> float:
        return self._clock()

    def _when(self, now: float | None = None) -> datetime:
        return datetime.fromtimestamp(self._now() if now is None else now, UTC)

    @property
    def sessions(self) -> SessionTable:
        """The connected sessions (read-only use: status pages, tests)."""
        return self._sessions

    def connected(self, reg: StoredRegistry, device_id: str) -> bool:
        """Whether the device has a live MQTT session (its own connection or a gateway's)."""
        return bool(self._sessions.receivers(reg.pk, device_id))

    def _lookup(
        self, client_id: str, named: tuple[str, str, str, str] | None = None
    ) -> tuple[StoredRegistry, StoredDevice] | Refusal:
        """The registry and device a connect is for: ``named`` (from the client
        certificate) when given, else the client id, which must then be a device path."""
        parts = topics.parse_client_id(client_id) if isinstance(client_id, str) else None
        if named is not None:
            if parts is not None and parts != named:
                return _refusal(
                    "client_id", "the client id names another device than the certificate"
                )
            parts = named
        if parts is None:
            return _refusal(
                "client_id",
                "the client id is not projects/{p}/locations/{l}/registries/{r}/devices/{d}",
            )
        project, location, registry_id, device_id = parts
        reg = store.get_registry(self.engine, project, location, registry_id)
        if reg is None:
            return _refusal("registry", "no such registry")
        device = store.get_device(self.engine, reg, device_id)
        if device is None:
            return _refusal("device", "no such device in the registry")
        return reg, device

    def _admit(
        self, client_id: str, password: str | None, cert_pem: str | None, now: float
    ) -> _Admitted | Refusal:
        """The checks of an MQTT connect, in Cloud IoT's order; no state changes.

        With a password it is a JWT connect (a client certificate, if the listener asked
        for one, must be a credential of the same device too). Without one, a TLS client
        certificate alone admits it when it is a current credential of the device it names
        (:mod:`provisioner.cloud.devauth.client_cert`). The device's ``blocked`` flag is
        the deny-list: read from the registry on every connect either way."""
        cert: x509.Certificate | None = None
        named: tuple[str, str, str, str] | None = None
        if cert_pem:
            try:
                cert = load_client_certificate(cert_pem)
                named = named_device(cert)
            except CertificateRefused as exc:
                return _refusal("certificate", str(exc))
        found = self._lookup(client_id, named)
        if isinstance(found, Refusal):
            return found
        reg, device = found
        if not reg.mqtt_enabled:
            return _refusal("mqtt", "the MQTT bridge is disabled for the registry")
        if device.blocked:
            return _refusal("blocked", "the device is blocked")
        if not password and cert is None:
            return _refusal("jwt format", "no password (the device JWT) was given")
        held = matching_credential(cert, device.credentials, now) if cert is not None else None
        if cert is not None and held is None:
            return _refusal(
                "certificate",
                "the TLS client certificate is no current credential of the device",
            )
        if password:
            try:
                claims, credential = verify_with_credential(
                    password, project=reg.project, credentials=device.credentials, now=now
                )
            except JwtRefused as exc:
                return Refusal(f"jwt {exc.rule}", f"jwt {exc}")
            return _Admitted(reg, device, credential, claims, claims.exp, "jwt")
        assert cert is not None and held is not None
        if not cert.not_valid_before_utc.timestamp() <= now < cert.not_valid_after_utc.timestamp():
            return _refusal("certificate", "the TLS client certificate is not valid now")
        return _Admitted(
            reg, device, held, None, int(cert.not_valid_after_utc.timestamp()), "certificate"
        )

    # --- MQTT: connect -------------------------------------------------------------------

    def connect(
        self,
        client_id: str,
        password: str | None,
        *,
        cert_pem: str | None = None,
        address: str | None = None,
    ) -> Admission | Refusal:
        """Admit an MQTT connection (the username is ignored, as by Cloud IoT). A connect
        with a client id already connected replaces that session."""
        now = self._now()
        found = self._admit(client_id, password, cert_pem, now)
        if isinstance(found, Refusal):
            log.info(
                "device plane: refused the MQTT connect of %s from %s: %s",
                _shown(client_id),
                address or "?",
                found.reason,
            )
            return found
        reg, device = found.registry, found.device
        session = Session(
            id=self._sessions.next_id(),
            client_id=client_id,
            registry_pk=reg.pk,
            device=device,
            credential=found.credential,
            expires_at=found.expires_at,
            credential_expires=_credential_deadline(found.credential),
            method=found.method,
        )
        with self._sessions.locked():
            self._registries[reg.pk] = reg
            self._sessions.replace(session)
        log.info(
            "device plane: %s connected (session %d, %s, until %d)",
            _shown(client_id),
            session.id,
            found.claims.alg if found.claims is not None else "client certificate",
            found.expires_at,
        )
        return Admission(
            session.id,
            client_id,
            reg,
            device,
            tuple(session.publish),
            tuple(session.subscribe),
            found.expires_at,
            found.claims,
            found.method,
        )

    def check_mqtt(
        self, client_id: str, password: str | None, *, cert_pem: str | None = None
    ) -> Admission | Refusal:
        """The connect checks without a session, for external brokers (EMQX, VerneMQ,
        mosquitto-go-auth): they keep the connection themselves and disconnect at
        ``expires_at``."""
        now = self._now()
        found = self._admit(client_id, password, cert_pem, now)
        if isinstance(found, Refusal):
            log.info("device plane: refused %s (hook): %s", _shown(client_id), found.reason)
            return found
        device = found.device
        return Admission(
            0,
            client_id,
            found.registry,
            device,
            tuple(topics.own_publish(device.device_id, gateway=device.is_gateway)),
            tuple(topics.own_subscribe(device.device_id, gateway=device.is_gateway)),
            found.expires_at,
            found.claims,
            found.method,
        )

    # --- MQTT: subscribe -----------------------------------------------------------------

    def subscribe(self, client_id: str, session: int, topic: str, qos: int) -> SubscribeResult:
        """Allow a subscription to the session's own (or an attached child's) config,
        commands and errors topics; a config subscription gets the latest config at once."""
        s = self._sessions.get(client_id, session)
        if s is None or s.kick_reason is not None:
            return SubscribeResult(False)
        if qos not in (0, 1, 2):
            return SubscribeResult(False)
        target = self._subscribable(s, topic)
        if target is None:
            log.info(
                "device plane: refused %s a subscription to %r: not its topic",
                _shown(client_id),
                topic[:200],
            )
            return SubscribeResult(False)
        granted = min(qos, 1)  # Cloud IoT downgrades QoS 2 subscriptions to 1
        with self._sessions.locked():
            if topic not in s.subscriptions and len(s.subscriptions) >= MAX_SUBSCRIPTIONS:
                log.info("device plane: %s has too many subscriptions", _shown(client_id))
                return SubscribeResult(False)
            s.subscriptions[topic] = granted
        deliver: list[Delivery] = []
        config_topic = topics.config_topic(target.device_id)
        if topics.matches(topic, config_topic):
            config = device_data.latest_config(self.engine, target.num_id)
            if config is not None:
                deliver.append(Delivery(client_id, config_topic, config.data, 1))
                device_data.touch(self.engine, target.num_id, last_config_send_time=self._when())
        return SubscribeResult(True, deliver)

    def _subscribable(self, s: Session, topic: str) -> StoredDevice | None:
        """The device whose topic ``topic`` is, if the session may subscribe to it."""
        parts = topics.parse_topic(topic)
        if parts is None or parts.kind not in ("config", "commands", "errors"):
            return None
        target = s.speaks_for(parts.device_id)
        if target is None:
            return None
        if topics.has_wildcard(topic):
            # Only the commands wildcard, Cloud IoT's way of receiving every subfolder.
            ok = topic == f"/devices/{parts.device_id}/commands/#"
            return target if ok else None
        return target if topics.any_match(s.subscribe, topic) else None

    # --- MQTT: gateway control -----------------------------------------------------------

    def control(
        self, client_id: str, session: int, topic: str, payload: bytes, qos: int = 1
    ) -> ControlResult:
        """A gateway's attach or detach of a child (``/devices/{child}/attach|detach``)."""
        s = self._sessions.get(client_id, session)
        if s is None or s.kick_reason is not None:
            return ControlResult(False)
        if not s.device.is_gateway:
            log.info(
                "device plane: %s is not a gateway and sent %r: disconnecting it",
                _shown(client_id),
                topic[:200],
            )
            return ControlResult(False, kick=True)
        parts = topics.parse_topic(topic)
        if parts is None or parts.kind not in ("attach", "detach"):
            return self._control_answer(s, False)
        child_id = parts.device_id
        if parts.kind == "detach":
            if self._sessions.detach(s, child_id):
                log.info("device plane: gateway %s detached %s", _shown(client_id), child_id)
            return self._control_answer(s, True)
        refused = self._attach(s, child_id, payload)
        if refused is None:
            return self._control_answer(s, True)
        return self._attach_refused(s, child_id, refused)

    def _control_answer(self, s: Session, allow: bool) -> ControlResult:
        with self._sessions.locked():
            return ControlResult(allow, s.publish, s.subscribe)

    def _attach(self, s: Session, child_id: str, payload: bytes) -> str | None:
        """Attach ``child_id`` to the gateway session; None on success, else why not."""
        now = self._now()
        gateway = s.device
        if child_id == gateway.device_id:
            return "a gateway cannot attach itself"
        reg = self._registries.get(s.registry_pk)
        if reg is None:  # pragma: no cover - set at connect
            return "the registry is unknown"
        child = store.get_device(self.engine, reg, child_id)
        if child is None:
            return f"the device `{child_id}` does not exist in the registry"
        if child.is_gateway:
            return f"the device `{child_id}` is a gateway and cannot be attached"
        if child.blocked:
            return f"the device `{child_id}` is blocked"
        try:
            authorization = _authorization(payload)
        except ValueError as exc:
            return str(exc)
        method = gateway.gateway_auth_method or ASSOCIATION_ONLY
        if method in (ASSOCIATION_ONLY, ASSOCIATION_AND_DEVICE_AUTH_TOKEN) and (
            not device_data.is_bound(self.engine, gateway.num_id, child.num_id)
        ):
            return f"the device `{child_id}` is not bound to the gateway"
        if method in (DEVICE_AUTH_TOKEN_ONLY, ASSOCIATION_AND_DEVICE_AUTH_TOKEN):
            if not authorization:
                return f"the gateway's auth method {method} requires the device's JWT"
            try:
                verify_device_jwt(
                    authorization, project=reg.project, credentials=child.credentials, now=now
                )
            except JwtRefused as exc:
                return f"the device's JWT was refused: jwt {exc}"
        self._sessions.attach(s, child)
        device_data.record_gateway_access(
            self.engine, child.num_id, gateway.device_id, self._when(now)
        )
        log.info("device plane: gateway %s attached %s", _shown(s.client_id), child_id)
        return None

    def _attach_refused(self, s: Session, child_id: str, why: str) -> ControlResult:
        log.info(
            "device plane: refused gateway %s attaching %r: %s",
            _shown(s.client_id),
            child_id[:200],
            why,
        )
        error = {
            "error_type": GATEWAY_ATTACHMENT_ERROR,
            "device_id": child_id,
            "description": why,
        }
        device_data.record_error(
            self.engine,
            s.device.num_id,
            Code.FAILED_PRECONDITION.value[1],
            f"Attaching `{child_id[:200]}` failed: {why}",
            self._when(),
        )
        errors = topics.errors_topic(s.device_id)
        with self._sessions.locked():
            qos = min(s.subscribed_qos(errors) or 0, 1)
            result = ControlResult(False, s.publish, s.subscribe)
        result.deliver.append(Delivery(s.client_id, errors, json.dumps(error).encode(), qos))
        return result

    # --- MQTT: sync ----------------------------------------------------------------------

    def sync(
        self,
        messages: Sequence[Message],
        disconnected: Sequence[tuple[str, int]] = (),
    ) -> SyncResult:
        """Take the plugin's buffered messages (telemetry and state, stored in as few
        transactions as possible), forget disconnected sessions, and answer with the
        sessions to disconnect (JWT expired, invalidated) and the queued deliveries."""
        now = self._now()
        when = self._when(now)
        batch: dict[int, list[events.NewEvent]] = {}
        states: list[tuple[int, StoredDevice, bytes]] = []
        event_devices: set[int] = set()
        # Connections this process does not know (admitted before the registry restarted):
        # their telemetry would be lost, so they are closed and the devices reconnect.
        strangers: set[tuple[str, int]] = set()
        with self._sessions.locked():
            for m in messages:
                s = self._sessions.get(m.client_id, m.session)
                if s is None:
                    strangers.add((m.client_id, m.session))
                    continue
                if s.kick_reason is not None or m.qos == 2:
                    continue
                parts = topics.parse_topic(m.topic)
                if parts is None:
                    continue
                device = s.speaks_for(parts.device_id)
                if device is None:
                    continue
                if parts.kind == "events" and len(m.payload) <= MAX_EVENT_BYTES:
                    batch.setdefault(s.registry_pk, []).append(
                        events.NewEvent(
                            device.device_id, device.num_id, parts.subfolder, m.payload, when
                        )
                    )
                    event_devices.add(device.num_id)
                elif parts.kind == "state" and len(m.payload) <= MAX_STATE_BYTES:
                    states.append((s.registry_pk, device, m.payload))
            registries = dict(self._registries)
        # The database work, outside the lock; if it fails nothing else has changed yet
        # and the plugin's retry does not lose kicks or deliveries.
        for pk, new in batch.items():
            events.store_events(self.engine, registries[pk], new)
        if event_devices:
            self._touch_many(event_devices, "last_event_time", when)
        for pk, device, data in states:
            device_data.record_state(self.engine, device.num_id, data, when)
            events.store_state_notification(
                self.engine, registries[pk], device.device_id, device.num_id, data, when
            )
        for client_id, session in disconnected:
            if self._sessions.drop(client_id, session) is not None:
                log.info("device plane: %s disconnected", _shown(client_id))
        if strangers:
            log.info("device plane: disconnecting %d unknown sessions", len(strangers))
        return SyncResult(self._kicks(now) + sorted(strangers), self._sessions.take_pending())

    def _kicks(self, now: float) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        with self._sessions.locked():
            for s in self._sessions.all():
                if s.kick_reason is None:
                    if s.expires_at <= now:
                        s.kick_reason = (
                            "certificate: the client certificate expired"
                            if s.method == "certificate"
                            else "jwt exp: the token expired"
                        )
                    elif s.credential_expires is not None and s.credential_expires <= now:
                        s.kick_reason = "credential: the credential expired"
                    else:
                        continue
                    log.info(
                        "device plane: disconnecting %s: %s", _shown(s.client_id), s.kick_reason
                    )
                s.kicks_sent += 1
                if s.kicks_sent > MAX_KICKS:
                    self._sessions.drop(s.client_id, s.id)
                    continue
                out.append((s.client_id, s.id))
        return out

    def _touch_many(self, num_ids: set[int], name: str, when: datetime) -> None:
        """One UPDATE for every device of a sync batch (``device_data.touch`` is one per
        device; a batch of telemetry can hold hundreds)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(store.DeviceRow)
                .where(col(store.DeviceRow.num_id).in_(sorted(num_ids)))
                .values({name: when})
            )

    # --- registry side: commands, configs, changes ---------------------------------------

    def send_command(
        self, reg: StoredRegistry, device: StoredDevice, data: bytes, subfolder: str
    ) -> None:
        """Queue a command for delivery at the next sync; FAILED_PRECONDITION (Cloud IoT's
        error) unless the device is connected and subscribed to the command's topic."""
        topic = topics.commands_topic(device.device_id, subfolder)
        now = self._now()
        with self._sessions.locked():
            for s in self._sessions.receivers(reg.pk, device.device_id):
                qos = s.subscribed_qos(topic)
                if qos is None or s.expires_at <= now:
                    continue
                delivery = Delivery(s.client_id, topic, data, min(qos, 1))
                if not self._sessions.queue(s, delivery, replace_topic=False):
                    log.warning("device plane: too many undelivered messages; is the bridge up?")
                    raise ApiError(
                        Code.RESOURCE_EXHAUSTED,
                        "Too many undelivered messages are waiting for the MQTT bridge.",
                    )
                return
        raise ApiError(
            Code.FAILED_PRECONDITION,
            f"Device `{device.device_id}` is not subscribed to the commands topic.",
        )

    def config_changed(
        self, reg: StoredRegistry, device: StoredDevice, config: DeviceConfig
    ) -> None:
        """Queue a new config for a connected device subscribed to its config topic (an
        undelivered older version is superseded)."""
        topic = topics.config_topic(device.device_id)
        sent = False
        with self._sessions.locked():
            for s in self._sessions.receivers(reg.pk, device.device_id):
                if s.subscribed_qos(topic) is None:
                    continue
                delivery = Delivery(s.client_id, topic, config.data, 1)
                if self._sessions.queue(s, delivery, replace_topic=True):
                    sent = True
                else:  # delivered on the next subscribe instead
                    log.warning("device plane: too many undelivered messages; config dropped")
        if sent:
            device_data.touch(self.engine, device.num_id, last_config_send_time=self._when())

    def device_changed(self, reg: StoredRegistry, device_ident: str) -> None:
        """Re-check the sessions of a device that was updated or deleted (and the gateways
        it is attached to): deleted, blocked, the verifying credential removed or expired →
        disconnected at the next sync; a child no longer allowed → detached."""
        affected = [
            s
            for s in self._sessions.all()
            if s.registry_pk == reg.pk
            and (
                _names(s.device, device_ident)
                or any(_names(c, device_ident) for c in s.attached.values())
            )
        ]
        if not affected:
            return  # the common case (device not connected) costs no database read
        now = self._now()
        device = store.get_device(self.engine, reg, device_ident)
        for s in affected:
            if _names(s.device, device_ident):
                why = self._still_valid(reg, device, s.credential, now)
                with self._sessions.locked():
                    if why is not None:
                        self._mark(s, why)
                    elif device is not None:
                        s.device = device
                if why is None and device is not None and device.is_gateway:
                    self._recheck_children(s, device)
            else:
                self._recheck_child(s, s.device, device, device_ident)

    def registry_changed(self, reg: StoredRegistry) -> None:
        """Use the registry's new settings; with MQTT disabled, disconnect its devices."""
        with self._sessions.locked():
            self._registries[reg.pk] = reg
            if not reg.mqtt_enabled:
                for s in self._sessions.all():
                    if s.registry_pk == reg.pk:
                        self._mark(s, "mqtt: the MQTT bridge was disabled for the registry")

    def _mark(self, s: Session, why: str) -> None:
        if s.kick_reason is None:
            s.kick_reason = why
            log.info("device plane: %s will be disconnected: %s", _shown(s.client_id), why)

    def _still_valid(
        self,
        reg: StoredRegistry,
        device: StoredDevice | None,
        credential: Credential,
        now: float,
    ) -> str | None:
        if device is None:
            return "device: the device was deleted"
        if device.blocked:
            return "blocked: the device was blocked"
        current = [c for c in device.credentials if _same_key(c, credential)]
        if not current:
            return "credential: the credential the device connected with was removed"
        if all(credential_expired(c, now) for c in current):
            return "credential: the credential the device connected with expired"
        registry = self._registries.get(reg.pk, reg)
        if not registry.mqtt_enabled:
            return "mqtt: the MQTT bridge is disabled for the registry"
        return None

    def _recheck_children(self, s: Session, gateway: StoredDevice) -> None:
        for child in list(s.attached.values()):
            if not self._child_allowed(gateway, child):
                self._sessions.detach(s, child.device_id)
                log.info(
                    "device plane: detached %s from gateway %s: no longer allowed",
                    child.device_id,
                    _shown(s.client_id),
                )

    def _recheck_child(
        self,
        s: Session,
        gateway: StoredDevice,
        child: StoredDevice | None,
        ident: str,
    ) -> None:
        old = next((c for c in s.attached.values() if _names(c, ident)), None)
        if old is None:
            return
        if child is None or child.blocked or not self._child_allowed(gateway, child):
            self._sessions.detach(s, old.device_id)
            log.info(
                "device plane: detached %s from gateway %s: deleted, blocked or unbound",
                old.device_id,
                _shown(s.client_id),
            )
            return
        with self._sessions.locked():
            s.attached[child.device_id] = child

    def _child_allowed(self, gateway: StoredDevice, child: StoredDevice) -> bool:
        if child.blocked or child.is_gateway:
            return False
        if gateway.gateway_auth_method == DEVICE_AUTH_TOKEN_ONLY:
            return True
        return device_data.is_bound(self.engine, gateway.num_id, child.num_id)

    # --- HTTP bridge and external brokers ------------------------------------------------

    def authenticate_http(
        self, reg: StoredRegistry, device: StoredDevice, proof: str | x509.Certificate
    ) -> DeviceClaims | None:
        """The HTTP bridge's check of a request for ``device``: ``proof`` is the bearer JWT,
        or the TLS client certificate (the bridge's HTTPS listener; the chain was checked
        there) which must name no other device and be one of the device's current
        credentials, as at an MQTT connect. ApiError PERMISSION_DENIED when HTTP is
        disabled or the device blocked, UNAUTHENTICATED when the proof is refused (the
        message names the rule). The JWT's claims, or None for a certificate."""
        if not reg.http_enabled:
            log.info("device plane: refused HTTP for %s: HTTP disabled", device.device_id)
            raise ApiError(
                Code.PERMISSION_DENIED,
                f"The HTTP bridge is disabled for the registry `{reg.registry_id}`.",
            )
        if device.blocked:
            log.info("device plane: refused HTTP for %s: blocked", device.device_id)
            raise ApiError(Code.PERMISSION_DENIED, f"The device `{device.device_id}` is blocked.")
        if isinstance(proof, x509.Certificate):
            self._certificate_for_http(reg, device, proof)
            return None
        try:
            return verify_device_jwt(
                proof, project=reg.project, credentials=device.credentials, now=self._now()
            )
        except JwtRefused as exc:
            log.info("device plane: refused HTTP for %s: jwt %s", device.device_id, exc)
            raise ApiError(
                Code.UNAUTHENTICATED, f"The device JWT was refused (jwt {exc})."
            ) from None

    def _certificate_for_http(
        self, reg: StoredRegistry, device: StoredDevice, cert: x509.Certificate
    ) -> None:
        now = self._now()
        why = None
        try:
            named = named_device(cert)
        except CertificateRefused as exc:
            why = str(exc)
        else:
            path = (reg.project, reg.location, reg.registry_id, device.device_id)
            if named is not None and named != path:
                why = "the certificate names another device"
            elif (
                not cert.not_valid_before_utc.timestamp()
                <= now
                < (cert.not_valid_after_utc.timestamp())
            ):
                why = "the certificate is not valid now"
            elif matching_credential(cert, device.credentials, now) is None:
                why = "the certificate is no current credential of the device"
        if why is not None:
            log.info("device plane: refused HTTP for %s: certificate: %s", device.device_id, why)
            raise ApiError(Code.UNAUTHENTICATED, f"The TLS client certificate was refused ({why}).")

    def may(self, client_id: str, topic: str, action: str) -> bool:
        """Whether the device of ``client_id`` may ``action`` ("publish", "subscribe" or
        "read": a delivery to it) ``topic``, by Cloud IoT's topic rules; stateless, for
        external brokers' ACL hooks. A gateway may use the topics of devices bound to it
        (external brokers have no attach step) and publish attach/detach."""
        found = self._lookup(client_id)
        if isinstance(found, Refusal):
            return False
        reg, device = found
        if device.blocked or not reg.mqtt_enabled:
            return False
        gateway = device.is_gateway
        if action == "publish":
            if topics.any_match(topics.own_publish(device.device_id, gateway=gateway), topic):
                return True
            parts = topics.parse_topic(topic)
            if parts is None or parts.kind not in ("events", "state") or not gateway:
                return False
            return self._bound_child(reg, device, parts.device_id)
        if action not in ("subscribe", "read"):
            return False
        parts = topics.parse_topic(topic)
        if parts is None or parts.kind not in ("config", "commands", "errors"):
            return False
        if parts.device_id == device.device_id:
            patterns = topics.own_subscribe(device.device_id, gateway=gateway)
        elif gateway and parts.kind != "errors" and self._bound_child(reg, device, parts.device_id):
            patterns = topics.child_subscribe(parts.device_id)
        else:
            return False
        if topics.has_wildcard(topic):
            return action == "subscribe" and topic == f"/devices/{parts.device_id}/commands/#"
        return topics.any_match(patterns, topic)

    def _bound_child(self, reg: StoredRegistry, gateway: StoredDevice, child_id: str) -> bool:
        child = store.get_device(self.engine, reg, child_id)
        if child is None or child.blocked or child.is_gateway:
            return False
        return device_data.is_bound(self.engine, gateway.num_id, child.num_id)

    def publish_event(
        self, reg: StoredRegistry, device: StoredDevice, subfolder: str, data: bytes
    ) -> None:
        """Store one telemetry message (the HTTP bridge's ``publishEvent``)."""
        when = self._when()
        events.store_events(
            self.engine,
            reg,
            [events.NewEvent(device.device_id, device.num_id, subfolder, data, when)],
        )
        device_data.touch(self.engine, device.num_id, last_event_time=when)

    def set_state(self, reg: StoredRegistry, device: StoredDevice, data: bytes) -> None:
        """Record a state report (the HTTP bridge's ``setState``)."""
        when = self._when()
        device_data.record_state(self.engine, device.num_id, data, when)
        events.store_state_notification(
            self.engine, reg, device.device_id, device.num_id, data, when
        )


def _names(device: StoredDevice, ident: str) -> bool:
    """Whether ``ident`` (a device id or a numId, as the registry API accepts) is ``device``."""
    return ident == device.device_id or ident == str(device.num_id)


def _authorization(payload: bytes) -> str:
    """The child's JWT in an attach payload (``{"authorization": "<JWT>"}``); "" when the
    payload is empty, ``{}`` or has an empty authorization (association only)."""
    if not payload.strip():
        return ""
    try:
        body: Any = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError("the attach payload is not JSON") from None
    if not isinstance(body, dict):
        raise ValueError("the attach payload is not a JSON object")
    value = body.get("authorization", "")
    if not isinstance(value, str):
        raise ValueError("the attach payload's authorization is not a string")
    return value
