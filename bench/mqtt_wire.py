"""A minimal MQTT 3.1.1 client on asyncio, for the bridge benchmark only.

paho-mqtt runs one thread (or one select loop) per client; a thousand concurrent devices in
one benchmark process would measure paho's threads rather than the bridge. This speaks just
what a Cloud IoT device sends — CONNECT with a JWT password over TLS, PUBLISH at QoS 1 and
its PUBACK, DISCONNECT — on asyncio streams, so one process holds every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct


class MqttRefused(Exception):
    """CONNACK with a non-zero return code (4 bad credentials, 5 not authorised)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"CONNACK return code {code}")
        self.code = code


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(raw)) + raw


def connect_packet(client_id: str, password: str, keepalive: int = 60) -> bytes:
    flags = 0x80 | 0x40 | 0x02  # username, password, clean session
    body = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    body += _string(client_id) + _string("unused") + _string(password)
    return bytes([0x10]) + _varint(len(body)) + body


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    body = _string(topic) + struct.pack("!H", packet_id) + payload
    return bytes([0x32]) + _varint(len(body)) + body  # PUBLISH, QoS 1


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, await reader.readexactly(length)


class Device:
    """One connection: connect, publish at QoS 1 and wait for each PUBACK, disconnect."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._next_id = 0

    @classmethod
    async def connect(
        cls, host: str, port: int, tls: ssl.SSLContext, client_id: str, jwt: str
    ) -> Device:
        reader, writer = await asyncio.open_connection(host, port, ssl=tls)
        writer.write(connect_packet(client_id, jwt))
        await writer.drain()
        kind, body = await _read_packet(reader)
        if kind >> 4 != 2 or len(body) != 2:
            writer.close()
            raise ConnectionError(f"expected CONNACK, got packet type {kind >> 4}")
        if body[1]:
            writer.close()
            raise MqttRefused(body[1])
        return cls(reader, writer)

    async def publish_many(self, topic: str, payloads: list[bytes], window: int = 10) -> None:
        """Publish every payload at QoS 1 with up to ``window`` in flight (as an MQTT client
        library with an in-flight limit does); returns when all are acknowledged."""
        pending: set[int] = set()
        sent = 0
        while sent < len(payloads) or pending:
            while sent < len(payloads) and len(pending) < window:
                self._next_id = self._next_id % 65535 + 1
                pending.add(self._next_id)
                self.writer.write(publish_packet(topic, payloads[sent], self._next_id))
                sent += 1
            await self.writer.drain()
            kind, body = await _read_packet(self.reader)
            if kind >> 4 == 4:  # PUBACK
                pending.discard(struct.unpack("!H", body[:2])[0])

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.writer.write(b"\xe0\x00")
            await self.writer.drain()
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()
