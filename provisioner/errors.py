"""The one error hierarchy of the product.

Every error a user can see derives from :class:`ProvisionerError` and carries a message that
says what went wrong *and what to do*. The CLI prints ``str(err)`` on one line and exits
non-zero; it never prints a traceback for these. Messages must never contain a PIN, a token
or key material: callers pass identifiers (labels, URIs without pin-value, serials), never
secrets.
"""

from __future__ import annotations


class ProvisionerError(Exception):
    """Base of every expected, user-facing failure."""

    exit_code: int = 1


class ConfigError(ProvisionerError):
    """Settings or a profile are invalid or incomplete."""

    exit_code = 2


class SchemaMismatchError(ProvisionerError):
    """The database schema is not the revision this software was built for (older, newer,
    or made before migrations existed). Nothing was changed: the message names both
    revisions and the command to run (``provisioner db upgrade``, or upgrade the software)."""

    exit_code = 2


class NotFoundError(ProvisionerError):
    """A batch, station, device or object that the user named does not exist."""

    exit_code = 3


class InvalidInputError(ProvisionerError):
    """A value the user gave is out of range or malformed."""

    exit_code = 2


class ConflictError(ProvisionerError):
    """The action makes no sense in the object's current state: resuming a cancelled batch,
    retrying a done device, revoking the last admin, starting services twice. Nothing was
    written."""

    exit_code = 5


class ServiceUnavailableError(ProvisionerError):
    """Redis, the database, the registry or a worker cannot be reached."""

    exit_code = 4


# --- chips -----------------------------------------------------------------------------------


class ChipError(ProvisionerError):
    """The secure element (or its socket) failed a command."""


class ChipAbsentError(ChipError):
    """No chip answers in the socket (never inserted, or removed mid-command)."""


class ChipCommandError(ChipError):
    """The chip answered with a non-zero status byte.

    ``status`` is the chip's status byte (0x0F execution error, 0x03 parse error, ...) or the
    cryptoauthlib ATCA_STATUS code when the failure was detected host-side.
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ChipStateError(ChipError):
    """The chip is in a state the profile cannot provision (e.g. locked by someone else)."""


class WrongChipError(ChipStateError):
    """The socket holds another chip than the one a resumed device was identified on."""


class DeviceStopped(ProvisionerError):
    """The device's batch was paused or cancelled: it stopped at a step boundary. Not a
    failure: the device keeps its last step and resumes when its batch runs again."""


# --- HSM / CA --------------------------------------------------------------------------------


class HsmError(ProvisionerError):
    """The PKCS#11 module or token failed."""


class HsmLoginError(HsmError):
    """The token rejected the PIN (wrong PIN, or PIN locked)."""


class HsmKeyNotFoundError(HsmError):
    """No key with the requested label/id exists in the token."""


class HsmUnavailableError(HsmError, ServiceUnavailableError):
    """The token is gone (removed, device error): signing is stopped until it is back."""

    exit_code = 4


class HsmBusyError(HsmError, ServiceUnavailableError):
    """Every session of the pool stayed busy past the acquire timeout."""

    exit_code = 4


class CaNotInitialisedError(ProvisionerError):
    """The factory CA has not been created yet."""

    def __init__(self, detail: str = "") -> None:
        msg = "no CA initialised: run `provisioner ca init` first"
        super().__init__(f"{msg} ({detail})" if detail else msg)


class CaExistsError(ProvisionerError):
    """`ca init` would replace an existing CA."""


class PolicyViolationError(ProvisionerError):
    """The issuance policy refused to sign (bad key, failed proof of possession, clone...)."""


class QuotaExhaustedError(PolicyViolationError):
    """The batch has used its certificate quota: the part is not at fault; an admin may
    raise the quota (`batch quota set`) and the device be retried."""


class ForgedCertificateError(PolicyViolationError):
    """A certificate handed to a station for a chip does not verify against the CA chain the
    station pins (another issuer's signature, another key, another chip's serial): nothing
    was written to the chip, and the station records ``incident.forged_certificate``."""


class BatchNotRunningError(PolicyViolationError):
    """The signer issues nothing for a batch that was cancelled or closed (or never
    started): the device stops where it is; its part is not at fault."""


# --- registry --------------------------------------------------------------------------------


class RegistryError(ProvisionerError):
    """The cloud registry refused or failed an operation."""


class RegistryUnavailableError(RegistryError, ServiceUnavailableError):
    """The registry could not be reached or answered 5xx; the upload may be retried."""


class RegistryConflictError(RegistryError):
    """The registry holds this device with a different certificate: never overwrite."""


# --- audit -----------------------------------------------------------------------------------


class AuditError(ProvisionerError):
    """The audit trail failed verification or could not be written."""


class ProofError(AuditError):
    """A Merkle proof, checkpoint or proof file does not verify (or cannot be parsed)."""


class PermissionDeniedError(ProvisionerError):
    """The caller's role does not allow this action (the denial itself is audited)."""

    exit_code = 77  # EX_NOPERM


class AuthenticationError(ProvisionerError):
    """No valid user token was presented."""

    exit_code = 77


class LinkRefusedError(ProvisionerError):
    """A message between the line server and a station was refused: not signed by a known,
    unrevoked sender, altered, relabelled, replayed, expired, or asking for something the
    records do not allow (another station's device, a step out of order, a bad proof of
    possession). ``reason`` is a short code; the message says what to check."""

    exit_code = 6

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def rebuilt(kind: object, message: str) -> ProvisionerError:
    """An error another process reported by its class name (``kind``) and message, as
    that class where it can be rebuilt from a message alone (the signer's answers to the
    line, the line's answers to a station); anything else as a ProvisionerError."""
    cls = _REBUILDABLE.get(str(kind), ProvisionerError)
    return cls(message)


_REBUILDABLE: dict[str, type[ProvisionerError]] = {
    cls.__name__: cls
    for cls in (
        PolicyViolationError,
        QuotaExhaustedError,
        BatchNotRunningError,
        NotFoundError,
        ConflictError,
        ConfigError,
        ChipError,
        HsmError,
        HsmUnavailableError,
        HsmBusyError,
        CaNotInitialisedError,
        ServiceUnavailableError,
    )
}
