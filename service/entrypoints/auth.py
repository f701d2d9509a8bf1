"""Bearer-token authentication of the HTTP API.

Tokens come from ``OPTOUT_API_TOKENS`` as ``NAME:TOKEN:SCOPES`` entries separated by commas
(scopes ``read``, ``write`` or ``read+write``). The presented token is compared with every
configured one in constant time (``hmac.compare_digest``, no early exit), so response times
reveal neither a prefix nor which entry matched. Logs carry the token's name, never the token.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from starlette.requests import Request
from starlette.responses import Response

log = structlog.get_logger(__name__)

Scope = str
SCOPES: dict[str, frozenset[Scope]] = {
    "read": frozenset({"read"}),
    "write": frozenset({"write"}),
    "read+write": frozenset({"read", "write"}),
    "write+read": frozenset({"read", "write"}),
}
MIN_TOKEN_LENGTH = 16

Endpoint = Callable[[Request], Awaitable[Response]]
ErrorResponse = Callable[[int, str, str, dict[str, str]], Response]


@dataclass(frozen=True, slots=True)
class ApiToken:
    name: str
    secret: bytes
    scopes: frozenset[Scope]

    def __repr__(self) -> str:
        # Never let the secret reach a log line or a traceback through repr().
        return f"ApiToken(name={self.name!r}, scopes={sorted(self.scopes)!r})"


def parse_tokens(spec: str) -> list[ApiToken]:
    """Parse ``OPTOUT_API_TOKENS``; errors name the entry, never its token."""
    tokens: list[ApiToken] = []
    for index, item in enumerate(part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, _, rest = item.partition(":")
        secret, _, scopes = rest.rpartition(":")
        where = f"OPTOUT_API_TOKENS entry {index + 1} ({name or 'unnamed'})"
        if not name or not secret:
            raise ValueError(f"{where}: expected NAME:TOKEN:SCOPES")
        if scopes not in SCOPES:
            raise ValueError(f"{where}: scopes must be read, write or read+write")
        if len(secret) < MIN_TOKEN_LENGTH:
            raise ValueError(f"{where}: token shorter than {MIN_TOKEN_LENGTH} characters")
        if any(t.name == name for t in tokens):
            raise ValueError(f"{where}: duplicate name")
        tokens.append(ApiToken(name, secret.encode(), SCOPES[scopes]))
    return tokens


class Authenticator:
    def __init__(self, tokens: list[ApiToken]) -> None:
        self._tokens = tuple(tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def authenticate(self, authorization: str | None) -> ApiToken | None:
        if authorization is None:
            return None
        kind, _, presented = authorization.partition(" ")
        if kind.lower() != "bearer" or not presented.strip():
            return None
        # Starlette decodes headers as latin-1: encoding back gives the bytes as sent.
        candidate = presented.strip().encode("latin-1")
        found: ApiToken | None = None
        for token in self._tokens:
            if hmac.compare_digest(candidate, token.secret):
                found = token
        return found

    def protect(self, scope: Scope, endpoint: Endpoint, error: ErrorResponse) -> Endpoint:
        """Wrap an endpoint: 401 without a valid token, 403 without `scope`."""

        async def guarded(request: Request) -> Response:
            header = request.headers.get("authorization")
            token = self.authenticate(header)
            route = request.scope.get("route")
            route_name = getattr(route, "name", None)
            if token is None:
                log.info(
                    "api_auth_denied",
                    reason="missing token" if header is None else "invalid token",
                    route=route_name,
                )
                challenge = 'Bearer realm="optout"'
                if header is not None:
                    challenge += ', error="invalid_token"'
                return error(
                    401,
                    "unauthorized",
                    "a valid bearer token is required",
                    {"WWW-Authenticate": challenge},
                )
            if scope not in token.scopes:
                log.info("api_auth_denied", reason="scope", token=token.name, route=route_name)
                return error(
                    403,
                    "forbidden",
                    f"the token lacks the {scope!r} scope",
                    {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
                )
            with structlog.contextvars.bound_contextvars(api_token=token.name):
                return await endpoint(request)

        return guarded
