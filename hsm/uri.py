"""RFC 7512 PKCS#11 URIs: how tokens and keys are named (slot numbers are not stable)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

_PATH_ATTRS = ("token", "object", "id", "type", "manufacturer", "serial", "model")
_QUERY_ATTRS = ("module-path", "pin-source")


@dataclass(frozen=True)
class Pkcs11Uri:
    """A parsed ``pkcs11:`` URI. ``pin-value`` is rejected: PINs never live in URIs here."""

    token: str | None = None
    object: str | None = None
    id: bytes | None = None
    type: str | None = None
    module_path: str | None = None
    pin_source: str | None = None

    @classmethod
    def parse(cls, uri: str) -> Pkcs11Uri:
        if not uri.startswith("pkcs11:"):
            raise ValueError("a PKCS#11 URI starts with 'pkcs11:'")
        body = uri.removeprefix("pkcs11:")
        path, _, query = body.partition("?")
        values: dict[str, str] = {}
        for part, allowed, sep in ((path, _PATH_ATTRS, ";"), (query, _QUERY_ATTRS, "&")):
            for item in filter(None, part.split(sep)):
                name, eq, raw = item.partition("=")
                if not eq:
                    raise ValueError(f"PKCS#11 URI attribute without a value: {name!r}")
                if name == "pin-value":
                    raise ValueError("pin-value is not accepted: use pin-source=file:...")
                if name not in allowed:
                    raise ValueError(f"unsupported PKCS#11 URI attribute {name!r}")
                if name in values:
                    raise ValueError(f"PKCS#11 URI attribute {name!r} given twice")
                values[name] = raw
        raw_id = values.get("id")
        return cls(
            token=unquote(values["token"]) if "token" in values else None,
            object=unquote(values["object"]) if "object" in values else None,
            id=unquote_to_bytes(raw_id) if raw_id is not None else None,
            type=values.get("type"),
            module_path=unquote(values["module-path"]) if "module-path" in values else None,
            pin_source=unquote(values["pin-source"]) if "pin-source" in values else None,
        )

    def __str__(self) -> str:
        path = []
        if self.token is not None:
            path.append("token=" + quote(self.token, safe=""))
        if self.object is not None:
            path.append("object=" + quote(self.object, safe=""))
        if self.id is not None:
            path.append("id=" + "".join(f"%{b:02x}" for b in self.id))
        if self.type is not None:
            path.append("type=" + self.type)
        query = []
        if self.module_path is not None:
            query.append("module-path=" + quote(self.module_path, safe="/"))
        if self.pin_source is not None:
            query.append("pin-source=" + quote(self.pin_source, safe="/:"))
        return "pkcs11:" + ";".join(path) + ("?" + "&".join(query) if query else "")


def unquote_to_bytes(raw: str) -> bytes:
    from urllib.parse import unquote_to_bytes as _u

    return _u(raw)
