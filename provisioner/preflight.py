"""Checks run before an operator action writes anything: so a batch is never half-created
because Redis is down or the token refuses its PIN."""

from __future__ import annotations

import redis
from sqlalchemy.engine import Engine

from provisioner.errors import ServiceUnavailableError
from provisioner.settings import Settings


def redis_client(settings: Settings) -> redis.Redis:
    """The line's own login to the broker (user ``line``), for probes."""
    from provisioner.broker.clients import line_login
    from provisioner.broker.clients import redis_client as client

    return client(settings, line_login(settings), timeout_s=2.0)


def broker_address(settings: Settings) -> str:
    if settings.broker.mode == "unix":
        return str(settings.redis_socket)
    return f"{settings.broker.host}:{settings.broker.port} (TLS)"


def check_redis(settings: Settings) -> None:
    try:
        redis_client(settings).ping()
    except (redis.RedisError, OSError):
        raise ServiceUnavailableError(
            f"Redis is unreachable at {broker_address(settings)}: start the services with "
            "`provisioner services run` (or check the [broker] settings)"
        ) from None


def check_station(settings: Settings, engine: Engine, station_id: str) -> None:
    """The station has enrolled (it has a current certificate): otherwise its devices would
    wait for a station that cannot even log in to the broker."""
    from datetime import UTC, datetime

    from provisioner.db.models import aware
    from provisioner.enrollment.service import list_identities

    now = datetime.now(UTC)
    current = [
        r
        for r in list_identities(engine, station_id)
        if r.revoked_at is None and aware(r.not_after) > now
    ]
    if not current:
        raise ServiceUnavailableError(
            f"station {station_id} has no current certificate (never enrolled, revoked or "
            f"expired): `provisioner station add {station_id}` on the line server, then "
            "`provisioner station enroll` on the station PC"
        )


def check_ca(settings: Settings) -> None:
    """The CA exists and its token accepts the PIN (raises CaNotInitialisedError/HsmLoginError).

    For admin commands on the line server only: it opens the token, so it needs the PIN.
    Operators' commands use :func:`check_signer`."""
    from provisioner.ca.ceremony import load_ca

    load_ca(settings).close()


def check_signer(settings: Settings, timeout_s: float = 10.0) -> dict[str, str | None]:
    """The CA as the running signer holds it, asked over the broker: operators never need
    the token's PIN, and this checks what matters (a signer that can sign), not a file.

    Raises CaNotInitialisedError when there is no CA material at all, ServiceUnavailableError
    when no signer answers, HsmUnavailableError when the signer has lost its token."""
    from celery.exceptions import TimeoutError as CeleryTimeoutError

    from provisioner.ca.ceremony import store_of
    from provisioner.errors import CaNotInitialisedError, HsmUnavailableError
    from workers.celery_app import make_celery
    from workers.queues import HSM_QUEUE, SIGNER_STATUS_TASK

    if not store_of(settings).intermediate_pem.is_file():
        raise CaNotInitialisedError()
    check_redis(settings)
    check_workers(settings, [HSM_QUEUE])
    res = make_celery(settings).send_task(SIGNER_STATUS_TASK, queue=HSM_QUEUE, expires=timeout_s)
    try:
        out: dict[str, str | None] = res.get(timeout=timeout_s)
    except CeleryTimeoutError:
        raise ServiceUnavailableError(
            f"the signer did not answer within {timeout_s:.0f}s: see `provisioner services "
            "status` and the hsm worker's log"
        ) from None
    finally:
        res.forget()
    if out.get("breaker") == "open":
        raise HsmUnavailableError(
            f"the signer has lost its token ({out.get('last_error')}): signing resumes by "
            "itself when the token is back"
        )
    return out


def check_workers(settings: Settings, queues: list[str]) -> None:
    """Someone consumes each queue, or the batch would wait forever."""
    from workers.celery_app import make_celery

    replies = make_celery(settings).control.inspect(timeout=2.0).active_queues() or {}
    seen = {q["name"] for qs in replies.values() for q in qs}
    missing = [q for q in queues if q not in seen]
    if missing:
        raise ServiceUnavailableError(
            f"no worker consumes {', '.join(missing)} (none answered within 2 s): see "
            "`provisioner services status`, or start the services with "
            "`provisioner services run`"
        )


def check_line(settings: Settings, engine: Engine, station_id: str) -> None:
    """What must answer before a batch's work is queued: the broker, a signer and an
    uploader, and the station's enrollment (ServiceUnavailableError says which is missing).
    The CLI and the dashboard both ask this."""
    from workers.queues import HSM_QUEUE, REGISTRY_QUEUE

    check_redis(settings)
    check_workers(settings, [HSM_QUEUE, REGISTRY_QUEUE])
    check_station(settings, engine, station_id)
