"""The Cloud IoT v1 resources on the wire: request bodies in, camelCase JSON out.

Parsing follows proto3 JSON, because that is what Cloud IoT clients produce: field names in
lowerCamelCase or their proto snake_case, enums as names or numbers, unknown names refused
(a silently dropped field would be a setting the caller believes is applied). Output-only
fields (``name``, ``numId``) are accepted and ignored so a device read back can be re-sent.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr, ValidationError
from pydantic.alias_generators import to_camel, to_snake

from provisioner.cloud.certificates import (
    MAX_REGISTRY_CREDENTIALS,
    RegistryCertificate,
    make_registry_certificate,
    x509_details,
)
from provisioner.cloud.credentials import (
    MAX_CREDENTIALS,
    Credential,
    InvalidCredential,
    make_credential,
)
from provisioner.cloud.status import ApiError, Code
from provisioner.cloud.store import (
    NUM_ID_MAX,
    DeviceChanges,
    NewDevice,
    StoredDevice,
    StoredRegistry,
)

ID_PATTERN = r"[a-zA-Z][a-zA-Z0-9\-_.+~%]{2,254}"
_ID = re.compile(ID_PATTERN)
# A numId as a caller may write it: ASCII digits only (str.isdigit also takes "²" and
# other Unicode digits, which int() then refuses), at most uint64's 20.
_NUM_ID = re.compile(r"[0-9]{1,20}")
_META_KEY = re.compile(r"[a-zA-Z][a-zA-Z0-9\-_.+~%]+")
META_KEY_MAX_BYTES = 127
META_VALUE_MAX_BYTES = 32 * 1024
META_TOTAL_MAX_BYTES = 256 * 1024 - 1
META_MAX_PAIRS = 500

# Every Device field of Cloud IoT v1 (snake_case), for field masks: asking for one this
# registry does not track yet is valid and simply returns nothing for it, as an unset field.
DEVICE_FIELDS = frozenset(
    {
        "id",
        "name",
        "num_id",
        "credentials",
        "last_heartbeat_time",
        "last_event_time",
        "last_state_time",
        "last_config_ack_time",
        "last_config_send_time",
        "blocked",
        "last_error_time",
        "last_error_status",
        "config",
        "state",
        "log_level",
        "metadata",
        "gateway_config",
    }
)
ALWAYS_LISTED = frozenset({"id", "num_id"})
# What PATCH may change (snake_case update mask paths), as in Cloud IoT.
DEVICE_UPDATABLE = frozenset({"credentials", "blocked", "metadata", "log_level"})
REGISTRY_UPDATABLE = frozenset({"credentials", "log_level"})
# Registry fields Cloud IoT could update that this registry does not keep.
REGISTRY_UNSUPPORTED = frozenset(
    {"event_notification_configs", "state_notification_config", "mqtt_config", "http_config"}
)


class LogLevel(IntEnum):
    """``google.cloud.iot.v1.LogLevel``: names and numbers as in the proto."""

    LOG_LEVEL_UNSPECIFIED = 0
    NONE = 10
    ERROR = 20
    INFO = 30
    DEBUG = 40


def parse_log_level(raw: object, what: str) -> int:
    """A LogLevel given as a name or a proto3 enum number (absent: unspecified)."""
    if raw is None:
        return 0
    if isinstance(raw, str) and raw in LogLevel.__members__:
        return int(LogLevel[raw])
    if isinstance(raw, int) and not isinstance(raw, bool) and raw in set(LogLevel):
        return raw
    raise ApiError(
        Code.INVALID_ARGUMENT,
        f"Invalid value at '{what}.log_level' ({_shown(repr(raw))}); expected one of "
        f"{', '.join(LogLevel.__members__)}.",
    )


class _Wire(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class PublicKeyIn(_Wire):
    format: Any = None  # a name or a number: checked by credentials.parse_format
    key: StrictStr | None = None


class DeviceCredentialIn(_Wire):
    public_key: PublicKeyIn | None = None
    expiration_time: Any = None


class DeviceIn(_Wire):
    id: StrictStr | None = None
    name: StrictStr | None = None  # output only
    num_id: Any = None  # output only
    credentials: list[DeviceCredentialIn] | None = None
    blocked: StrictBool | None = None
    metadata: dict[StrictStr, StrictStr] | None = None
    log_level: Any = None  # a name or a number: checked by parse_log_level


class PublicKeyCertificateIn(_Wire):
    format: Any = None
    certificate: StrictStr | None = None
    x509_details: Any = None  # output only


class RegistryCredentialIn(_Wire):
    public_key_certificate: PublicKeyCertificateIn | None = None


class DeviceRegistryIn(_Wire):
    id: StrictStr | None = None
    name: StrictStr | None = None  # output only
    credentials: list[RegistryCredentialIn] | None = None
    log_level: Any = None


M = TypeVar("M", bound=_Wire)


def parse_body(raw: bytes, model: type[M], what: str) -> M:
    """The request body as ``model``, or INVALID_ARGUMENT in Google's wording."""
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise ApiError(Code.INVALID_ARGUMENT, _describe(exc, what)) from None


def _describe(exc: ValidationError, what: str) -> str:
    err = exc.errors()[0]
    if err["type"] == "json_invalid":
        return f"Invalid JSON payload received. {err['msg']}."
    loc = list(err["loc"])
    if err["type"] == "extra_forbidden" and loc:
        return (
            f'Invalid JSON payload received. Unknown name "{loc[-1]}" at '
            f"'{_path(what, loc[:-1])}': Cannot find field."
        )
    return f"Invalid value at '{_path(what, loc)}': {err['msg']}."


def _path(what: str, loc: list[int | str]) -> str:
    return what + "".join(f"[{p}]" if isinstance(p, int) else f".{to_snake(p)}" for p in loc)


def _shown(value: str) -> str:
    return value if len(value) <= 64 else value[:61] + "..."


def check_id(value: str | None, kind: str) -> str:
    """A device or registry id: Cloud IoT's rule, which also keeps ids apart from numIds."""
    if not value:
        raise ApiError(Code.INVALID_ARGUMENT, f"The {kind} ID must be specified.")
    if not _ID.fullmatch(value):
        raise ApiError(
            Code.INVALID_ARGUMENT,
            f"Invalid {kind} ID `{_shown(value)}`: it must start with a letter and have 3 to "
            "255 characters, each a letter, a digit or one of - _ . + ~ %.",
        )
    return value


def check_parent(project: str, location: str) -> None:
    """Project and location are free-form here (no cloud project to check them against), but
    bounded, as the database columns are."""
    for kind, value in (("project", project), ("location", location)):
        if not 0 < len(value) <= 255:
            raise ApiError(Code.INVALID_ARGUMENT, f"The {kind} must have 1 to 255 characters.")


def check_metadata(meta: dict[str, str]) -> dict[str, str]:
    """Cloud IoT's metadata limits, so nothing accepted here would be refused there."""
    if len(meta) > META_MAX_PAIRS:
        raise ApiError(
            Code.INVALID_ARGUMENT, f"A device can have at most {META_MAX_PAIRS} metadata pairs."
        )
    total = 0
    for key, value in meta.items():
        kb, vb = len(key.encode()), len(value.encode())
        if not _META_KEY.fullmatch(key) or kb > META_KEY_MAX_BYTES:
            raise ApiError(
                Code.INVALID_ARGUMENT,
                f"Invalid metadata key `{_shown(key)}`: it must match "
                f"[a-zA-Z][a-zA-Z0-9-_.+~%]+ and be under 128 bytes.",
            )
        if vb > META_VALUE_MAX_BYTES:
            raise ApiError(
                Code.INVALID_ARGUMENT, f"The metadata value of `{key}` is larger than 32 KB."
            )
        total += kb + vb
    if total > META_TOTAL_MAX_BYTES:
        raise ApiError(Code.INVALID_ARGUMENT, "The device metadata must be less than 256 KB.")
    return meta


def check_credentials(items: list[DeviceCredentialIn]) -> tuple[Credential, ...]:
    if len(items) > MAX_CREDENTIALS:
        raise ApiError(
            Code.INVALID_ARGUMENT,
            f"A device can have at most {MAX_CREDENTIALS} credentials; {len(items)} were given.",
        )
    out = []
    for pos, item in enumerate(items):
        pk = item.public_key
        if pk is None or not pk.key:
            raise ApiError(
                Code.INVALID_ARGUMENT, f"The device credential in position {pos} has no key."
            )
        try:
            out.append(make_credential(pk.format, pk.key, item.expiration_time, pos))
        except InvalidCredential as exc:
            raise ApiError(Code.INVALID_ARGUMENT, str(exc)) from None
    return tuple(out)


def new_device(body: DeviceIn) -> NewDevice:
    """A create request checked against every rule the store does not enforce itself (the
    registry CA rule is the caller's: it needs the registry)."""
    return NewDevice(
        device_id=check_id(body.id, "device"),
        credentials=check_credentials(body.credentials or []),
        blocked=bool(body.blocked),
        metadata=check_metadata(body.metadata or {}),
        log_level=parse_log_level(body.log_level, "device"),
    )


def parse_update_mask(
    raw: str | None, updatable: frozenset[str], what: str, unsupported: frozenset[str] = frozenset()
) -> frozenset[str]:
    """The snake_case fields an ``updateMask`` names; each must be one PATCH may change."""
    if raw is None or not raw.strip():
        raise ApiError(Code.INVALID_ARGUMENT, f"The {what} update_mask must be specified.")
    fields = set()
    for part in raw.split(","):
        name = to_snake(part.strip())
        if name in unsupported:
            raise ApiError(
                Code.UNIMPLEMENTED, f"Updating {what}.{name} is not supported by this registry."
            )
        if name not in updatable:
            raise ApiError(
                Code.INVALID_ARGUMENT,
                f"Invalid update_mask path `{_shown(part)}` for {what}; updatable: "
                f"{', '.join(sorted(updatable))}.",
            )
        fields.add(name)
    return frozenset(fields)


def device_changes(body: DeviceIn, mask: frozenset[str]) -> DeviceChanges:
    """A PATCH body limited to its update mask (fields outside it are ignored, as Cloud IoT
    ignores them), each masked field validated as on create; a masked field absent from the
    body clears it."""
    return DeviceChanges(
        credentials=check_credentials(body.credentials or []) if "credentials" in mask else None,
        blocked=bool(body.blocked) if "blocked" in mask else None,
        metadata=check_metadata(body.metadata or {}) if "metadata" in mask else None,
        log_level=parse_log_level(body.log_level, "device") if "log_level" in mask else None,
    )


def check_registry_credentials(
    items: list[RegistryCredentialIn],
) -> tuple[RegistryCertificate, ...]:
    if len(items) > MAX_REGISTRY_CREDENTIALS:
        raise ApiError(
            Code.INVALID_ARGUMENT,
            f"A registry can have at most {MAX_REGISTRY_CREDENTIALS} credentials; "
            f"{len(items)} were given.",
        )
    out = []
    for pos, item in enumerate(items):
        pkc = item.public_key_certificate
        if pkc is None or not pkc.certificate:
            raise ApiError(
                Code.INVALID_ARGUMENT,
                f"The registry credential in position {pos} has no certificate.",
            )
        try:
            out.append(make_registry_certificate(pkc.format, pkc.certificate, pos))
        except InvalidCredential as exc:
            raise ApiError(Code.INVALID_ARGUMENT, str(exc)) from None
    return tuple(out)


# --- output ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rendering:
    """How the caller wants JSON: enums as numbers when it asked with
    ``$alt=json;enum-encoding=int`` (the official REST client does)."""

    int_enums: bool = False

    @classmethod
    def from_query(cls, params: dict[str, str]) -> Rendering:
        alt = params.get("$alt") or params.get("alt") or ""
        return cls(int_enums="enum-encoding=int" in alt.split(";"))


def _enum(value: int, enum: type[IntEnum], how: Rendering) -> int | str:
    return value if how.int_enums else enum(value).name


def registry_json(reg: StoredRegistry, how: Rendering | None = None) -> dict[str, Any]:
    """A DeviceRegistry; as in proto3 JSON, unset fields (no CAs, no log level) are left out,
    and ``x509Details`` is filled in from each certificate."""
    how = how or Rendering()
    out: dict[str, Any] = {"id": reg.registry_id, "name": reg.name}
    if reg.credentials:
        out["credentials"] = [
            {
                "publicKeyCertificate": {
                    "format": 1 if how.int_enums else "X509_CERTIFICATE_PEM",
                    "certificate": c.certificate,
                    "x509Details": x509_details(c),
                }
            }
            for c in reg.credentials
        ]
    if reg.log_level:
        out["logLevel"] = _enum(reg.log_level, LogLevel, how)
    return out


def device_json(
    reg: StoredRegistry,
    dev: StoredDevice,
    how: Rendering,
    fields: frozenset[str] = DEVICE_FIELDS,
) -> dict[str, Any]:
    """A Device resource; ``fields`` (snake_case) limits it as a list field mask does."""
    full: dict[str, Any] = {
        "id": dev.device_id,
        "name": f"{reg.name}/devices/{dev.num_id}",  # ends in numId, as Cloud IoT's does
        "num_id": str(dev.num_id),  # uint64: a string in proto3 JSON
        "credentials": [
            {
                "publicKey": {
                    "format": c.format.value if how.int_enums else c.format.name,
                    "key": c.key,
                },
                "expirationTime": c.expiration_time,
            }
            for c in dev.credentials
        ],
        "blocked": dev.blocked,
        "metadata": dict(dev.metadata),
    }
    if dev.log_level:
        full["log_level"] = _enum(dev.log_level, LogLevel, how)
    return {to_camel(k): v for k, v in full.items() if k in fields}


def parse_field_mask(raw: str | None) -> frozenset[str]:
    """The fields a device list returns: with a ``fieldMask``, id and numId plus those it
    names, as Cloud IoT does. Without one, every field: Cloud IoT would return only id and
    numId, but the walking skeleton's callers (and tests) read credentials from a plain
    list; full parity is decided with the official-client work."""
    if not raw or not raw.strip():
        return DEVICE_FIELDS
    fields = set(ALWAYS_LISTED)
    for part in raw.split(","):
        name = to_snake(part.strip())
        if not name:
            continue
        if name not in DEVICE_FIELDS:
            raise ApiError(Code.INVALID_ARGUMENT, f"Invalid field mask path `{_shown(part)}`.")
        fields.add(name)
    return frozenset(fields)


def parse_id_filter(values: list[str]) -> frozenset[str] | None:
    """``deviceIds`` (repeated, or comma-separated as some clients send): None when absent."""
    ids = {v.strip() for raw in values for v in raw.split(",") if v.strip()}
    for i in ids:
        if not _ID.fullmatch(i):
            raise ApiError(Code.INVALID_ARGUMENT, f"Invalid device ID `{_shown(i)}` in deviceIds.")
    return frozenset(ids) or None


def parse_num_id_filter(values: list[str]) -> frozenset[int] | None:
    """``deviceNumIds`` (uint64 on the wire, sent as strings or numbers): None when absent.
    Beyond the largest numId this registry assigns (the database's signed 64-bit range) a
    value is refused rather than handed to the database driver, which cannot bind it."""
    out = set()
    for raw in values:
        for v in raw.split(","):
            v = v.strip()
            if not v:
                continue
            if not _NUM_ID.fullmatch(v) or int(v) > NUM_ID_MAX:
                raise ApiError(
                    Code.INVALID_ARGUMENT,
                    f"Invalid value for deviceNumIds: `{_shown(v)}`; a numId is a decimal "
                    f"number up to {NUM_ID_MAX}.",
                )
            out.add(int(v))
    return frozenset(out) or None


def check_device_ident(ident: str) -> str:
    """A device as a path names it: its id, or its numId (ASCII digits up to the largest
    numId this registry assigns). Anything else is refused before it reaches the store."""
    if _NUM_ID.fullmatch(ident):
        if int(ident) > NUM_ID_MAX:
            raise ApiError(
                Code.INVALID_ARGUMENT,
                f"Invalid device numId `{_shown(ident)}`: the largest is {NUM_ID_MAX}.",
            )
        return ident
    return check_id(ident, "device")


def encode_page_token(after_id: str) -> str:
    return base64.urlsafe_b64encode(after_id.encode()).decode().rstrip("=")


def decode_page_token(token: str | None) -> str | None:
    """The device (or registry) id the previous page ended at (pages are keyed, not offsets,
    so resources created meanwhile neither repeat nor vanish)."""
    if not token:
        return None
    try:
        after = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except ValueError:  # binascii.Error, UnicodeDecodeError, or a non-ASCII token
        after = ""
    if not _ID.fullmatch(after):
        raise ApiError(Code.INVALID_ARGUMENT, "The page token is invalid.")
    return after
