"""Checks run before an operator action writes anything: so a batch is never half-created
because Redis is down or the token refuses its PIN."""

from __future__ import annotations

import redis

from provisioner.errors import ServiceUnavailableError
from provisioner.settings import Settings


def redis_client(settings: Settings) -> redis.Redis:
    url = settings.broker_url
    if url.startswith("redis+socket://"):
        return redis.Redis(unix_socket_path=url.removeprefix("redis+socket://"), socket_timeout=2)
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def check_redis(settings: Settings) -> None:
    try:
        redis_client(settings).ping()
    except (redis.RedisError, OSError):
        where = settings.broker_url.split("@")[-1]  # never print a password from the URL
        raise ServiceUnavailableError(
            f"Redis is unreachable at {where}: start the services with "
            "`provisioner services run` (or check redis_url)"
        ) from None


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
