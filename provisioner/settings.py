"""Settings: one TOML file plus ``PROVISIONER_*`` environment variables, on embedded defaults.

Precedence (highest first): environment variables (``PROVISIONER_HSM__PIN_FILE=...``, nested
with ``__``), the TOML file, the defaults below. Every default lives under ``./var`` so a
fresh checkout runs with no configuration at all. :func:`load_settings` returns a new frozen
object each call; nothing here is global, so tests simply build their own.

Secrets are never settings values: PINs and API tokens are read from files whose *paths* are
settings (``pin_file``, ``token_file``), so a settings dump never contains one.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from provisioner.chips.profile import ChipProfile
from provisioner.errors import ConfigError

CONFIG_ENV = "PROVISIONER_CONFIG"
DEFAULT_CONFIG_NAME = "provisioner.toml"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HsmSettings(_Section):
    """Where the CA keys live. ``module`` is any PKCS#11 library; the default is p11-kit's
    proxy, which loads SoftHSM with OS locking so it survives threads (research/hsm.md)."""

    module: str = "/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so"
    softhsm_conf: Path | None = None  # default: <var>/hsm/softhsm2.conf; None disables
    token_dir: Path | None = None  # default: <var>/hsm/tokens
    factory_token: str = "factory"
    root_token: str = "root"
    pin_file: Path | None = None  # default: <var>/hsm/factory.pin
    root_pin_file: Path | None = None  # default: <var>/hsm/root.pin
    ca_key_label: str = "intermediate-ca"  # the first intermediate; rotations add -2, -3 ...
    root_key_label: str = "root-ca"
    # Where the factory token's PIN comes from: file:/path (RFC 7512 pin-source) or
    # "prompt" (interactive CLI only; a worker cannot type). Default: file:<pin_file>.
    pin_source: str | None = None
    # One RFC 7512 URI instead of the fields above, e.g.
    # "pkcs11:token=factory;object=intermediate-ca?module-path=/usr/lib/x.so
    #  &pin-source=file:/etc/factory.pin" (one line)
    token_uri: str | None = None
    # The signer's connection to the token: sessions, acquire timeout, reconnect backoff.
    session_pool_size: int = Field(default=2, ge=1, le=64)
    acquire_timeout_s: float = Field(default=10.0, gt=0)
    retry_base_s: float = Field(default=1.0, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _expand_token_uri(cls, data: Any) -> Any:
        """``token_uri`` sets the token, key label, module and PIN source it names."""
        if not isinstance(data, dict) or not data.get("token_uri"):
            return data
        from hsm.uri import Pkcs11Uri

        uri = Pkcs11Uri.parse(str(data["token_uri"]))
        if uri.token is None:
            raise ValueError("token_uri must name the token (pkcs11:token=...)")
        fields = {
            "factory_token": uri.token,
            "ca_key_label": uri.object,
            "module": uri.module_path,
            "pin_source": uri.pin_source,
        }
        return {**data, **{k: v for k, v in fields.items() if v is not None}}


class ProfileSettings(_Section):
    """The device certificate profile (issue 4 moves this to validated TOML profiles).

    Every profile must survive Microchip's compressed format byte for byte, so what it
    cannot encode is refused here, when the settings load, never at a chip: certificates
    start on the hour and last ``validity_years`` whole years, or for ever
    (``validity_years = 0``: notAfter 9999-12-31 23:59:59, as RFC 5280 allows for devices).
    An expiry in 2050 or later is GeneralizedTime where earlier ones are UTCTime; one
    compressed template cannot hold both, so such a validity must be "for ever"."""

    organization: str = Field(default="Example Devices Ltd", min_length=1, max_length=64)
    organizational_unit: str | None = Field(default=None, min_length=1, max_length=64)
    validity_years: int = Field(default=15, ge=0, le=31)
    ca_common_name: str = "Factory Intermediate CA"
    root_common_name: str = "Factory Root CA"
    # The CRL distribution point put in every device certificate. ``{ca}`` stands for the
    # issuing intermediate's name (its key label), so each intermediate keeps its own
    # stable URL across rotations. Unset (the default): this line's API,
    # ``<api.public_url>/crl/{ca}.crl`` (filled in when the settings load, so the stations
    # receive the same URL with the chain material). ``""``: no distribution point.
    crl_url: str | None = Field(default=None, max_length=200)
    # The OCSP responder named in every device certificate's authorityInfoAccess. Unset
    # (the default): ``<api.public_url>/ocsp``. ``""``: no authorityInfoAccess.
    ocsp_url: str | None = Field(default=None, max_length=200)

    @field_validator("crl_url", "ocsp_url")
    @classmethod
    def _revocation_url(cls, url: str | None, info: ValidationInfo) -> str | None:
        if not url:  # unset (derived from [api]) or "" (none)
            return url
        name = info.field_name
        if not url.isascii() or not url.startswith(("http://", "https://")):
            raise ValueError(f"{name} must be an ASCII http:// or https:// URL, got {url!r}")
        allowed = "{ca}" if name == "crl_url" else ""
        if any(ch.isspace() for ch in url) or "{" in (url.replace(allowed, "") if allowed else url):
            what = "{ca} is the only placeholder" if allowed else "no placeholders"
            raise ValueError(f"{name}: no spaces, and {what}: {url!r}")
        return url

    def crl_url_for(self, ca_name: str) -> str | None:
        """The distribution point of certificates issued by the intermediate ``ca_name``."""
        return self.crl_url.replace("{ca}", ca_name) if self.crl_url else None

    def with_default_urls(self, api_url: str) -> ProfileSettings:
        """This profile with the unset revocation URLs pointing at the API at ``api_url``
        (device certificates carry a CRL distribution point and an OCSP URL unless the
        profile turns them off with ``""``)."""
        base = api_url.rstrip("/")
        update = {}
        if self.crl_url is None:
            update["crl_url"] = base + "/crl/{ca}.crl"
        if self.ocsp_url is None:
            update["ocsp_url"] = base + "/ocsp"
        if not update:
            return self
        return ProfileSettings.model_validate({**self.model_dump(), **update})

    @field_validator("validity_years")
    @classmethod
    def _compressible_expiry(cls, years: int) -> int:
        last_issue_year = datetime.now(UTC).year + 1  # a profile outlives the day it loads
        if years and last_issue_year + years >= 2050:
            raise ValueError(
                f"{years} years from now reaches 2050, where notAfter becomes GeneralizedTime "
                "and no longer fits the compressed certificate template: use at most "
                f"{2049 - last_issue_year} years, or 0 (no expiry, 9999-12-31)"
            )
        return years


class ChipProfileSettings(_Section):
    """Which slots the chip uses (Trust&GO-like layout, see provisioner/chips/profile.py)."""

    key_slot: int = Field(default=0, ge=0, le=15)
    serial_slot: int = Field(default=8, ge=0, le=15)  # the device certificate's serial
    device_cert_slot: int = Field(default=10, ge=8, le=15)  # compressed device certificate
    signer_key_slot: int = Field(default=11, ge=8, le=15)  # the intermediate's public key
    signer_cert_slot: int = Field(default=12, ge=8, le=15)  # compressed signer certificate
    device_template_id: int = Field(default=8, ge=0, le=15)
    signer_template_id: int = Field(default=7, ge=0, le=15)
    chain_id: int = Field(default=0, ge=0, le=15)

    @model_validator(mode="after")
    def _consistent(self) -> ChipProfileSettings:
        self.profile()  # distinct slots, slot sizes, distinct template IDs
        return self

    def profile(self) -> ChipProfile:
        return ChipProfile(**self.model_dump())


class RegistrySettings(_Section):
    """The device registry that receives each certificate (Cloud IoT v1 shape)."""

    # Which kind of registry receives the certificates: any Cloud IoT v1 endpoint (the
    # built-in one by default), ClearBlade IoT Core (its own client), or AWS IoT (boto3).
    kind: Literal["cloudiot", "clearblade", "aws"] = "cloudiot"
    # Where uploads go. Unset (the default): the built-in registry this machine runs, at
    # listen_host:listen_port, so moving the listener moves the uploads with it.
    url: str | None = None
    project: str = "factory"
    location: str = "local"
    registry: str = "devices"
    token_file: Path | None = None  # default: <var>/registry/upload.token
    timeout_s: float = Field(default=10.0, gt=0)
    # Creates per minute this process sends (Cloud IoT and ClearBlade allow 3,000 device
    # creates+deletes per minute per project, not raisable).
    rate_per_minute: float = Field(default=3000.0, gt=0)
    # ClearBlade: the registry's system key (the token is in token_file, as for Cloud IoT).
    clearblade_system_key: str | None = None
    # AWS IoT: region, optional endpoint (tests: moto) and an IoT policy to attach.
    aws_region: str = "us-east-1"
    aws_endpoint_url: str | None = None
    aws_policy: str | None = None
    # Store and forward: how often the registry worker retries parked uploads, and after
    # how long a pending one counts as lost (its task died with its message).
    sync_interval_s: float = Field(default=60.0, gt=0)
    sync_pending_after_s: float = Field(default=300.0, ge=0)
    # The built-in registry service, when this machine runs it:
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8711, ge=1, le=65535)
    database_url: str | None = None  # default: sqlite:///<var>/registry.db

    @property
    def effective_url(self) -> str:
        """``url``, or the built-in registry's own listener when it is not set."""
        return self.url or local_url(self.listen_host, self.listen_port)


class ApiSettings(_Section):
    """The provisioner's HTTP API (CRLs and CA certificates; public material only)."""

    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8712, ge=1, le=65535)
    # How devices and clouds reach it; unset: derived from listen_host:listen_port.
    public_url: str | None = None

    @property
    def effective_url(self) -> str:
        """``public_url``, or this machine's listener when it is not set."""
        return self.public_url or local_url(self.listen_host, self.listen_port)

    def crl_url(self, name: str) -> str:
        return f"{self.effective_url.rstrip('/')}/crl/{name}.crl"


def local_url(host: str, port: int) -> str:
    """The URL a process on this machine uses to reach a listener on ``host:port``: a
    wildcard address (0.0.0.0, ::) is reached through the loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class AuditSettings(_Section):
    """The audit log's signed checkpoints. The key is its own P-256 key in the factory
    token (never the CA key); ``origin`` names this log in every checkpoint and is the
    note key name auditors configure."""

    origin: str = Field(default="factory.invalid/provisioner-audit", pattern=r"^[^\s+]+$")
    key_label: str = "audit-checkpoint"
    checkpoint_every_events: int = Field(default=1000, ge=1)
    checkpoint_every_s: float = Field(default=60.0, gt=0)
    poll_s: float = Field(default=1.0, gt=0)  # how often the signer looks for work


class LoggingSettings(_Section):
    """What every long-running process writes to ``<var>/log/<name>.log``: one JSON object
    per line, rotated by the supervisor (rename at ``max_bytes``, ``backups`` kept). The
    terminal always gets the human format."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    max_bytes: int = Field(default=10_000_000, ge=10_000)
    backups: int = Field(default=5, ge=1, le=100)


class MetricsSettings(_Section):
    """Prometheus metrics. On the line server (roles line and all) the API serves
    ``/metrics`` for every process of the line; a station PC (role station) serves its
    workers' metrics on ``listen_host:listen_port`` (no user accounts there: bind it to the
    address the line server's Prometheus scrapes, and let the firewall allow only that)."""

    enabled: bool = True
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8713, ge=1, le=65535)


class WebSettings(_Section):
    """The dashboard served by the API process under ``/ui``: signed-in sessions last
    ``session_hours`` (and end at once when the user's token is revoked)."""

    enabled: bool = True
    session_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    # Send the session cookie only over HTTPS (set when the API sits behind TLS).
    secure_cookie: bool = False


class StationSettings(_Section):
    """One station PC and its socket jig."""

    transport: Literal["emulated", "i2c", "hid"] = "emulated"
    sockets: int = Field(default=4, ge=1, le=64)
    i2c_bus: str = "/dev/i2c-1"
    i2c_address: int = 0x6A
    # Who puts chips in an emulated jig: "auto", the emulator's operator (a blank chip for a
    # new device, the device's own chip for a resumed one; the demo), or "manual": sockets
    # stay empty until `provisioner station insert`. Silicon is always fed by hand.
    feed: Literal["auto", "manual"] = "auto"
    # How often a chip error that can pass (no answer, CRC noise on the bus, ECC fault) is
    # retried, per step, before the device fails and the part goes to the reject bin.
    chip_retries: int = Field(default=3, ge=0, le=20)
    # How long an emulated chip takes per command: "zero" (answers at once: tests, the demo)
    # or "datasheet" (cryptoauthlib's execution-time table at the clock divider the chip's
    # config holds, the time silicon takes), so a line can be measured against what real
    # chips allow. Silicon ignores it: it takes its own time.
    chip_timing: Literal["zero", "datasheet"] = "zero"


class BrokerSettings(_Section):
    """The line's Redis. ``unix`` (the one-PC default): a unix socket under the var dir,
    reachable only by this PC's user. ``tls``: a TCP port with TLS both ways (the server
    certificate and every client's from the HSM CA) for stations on other PCs. Both modes
    have ACL users: one per enrolled station, limited to its own keys, and the line's."""

    mode: Literal["unix", "tls"] = "unix"
    host: str = "127.0.0.1"  # how stations reach the broker (the line server's address)
    listen_host: str = "127.0.0.1"  # where the line server's Redis listens (tls mode)
    port: int = Field(default=6390, ge=1, le=65535)


class BridgeSettings(_Section):
    """The MQTT bridge devices in the field connect to: Debian's mosquitto with the
    product's plugin (deploy/mosquitto), which asks the registry server's device plane for
    every decision. The listeners use a P-256 server certificate from the product's CA so a
    device needs EC code and one small root only."""

    enabled: bool = True  # `services run` starts mosquitto with the plugin
    host: str = "127.0.0.1"  # device listeners bind here
    mqtt_port: int = Field(default=8883, ge=1, le=65535)  # MQTT over TLS
    alt_port: int | None = Field(default=None, ge=1, le=65535)  # e.g. 443 (needs privileges)
    wss_port: int | None = Field(default=8884, ge=1, le=65535)  # MQTT over secure WebSockets
    # MQTT over TLS with a client certificate from the product's CA (mTLS) instead of a JWT
    # password: a listener of its own, since mosquitto asks for client certificates per
    # listener (a JWT device on 8883 is never asked for one). None: no mTLS listener.
    mtls_port: int | None = Field(default=8885, ge=1, le=65535)
    # The HTTP device bridge (publishEvent, setState, config) over TLS with an optional
    # client certificate instead of the JWT, served by the registry process with the
    # bridge's certificate. None (default): only the plain registry port (put a proxy in
    # front of it: docs/field.md).
    https_port: int | None = Field(default=None, ge=1, le=65535)
    mosquitto: Path = Path("/usr/sbin/mosquitto")
    # default: <sys.prefix>/lib/provisioner/provisioner_plugin.so (deploy/install.sh builds it)
    plugin: Path | None = None
    names: list[str] = Field(default_factory=lambda: ["localhost", "127.0.0.1"])  # cert SANs
    token_file: Path | None = None  # default <var>/registry/bridge.token (the plugin's)
    hook_allow: list[str] = Field(default_factory=lambda: ["127.0.0.1/32", "::1/128"])
    jwt_refresh_s: int = Field(default=3600, gt=0, le=24 * 3600)  # field device JWT lifetime

    @property
    def plugin_path(self) -> Path:
        """The plugin shared object: ``plugin``, else where deploy/install.sh puts it."""
        import sys

        return self.plugin or Path(sys.prefix) / "lib" / "provisioner" / "provisioner_plugin.so"


class FleetSettings(_Section):
    """Enrollment in the field (``POST /enroll``, ``/identity``, renewal): the policy of
    the identity certificates the HSM CA issues to devices that never passed the line."""

    # Identity certificates: lifetime, and how long before expiry a device may renew.
    identity_validity_days: int = Field(default=365, ge=1, le=3650)
    renew_window_days: int = Field(default=30, ge=1, le=3650)
    # Enrollment tokens: default lifetime and uses when an admin makes one.
    token_ttl_days: int = Field(default=30, ge=1, le=3650)
    token_max_uses: int = Field(default=1, ge=1)
    # The document's compatibility mode: the server generates the device's key for one
    # answer of ``GET /identity`` (never stored). Off: only ``POST /identity`` with a CSR.
    allow_server_keys: bool = True
    # Requests per minute per client address on the device endpoints (tokens guessed or
    # replayed are refused before the database is asked).
    rate_per_minute: int = Field(default=60, ge=1)


class DevicesSettings(_Section):
    """The device-facing HTTPS listener of the line server (enrollment, identity, renewal
    over mTLS): TLS with a P-256 server certificate from the product's CA; a client
    certificate is asked for but optional (renewal needs one, enrollment does not)."""

    enabled: bool = True  # `services run` starts it
    listen_host: str = "127.0.0.1"
    port: int = Field(default=8714, ge=1, le=65535)
    names: list[str] = Field(default_factory=lambda: ["localhost", "127.0.0.1"])  # cert SANs
    # How devices reach it (goes into nothing signed); unset: https://<listen_host>:<port>.
    public_url: str | None = None


class CrlSettings(_Section):
    """When the CRLs are signed again without a revocation (each revocation publishes at
    once): every ``refresh_s``, so a relying party never holds a CRL past its nextUpdate."""

    refresh_s: int = Field(default=3600, ge=10)
    next_update_days: int = Field(default=7, ge=1, le=365)  # intermediates' CRLs
    root_next_update_days: int = Field(default=365, ge=1, le=3650)  # the root's CRL


class ManufacturerSettings(_Section):
    """The manufacturer root that pre-provisioned parts' certificate chains must verify
    against (``provisioner manufacturer trust FILE`` installs it, audited). Only the line
    server reads it; stations are handed its public key by the line."""

    root_file: Path | None = None  # default: <var>/manufacturer/root.pem


class CelerySettings(_Section):
    sign_timeout_s: float = Field(default=60.0, gt=0)
    # How long a station waits for the line server's answer to one request (a step
    # recorded, a socket shown) before it counts the line as unavailable and waits.
    link_timeout_s: float = Field(default=30.0, gt=0)
    task_retry_max: int = Field(default=5, ge=0)
    # How often a device waits for a stopped signer (token lost) before it is failed;
    # the waits back off 1, 2, 4 ... 30 s, so the default covers about 10 minutes.
    hsm_wait_retries: int = Field(default=24, ge=0)


class Settings(BaseSettings):
    """The whole configuration; build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="PROVISIONER_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    var_dir: Path = Path("var")
    # What this PC runs (``services run --role`` overrides it): "all", the line server and
    # its stations on one PC (the demo); "line", the line server only (HSM, database,
    # broker, uploads, audit, API); "station", one station's jig only (``station_id``),
    # which holds no database URL and no PIN and reaches the line through the broker.
    role: Literal["all", "line", "station"] = "all"
    station_id: str | None = None  # role "station": which station this PC is
    # role "station": the line server's API, for `provisioner station enroll`
    line_url: str | None = None
    # role "station": this PC's station identity (key, certificate, pinned chain, broker
    # password); default <var>/identity
    identity_dir: Path | None = None
    database_url: str | None = None  # default: sqlite:///<var>/provisioner.db
    hsm: HsmSettings = HsmSettings()
    profile: ProfileSettings = ProfileSettings()
    chip: ChipProfileSettings = ChipProfileSettings()
    registry: RegistrySettings = RegistrySettings()
    api: ApiSettings = ApiSettings()
    celery: CelerySettings = CelerySettings()
    broker: BrokerSettings = BrokerSettings()
    audit: AuditSettings = AuditSettings()
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()
    web: WebSettings = WebSettings()
    bridge: BridgeSettings = BridgeSettings()
    fleet: FleetSettings = FleetSettings()
    devices: DevicesSettings = DevicesSettings()
    crl: CrlSettings = CrlSettings()
    manufacturer: ManufacturerSettings = ManufacturerSettings()
    stations: dict[str, StationSettings] = Field(
        default_factory=lambda: {"line1": StationSettings()}
    )

    @field_validator("stations")
    @classmethod
    def _station_ids(cls, v: dict[str, StationSettings]) -> dict[str, StationSettings]:
        for sid in v:
            if not sid.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"station id {sid!r} must be letters, digits, - or _")
        return v

    @model_validator(mode="after")
    def _default_revocation_urls(self) -> Settings:
        """Unset profile CRL/OCSP URLs point at this line's API (see ProfileSettings); set
        here, once, so every certificate and template built from these settings agrees."""
        profile = self.profile.with_default_urls(self.api.effective_url)
        if profile is not self.profile:
            object.__setattr__(self, "profile", profile)  # frozen: set during validation only
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs; the environment overrides it.
        return (env_settings, init_settings)

    # --- derived paths (all absolute) --------------------------------------------------

    @property
    def var(self) -> Path:
        return self.var_dir.resolve()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.var / 'provisioner.db'}"

    @property
    def redis_socket(self) -> Path:
        return self.var / "redis" / "redis.sock"

    @property
    def broker_dir(self) -> Path:
        """The line server's broker files: redis.conf, users.acl, line.password (0600)."""
        return self.var / "broker"

    @property
    def line_identity_dir(self) -> Path:
        """The line server's own identity: the key and certificate it signs messages to
        stations with and serves Redis TLS with (line.key 0600, line.crt, ca-chain.pem)."""
        return self.var / "line"

    @property
    def station_identity_dir(self) -> Path:
        """This station PC's identity (role "station"): station.key (0600), station.crt,
        ca-chain.pem, line.crt (pinned), broker.password (0600), enrollment.json."""
        return (self.identity_dir or self.var / "identity").resolve()

    @property
    def enroll_url(self) -> str:
        """Where `station enroll` sends its request: ``line_url``, else this PC's API."""
        return self.line_url or self.api_url

    @property
    def manufacturer_root_file(self) -> Path:
        """The trusted manufacturer root certificate (PEM) for pre-provisioned parts."""
        return (self.manufacturer.root_file or self.var / "manufacturer" / "root.pem").resolve()

    @property
    def softhsm_conf(self) -> Path:
        return (self.hsm.softhsm_conf or self.var / "hsm" / "softhsm2.conf").resolve()

    @property
    def token_dir(self) -> Path:
        return (self.hsm.token_dir or self.var / "hsm" / "tokens").resolve()

    @property
    def pin_file(self) -> Path:
        return (self.hsm.pin_file or self.var / "hsm" / "factory.pin").resolve()

    @property
    def root_pin_file(self) -> Path:
        return (self.hsm.root_pin_file or self.var / "hsm" / "root.pin").resolve()

    @property
    def pin_source(self) -> str:
        """The factory token's PIN source (``file:/path`` or ``prompt``)."""
        return self.hsm.pin_source or f"file:{self.pin_file}"

    def ca_key_uri(self, label: str) -> str:
        """The RFC 7512 URI of a CA key in the factory token (no PIN value, ever)."""
        from hsm.uri import Pkcs11Uri

        return str(
            Pkcs11Uri(
                token=self.hsm.factory_token,
                object=label,
                type="private",
                module_path=self.hsm.module,
                pin_source=self.pin_source,
            )
        )

    @property
    def ca_dir(self) -> Path:
        """Public CA material (certificates); never keys."""
        return self.var / "ca"

    @property
    def chips_dir(self) -> Path:
        """Emulated chip state files and station jigs."""
        return self.var / "chips"

    @property
    def registry_url(self) -> str:
        """Where uploads go (``registry.url``, else derived from ``registry.listen_port``)."""
        return self.registry.effective_url

    @property
    def api_url(self) -> str:
        """The API's public URL (``api.public_url``, else derived from ``api.listen_port``)."""
        return self.api.effective_url

    @property
    def registry_token_file(self) -> Path:
        return (self.registry.token_file or self.var / "registry" / "upload.token").resolve()

    @property
    def bridge_dir(self) -> Path:
        """The MQTT bridge's files: server.pem, server.key (0600), ca.pem (the root devices
        pin) and mosquitto.conf."""
        return self.var / "bridge"

    @property
    def devices_dir(self) -> Path:
        """The device-facing HTTPS listener's files: server.pem, server.key (0600), ca.pem."""
        return self.var / "devices"

    @property
    def bridge_token_file(self) -> Path:
        """The token the mosquitto plugin presents to the device plane (``/bridge/v1``)."""
        return (self.bridge.token_file or self.var / "registry" / "bridge.token").resolve()

    @property
    def registry_db_url(self) -> str:
        return self.registry.database_url or f"sqlite:///{self.var / 'registry.db'}"

    def station(self, station_id: str) -> StationSettings:
        from provisioner.errors import NotFoundError

        try:
            return self.stations[station_id]
        except KeyError:
            known = ", ".join(sorted(self.stations)) or "none"
            raise NotFoundError(
                f"unknown station {station_id!r} (configured: {known}); "
                "add it under [stations.<id>] in the config file"
            ) from None


def _find_config(explicit: Path | None, env: Mapping[str, str]) -> Path | None:
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file {explicit} does not exist")
        return explicit
    if env.get(CONFIG_ENV):
        p = Path(env[CONFIG_ENV])
        if not p.is_file():
            raise ConfigError(f"{CONFIG_ENV}={p} does not exist")
        return p
    p = Path(DEFAULT_CONFIG_NAME)
    return p if p.is_file() else None


def load_settings(config: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build settings from ``config`` (or ``$PROVISIONER_CONFIG`` or ``./provisioner.toml``)
    and the environment. Raises ConfigError with the offending field on invalid input.

    ``env`` only decides which config file is found (``PROVISIONER_CONFIG``); the
    ``PROVISIONER_*`` overrides themselves are always read from the process environment."""
    env = os.environ if env is None else env
    path = _find_config(config, env)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return Settings(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        src = str(path) if path else "environment"
        raise ConfigError(f"{src}: setting {where}: {first['msg']}") from None
