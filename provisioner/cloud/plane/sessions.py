"""The MQTT connections the device plane knows of, in memory.

Cloud IoT allowed one connection per device; the broker enforces it per client id (a new
CONNECT with the same id takes over), and so does this table: a connect replaces the
client id's session and gives it a new number, and anything later that still carries the
old number (a subscribe, a message, a disconnect the broker reports late) is ignored rather
than applied to the new connection.

Sessions live only in the registry server's memory: after a restart the broker's clients
reconnect (the plugin's calls fail meanwhile) and build them again. Every access goes
through :class:`SessionTable`'s lock, because the routes run the plane in worker threads.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from provisioner.cloud.credentials import Credential
from provisioner.cloud.devauth import topics
from provisioner.cloud.store import StoredDevice

# A kicked session is kicked again at every sync until the broker reports it gone (a lost
# answer must not leave a device connected), but not forever: a broker that restarted never
# reports the connections it lost.
MAX_KICKS = 50
# Bounds on what one client can make this process hold: distinct subscribed filters per
# session (a device needs three or four), and undelivered messages overall (they pile up
# only while the plugin does not sync).
MAX_SUBSCRIPTIONS = 64
MAX_PENDING = 100_000


@dataclass(frozen=True)
class Delivery:
    """A message for one client, which the plugin publishes to it alone."""

    client_id: str
    topic: str
    payload: bytes
    qos: int


@dataclass
class Session:
    """One admitted connection. ``device`` and the attached children are refreshed when the
        registry reports a change; ``credential`` is the one that verified the connect JWT (or
    that the mTLS client certificate is)."""

    id: int
    client_id: str
    registry_pk: int
    device: StoredDevice
    credential: Credential
    expires_at: int
    # When the verifying credential's expirationTime passes (None: never): also a kick.
    credential_expires: float | None = None
    # "jwt" (expires_at is the JWT's exp) or "certificate" (mTLS: the certificate's notAfter)
    method: str = "jwt"
    attached: dict[str, StoredDevice] = field(default_factory=dict)
    # Subscribed filters and their QoS (the plane's view: Cloud IoT delivered commands
    # and configs only to devices subscribed to them). Unsubscribes are not reported.
    subscriptions: dict[str, int] = field(default_factory=dict)
    kick_reason: str | None = None
    kicks_sent: int = 0

    @property
    def device_id(self) -> str:
        return self.device.device_id

    @property
    def publish(self) -> list[str]:
        out = topics.own_publish(self.device_id, gateway=self.device.is_gateway)
        for child in self.attached:
            out += topics.child_publish(child)
        return out

    @property
    def subscribe(self) -> list[str]:
        out = topics.own_subscribe(self.device_id, gateway=self.device.is_gateway)
        for child in self.attached:
            out += topics.child_subscribe(child)
        return out

    def speaks_for(self, device_id: str) -> StoredDevice | None:
        """The device whose topics this connection may use as ``device_id``: itself or an
        attached child; None otherwise."""
        if device_id == self.device_id:
            return self.device
        return self.attached.get(device_id)

    def subscribed_qos(self, topic: str) -> int | None:
        """The QoS of the subscription that receives ``topic`` (the highest if several);
        None when none does."""
        found = [q for f, q in self.subscriptions.items() if topics.matches(f, topic)]
        return max(found) if found else None


class SessionTable:
    """Sessions by client id, an index of who receives a device's messages (its own
    connection, gateways it is attached to) and the deliveries waiting for the next sync."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        # Session ids outlive this process in the broker (its connections survive a registry
        # restart), so a new process must not hand out an id an old connection still holds:
        # start from the clock in units of 10 us (a new process starts above an old one
        # unless that handed out 100,000 sessions a second). 15 digits: the plugin's cJSON
        # prints a number of 16 or more digits in exponent form, which is not an integer.
        self._ids = itertools.count(time.time_ns() // 10_000)
        self._by_client: dict[str, Session] = {}
        # (registry pk, device id) -> client ids of the sessions speaking for that device.
        self._receivers: dict[tuple[int, str], set[str]] = {}
        self._pending: list[tuple[int, Delivery]] = []  # (session id, delivery)

    @contextmanager
    def locked(self) -> Iterator[SessionTable]:
        with self.lock:
            yield self

    def next_id(self) -> int:
        with self.lock:
            return next(self._ids)

    def __len__(self) -> int:
        return len(self._by_client)

    # --- membership ----------------------------------------------------------------------

    def replace(self, session: Session) -> Session | None:
        """Install ``session`` for its client id; the session it replaces, if any."""
        with self.lock:
            old = self._by_client.get(session.client_id)
            if old is not None:
                self._unindex(old)
            self._by_client[session.client_id] = session
            self._index(session, session.device_id)
            return old

    def get(self, client_id: str, session_id: int) -> Session | None:
        """The current session of ``client_id`` if it is number ``session_id``."""
        with self.lock:
            found = self._by_client.get(client_id)
            return found if found is not None and found.id == session_id else None

    def current(self, client_id: str) -> Session | None:
        with self.lock:
            return self._by_client.get(client_id)

    def drop(self, client_id: str, session_id: int) -> Session | None:
        """Forget the session if it is still the current one (a late disconnect of a
        replaced connection must not end its successor)."""
        with self.lock:
            found = self._by_client.get(client_id)
            if found is None or found.id != session_id:
                return None
            del self._by_client[client_id]
            self._unindex(found)
            return found

    def all(self) -> list[Session]:
        with self.lock:
            return list(self._by_client.values())

    def attach(self, session: Session, child: StoredDevice) -> None:
        with self.lock:
            session.attached[child.device_id] = child
            self._index(session, child.device_id)

    def detach(self, session: Session, child_id: str) -> bool:
        """Remove an attached child and its subscriptions; whether it was attached."""
        with self.lock:
            if session.attached.pop(child_id, None) is None:
                return False
            self._receivers.get((session.registry_pk, child_id), set()).discard(session.client_id)
            prefix = f"/devices/{child_id}/"
            for f in [f for f in session.subscriptions if f.startswith(prefix)]:
                del session.subscriptions[f]
            return True

    def receivers(self, registry_pk: int, device_id: str) -> list[Session]:
        """Live sessions that speak for the device (its own, and gateways it is attached
        to)."""
        with self.lock:
            ids = self._receivers.get((registry_pk, device_id), set())
            found = [self._by_client[c] for c in ids if c in self._by_client]
            return [s for s in found if s.kick_reason is None]

    def _index(self, session: Session, device_id: str) -> None:
        self._receivers.setdefault((session.registry_pk, device_id), set()).add(session.client_id)

    def _unindex(self, session: Session) -> None:
        for device_id in (session.device_id, *session.attached):
            key = (session.registry_pk, device_id)
            ids = self._receivers.get(key)
            if ids is not None:
                ids.discard(session.client_id)
                if not ids:
                    del self._receivers[key]

    # --- deliveries ----------------------------------------------------------------------

    def queue(self, session: Session, delivery: Delivery, *, replace_topic: bool) -> bool:
        """Queue a message for the next sync; False (not queued) when too many wait already.
        ``replace_topic``: an undelivered message to the same client and topic is superseded
        (a newer config replaces an older one)."""
        with self.lock:
            if replace_topic:
                self._pending = [
                    (sid, d)
                    for sid, d in self._pending
                    if not (d.client_id == delivery.client_id and d.topic == delivery.topic)
                ]
            if len(self._pending) >= MAX_PENDING:
                return False
            self._pending.append((session.id, delivery))
            return True

    def take_pending(self) -> list[Delivery]:
        """The queued deliveries whose session is still current and not kicked."""
        with self.lock:
            pending, self._pending = self._pending, []
            out: list[Delivery] = []
            for sid, d in pending:
                s = self._by_client.get(d.client_id)
                if s is not None and s.id == sid and s.kick_reason is None:
                    out.append(d)
            return out
