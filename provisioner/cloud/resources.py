"""The Cloud IoT v1 resources on the wire: request bodies in, camelCase JSON out.

Parsing follows proto3 JSON, because that is what Cloud IoT clients produce: field names in
lowerCamelCase or their proto snake_case, enums as names or numbers, unknown names refused
(a silently dropped field would be a setting the caller believes is applied). Output-only
fields (``name``, ``numId``) are accepted and ignored so a device read back can be re-sent.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from typing import TYPE_CHECKING, Any, TypeVar

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
    EventNotificationConfig,
    NewDevice,
    RegistryChanges,
    StoredDevice,
    StoredRegistry,
)

if TYPE_CHECKING:
    from provisioner.cloud.device_data import DeviceConfig, DeviceState

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
# What PATCH may change (snake_case update mask paths), as in Cloud IoT; a sub-field path
# (``mqtt_config.mqtt_enabled_state``) stands for its top-level field.
DEVICE_UPDATABLE = frozenset(
    {"credentials", "blocked", "metadata", "log_level", "gateway_config.gateway_auth_method"}
)
REGISTRY_UPDATABLE = frozenset(
    {
        "credentials",
        "log_level",
        "mqtt_config",
        "http_config",
        "event_notification_configs",
        "state_notification_config",
    }
)
_SUBFIELD_PATHS = {
    "mqtt_config.mqtt_enabled_state": "mqtt_config",
    "http_config.http_enabled_state": "http_config",
    "state_notification_config.pubsub_topic_name": "state_notification_config",
}
# Registry fields Cloud IoT could update that this registry does not keep (none left).
REGISTRY_UNSUPPORTED: frozenset[str] = frozenset()
MAX_EVENT_NOTIFICATION_CONFIGS = 10
# A Pub/Sub topic name, as Cloud IoT checked ``pubsubTopicName``: the project part is free
# here (projects are not checked, see check_parent), the topic id follows Pub/Sub's rule.
_TOPIC = re.compile(r"projects/[^/\s]{1,255}/topics/([a-zA-Z][a-zA-Z0-9\-_.~+%]{2,254})")
_SUBFOLDER = re.compile(r"[^\s#+]{0,256}")
# Reserved by Google for its own resources (ids, topic ids).
RESERVED_PREFIX = "goog"


class MqttState(IntEnum):
    MQTT_STATE_UNSPECIFIED = 0
    MQTT_ENABLED = 1
    MQTT_DISABLED = 2


class HttpState(IntEnum):
    HTTP_STATE_UNSPECIFIED = 0
    HTTP_ENABLED = 1
    HTTP_DISABLED = 2


class GatewayType(IntEnum):
    GATEWAY_TYPE_UNSPECIFIED = 0
    GATEWAY = 1
    NON_GATEWAY = 2


class GatewayAuthMethod(IntEnum):
    GATEWAY_AUTH_METHOD_UNSPECIFIED = 0
    ASSOCIATION_ONLY = 1
    DEVICE_AUTH_TOKEN_ONLY = 2
    ASSOCIATION_AND_DEVICE_AUTH_TOKEN = 3


E = TypeVar("E", bound=IntEnum)


def parse_enum(raw: object, enum: type[E], what: str) -> E:
    """A proto3 enum given as a name or a number (absent: the zero value)."""
    if raw is None:
        return enum(0)
    if isinstance(raw, str) and raw in enum.__members__:
        return enum[raw]
    if isinstance(raw, int) and not isinstance(raw, bool) and raw in {int(m) for m in enum}:
        return enum(raw)
    raise ApiError(
        Code.INVALID_ARGUMENT,
        f"Invalid value at '{what}' ({_shown(repr(raw))}); expected one of "
        f"{', '.join(enum.__members__)}.",
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


class GatewayConfigIn(_Wire):
    gateway_type: Any = None  # a name or a number: checked by parse_enum
    gateway_auth_method: Any = None
    last_accessed_gateway_id: Any = None  # output only
    last_accessed_gateway_time: Any = None  # output only


class DeviceIn(_Wire):
    id: StrictStr | None = None
    name: StrictStr | None = None  # output only
    num_id: Any = None  # output only
    credentials: list[DeviceCredentialIn] | None = None
    blocked: StrictBool | None = None
    metadata: dict[StrictStr, StrictStr] | None = None
    log_level: Any = None  # a name or a number: checked by parse_log_level
    gateway_config: GatewayConfigIn | None = None
    # Output only: accepted and ignored, so a device read back can be sent again.
    last_heartbeat_time: Any = None
    last_event_time: Any = None
    last_state_time: Any = None
    last_config_ack_time: Any = None
    last_config_send_time: Any = None
    last_error_time: Any = None
    last_error_status: Any = None
    config: Any = None
    state: Any = None


class PublicKeyCertificateIn(_Wire):
    format: Any = None
    certificate: StrictStr | None = None
    x509_details: Any = None  # output only


class RegistryCredentialIn(_Wire):
    public_key_certificate: PublicKeyCertificateIn | None = None


class MqttConfigIn(_Wire):
    mqtt_enabled_state: Any = None


class HttpConfigIn(_Wire):
    http_enabled_state: Any = None


class EventNotificationConfigIn(_Wire):
    subfolder_matches: StrictStr | None = None
    pubsub_topic_name: StrictStr | None = None


class StateNotificationConfigIn(_Wire):
    pubsub_topic_name: StrictStr | None = None


class DeviceRegistryIn(_Wire):
    id: StrictStr | None = None
    name: StrictStr | None = None  # output only
    credentials: list[RegistryCredentialIn] | None = None
    log_level: Any = None
    mqtt_config: MqttConfigIn | None = None
    http_config: HttpConfigIn | None = None
    event_notification_configs: list[EventNotificationConfigIn] | None = None
    state_notification_config: StateNotificationConfigIn | None = None


class ModifyConfigIn(_Wire):
    """``modifyCloudToDeviceConfig``'s body (``name`` is the path's, sent again by some
    clients)."""

    name: StrictStr | None = None
    version_to_update: Any = None  # int64: a string or a number in proto3 JSON
    binary_data: StrictStr | None = None


class SendCommandIn(_Wire):
    name: StrictStr | None = None
    binary_data: StrictStr | None = None
    subfolder: StrictStr | None = None


class BindIn(_Wire):
    """``bindDeviceToGateway`` / ``unbindDeviceFromGateway``'s body."""

    parent: StrictStr | None = None
    gateway_id: StrictStr | None = None
    device_id: StrictStr | None = None


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


def check_new_id(value: str | None, kind: str) -> str:
    """An id for a new registry or device: :func:`check_id`, and not in Google's reserved
    ``goog`` prefix (refused by Cloud IoT; existing ones stay reachable, as lookups use
    :func:`check_id` only)."""
    value = check_id(value, kind)
    if value.lower().startswith(RESERVED_PREFIX):
        raise ApiError(
            Code.INVALID_ARGUMENT,
            f"Invalid {kind} ID `{_shown(value)}`: IDs starting with `goog` are reserved.",
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
    gw = body.gateway_config or GatewayConfigIn()
    gateway_type = parse_enum(gw.gateway_type, GatewayType, "device.gateway_config.gateway_type")
    return NewDevice(
        device_id=check_new_id(body.id, "device"),
        credentials=check_credentials(body.credentials or []),
        blocked=bool(body.blocked),
        metadata=check_metadata(body.metadata or {}),
        log_level=parse_log_level(body.log_level, "device"),
        gateway_type=(
            "GATEWAY" if gateway_type is GatewayType.GATEWAY else "NON_GATEWAY"
        ),  # unspecified: a plain device, as in Cloud IoT
        gateway_auth_method=_auth_method(gw.gateway_auth_method),
    )


def _auth_method(raw: object) -> str:
    method = parse_enum(raw, GatewayAuthMethod, "device.gateway_config.gateway_auth_method")
    if method is GatewayAuthMethod.GATEWAY_AUTH_METHOD_UNSPECIFIED:
        return GatewayAuthMethod.ASSOCIATION_ONLY.name
    return method.name


def mask_path(part: str) -> str:
    """An update-mask path in snake_case, whichever spelling the caller used."""
    name = ".".join(to_snake(p.strip()) for p in part.strip().split("."))
    return _SUBFIELD_PATHS.get(name, name)


def parse_update_mask(
    raw: str | None, updatable: frozenset[str], what: str, unsupported: frozenset[str] = frozenset()
) -> frozenset[str]:
    """The snake_case fields an ``updateMask`` names; each must be one PATCH may change."""
    if raw is None or not raw.strip():
        raise ApiError(Code.INVALID_ARGUMENT, f"The {what} update_mask must be specified.")
    fields = set()
    for part in raw.split(","):
        name = mask_path(part)
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
        gateway_auth_method=(
            _auth_method((body.gateway_config or GatewayConfigIn()).gateway_auth_method)
            if "gateway_config.gateway_auth_method" in mask
            else None
        ),
    )


def check_topic(raw: str | None, what: str) -> str:
    """A ``pubsubTopicName``: ``projects/{project}/topics/{topic}``."""
    m = _TOPIC.fullmatch(raw or "")
    if not m or m.group(1).lower().startswith(RESERVED_PREFIX):
        raise ApiError(
            Code.INVALID_ARGUMENT,
            f"Invalid value at '{what}.pubsub_topic_name' ({_shown(repr(raw))}); expected "
            "projects/{project}/topics/{topic}, the topic id starting with a letter (not "
            "`goog`), 3 to 255 characters.",
        )
    return m.group(0)


def event_configs(
    items: list[EventNotificationConfigIn], what: str
) -> tuple[EventNotificationConfig, ...]:
    """Cloud IoT's rules: at most 10, each subfolder prefix once, and the catch-all (an
    empty ``subfolderMatches``) only last, since the first match wins."""
    if len(items) > MAX_EVENT_NOTIFICATION_CONFIGS:
        raise ApiError(
            Code.INVALID_ARGUMENT,
            f"A registry can have at most {MAX_EVENT_NOTIFICATION_CONFIGS} event notification "
            f"configs; {len(items)} were given.",
        )
    out: list[EventNotificationConfig] = []
    seen: set[str] = set()
    for pos, item in enumerate(items):
        where = f"{what}.event_notification_configs[{pos}]"
        sub = item.subfolder_matches or ""
        if not _SUBFOLDER.fullmatch(sub):
            raise ApiError(
                Code.INVALID_ARGUMENT,
                f"Invalid value at '{where}.subfolder_matches': at most 256 characters, no "
                "whitespace, `#` or `+`.",
            )
        if sub in seen:
            raise ApiError(
                Code.INVALID_ARGUMENT,
                f"Invalid value at '{where}.subfolder_matches': `{_shown(sub)}` is already "
                "used by another event notification config.",
            )
        if not sub and pos != len(items) - 1:
            raise ApiError(
                Code.INVALID_ARGUMENT,
                f"Invalid value at '{where}.subfolder_matches': only the last event "
                "notification config may have an empty subfolder_matches.",
            )
        seen.add(sub)
        out.append(EventNotificationConfig(sub, check_topic(item.pubsub_topic_name, where)))
    return tuple(out)


def _state_topic(body: DeviceRegistryIn, what: str) -> str:
    """The state notification topic ("" = none)."""
    cfg = body.state_notification_config
    if cfg is None or not cfg.pubsub_topic_name:
        return ""
    return check_topic(cfg.pubsub_topic_name, f"{what}.state_notification_config")


def _mqtt_enabled(body: DeviceRegistryIn, what: str) -> bool:
    raw = (body.mqtt_config or MqttConfigIn()).mqtt_enabled_state
    state = parse_enum(raw, MqttState, f"{what}.mqtt_config.mqtt_enabled_state")
    return state is not MqttState.MQTT_DISABLED  # unspecified: enabled, as in Cloud IoT


def _http_enabled(body: DeviceRegistryIn, what: str) -> bool:
    raw = (body.http_config or HttpConfigIn()).http_enabled_state
    state = parse_enum(raw, HttpState, f"{what}.http_config.http_enabled_state")
    return state is not HttpState.HTTP_DISABLED


@dataclass(frozen=True)
class NewRegistrySettings:
    """The device-plane settings of a registry create request."""

    mqtt_enabled: bool
    http_enabled: bool
    event_notification_configs: tuple[EventNotificationConfig, ...]
    state_notification_topic: str | None


def new_registry_settings(body: DeviceRegistryIn) -> NewRegistrySettings:
    what = "device_registry"
    return NewRegistrySettings(
        mqtt_enabled=_mqtt_enabled(body, what),
        http_enabled=_http_enabled(body, what),
        event_notification_configs=event_configs(body.event_notification_configs or [], what),
        state_notification_topic=_state_topic(body, what) or None,
    )


def registry_changes(body: DeviceRegistryIn, mask: frozenset[str]) -> RegistryChanges:
    """A registry PATCH limited to its mask; a masked field absent from the body takes its
    default (MQTT/HTTP enabled, no notification configs)."""
    what = "device_registry"
    return RegistryChanges(
        credentials=(
            check_registry_credentials(body.credentials or []) if "credentials" in mask else None
        ),
        log_level=parse_log_level(body.log_level, what) if "log_level" in mask else None,
        mqtt_enabled=_mqtt_enabled(body, what) if "mqtt_config" in mask else None,
        http_enabled=_http_enabled(body, what) if "http_config" in mask else None,
        event_notification_configs=(
            event_configs(body.event_notification_configs or [], what)
            if "event_notification_configs" in mask
            else None
        ),
        state_notification_topic=(
            _state_topic(body, what) if "state_notification_config" in mask else None
        ),
    )


def decode_binary(raw: str | None, what: str) -> bytes:
    """A proto3 ``bytes`` field: standard base64, or the URL-safe alphabet some clients
    (Google's own HTTP sample) send; padding optional."""
    if not raw:
        return b""
    text = raw.strip()
    try:
        return base64.b64decode(
            text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True
        )
    except (binascii.Error, ValueError):
        raise ApiError(
            Code.INVALID_ARGUMENT, f"Invalid value at '{what}': not valid base64."
        ) from None


def parse_int64(raw: object, what: str) -> int:
    """An int64 in proto3 JSON: a number or a decimal string (absent: 0)."""
    if raw is None or raw == "":
        return 0
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str) and re.fullmatch(r"-?[0-9]{1,19}", raw):
        value = int(raw)
    else:
        raise ApiError(Code.INVALID_ARGUMENT, f"Invalid value at '{what}': not an int64.")
    if not -(2**63) <= value < 2**63:
        raise ApiError(Code.INVALID_ARGUMENT, f"Invalid value at '{what}': not an int64.")
    return value


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
    out["mqttConfig"] = {
        "mqttEnabledState": _enum(
            MqttState.MQTT_ENABLED if reg.mqtt_enabled else MqttState.MQTT_DISABLED,
            MqttState,
            how,
        )
    }
    out["httpConfig"] = {
        "httpEnabledState": _enum(
            HttpState.HTTP_ENABLED if reg.http_enabled else HttpState.HTTP_DISABLED,
            HttpState,
            how,
        )
    }
    if reg.event_notification_configs:
        out["eventNotificationConfigs"] = [
            {"subfolderMatches": c.subfolder_matches, "pubsubTopicName": c.topic}
            if c.subfolder_matches
            else {"pubsubTopicName": c.topic}
            for c in reg.event_notification_configs
        ]
    if reg.state_notification_topic:
        out["stateNotificationConfig"] = {"pubsubTopicName": reg.state_notification_topic}
    if reg.log_level:
        out["logLevel"] = _enum(reg.log_level, LogLevel, how)
    return out


def timestamp(when: datetime) -> str:
    """A google.protobuf.Timestamp in proto3 JSON (RFC 3339, UTC, ``Z``)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode_binary(data: bytes) -> str:
    return base64.b64encode(data).decode()


def config_json(config: DeviceConfig) -> dict[str, Any]:
    """A DeviceConfig; ``version`` is an int64, hence a string, and empty data is left out."""
    out: dict[str, Any] = {
        "version": str(config.version),
        "cloudUpdateTime": timestamp(config.cloud_update_time),
    }
    if config.device_ack_time is not None:
        out["deviceAckTime"] = timestamp(config.device_ack_time)
    if config.data:
        out["binaryData"] = encode_binary(config.data)
    return out


def state_json(state: DeviceState) -> dict[str, Any]:
    out: dict[str, Any] = {"updateTime": timestamp(state.update_time)}
    if state.data:
        out["binaryData"] = encode_binary(state.data)
    return out


def device_json(
    reg: StoredRegistry,
    dev: StoredDevice,
    how: Rendering,
    fields: frozenset[str] = DEVICE_FIELDS,
    config: DeviceConfig | None = None,
    state: DeviceState | None = None,
) -> dict[str, Any]:
    """A Device resource; ``fields`` (snake_case) limits it as a list field mask does.
    ``config`` / ``state`` are the device's latest (the caller reads them: ``device_data``);
    unset times are left out, as in proto3 JSON."""
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
    for name in (
        "last_heartbeat_time",
        "last_event_time",
        "last_state_time",
        "last_config_ack_time",
        "last_config_send_time",
        "last_error_time",
    ):
        when = getattr(dev, name)
        if when is not None:
            full[name] = timestamp(when)
    if dev.last_error_status:
        full["last_error_status"] = dict(dev.last_error_status)
    if config is not None:
        full["config"] = config_json(config)
    if state is not None:
        full["state"] = state_json(state)
    gateway: dict[str, Any] = {
        "gatewayType": _enum(GatewayType[dev.gateway_type], GatewayType, how),
        "gatewayAuthMethod": _enum(
            GatewayAuthMethod[dev.gateway_auth_method], GatewayAuthMethod, how
        ),
    }
    if dev.last_accessed_gateway_id:
        gateway["lastAccessedGatewayId"] = dev.last_accessed_gateway_id
    if dev.last_accessed_gateway_time is not None:
        gateway["lastAccessedGatewayTime"] = timestamp(dev.last_accessed_gateway_time)
    full["gateway_config"] = gateway
    return {to_camel(k): v for k, v in full.items() if k in fields}


def parse_field_mask(raw: str | None) -> frozenset[str]:
    """The fields a device list returns: id and numId, plus those a ``fieldMask`` names, as
    Cloud IoT did ("The fields id and num_id are always returned, along with any other
    fields specified")."""
    fields = set(ALWAYS_LISTED)
    if not raw or not raw.strip():
        return frozenset(fields)
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
