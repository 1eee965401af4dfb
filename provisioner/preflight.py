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
    """The CA exists and its token accepts the PIN (raises CaNotInitialisedError/HsmLoginError)."""
    from provisioner.ca.ceremony import load_ca

    load_ca(settings).close()


def check_workers(settings: Settings, queues: list[str]) -> None:
    """Someone consumes each queue, or the batch would wait forever."""
    from workers.celery_app import make_celery

    replies = make_celery(settings).control.inspect(timeout=2.0).active_queues() or {}
    seen = {q["name"] for qs in replies.values() for q in qs}
    missing = [q for q in queues if q not in seen]
    if missing:
        raise ServiceUnavailableError(
            f"no worker consumes {', '.join(missing)}: start the services with "
            "`provisioner services run`"
        )
