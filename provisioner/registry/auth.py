"""Bearer-token authentication for every request but the readiness probe.

Implemented as ASGI middleware in front of routing, so an unauthenticated caller learns
nothing, not even which paths exist. The presented token is hashed and compared with the
known hashes; it is never stored, logged or echoed back.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from provisioner.registry.status import Code, error_response
from provisioner.registry.tokens import token_matches

UNAUTHENTICATED_MESSAGE = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential."
)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, if that is what it is."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class BearerAuth:
    """Answers 401 UNAUTHENTICATED unless the request carries one of the known tokens."""

    def __init__(
        self, app: ASGIApp, token_sha256_hexes: Iterable[str], open_paths: Iterable[str]
    ) -> None:
        self.app = app
        self.hashes = frozenset(token_sha256_hexes)
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        header = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None
        )
        token = bearer_token(header)
        if token is None or not token_matches(token, self.hashes):
            response = error_response(
                Code.UNAUTHENTICATED,
                UNAUTHENTICATED_MESSAGE,
                headers={"WWW-Authenticate": 'Bearer realm="provisioner-registry"'},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
