"""Optional API key on both client APIs, and TLS / mutual TLS on the gRPC port.

API key (`--api-key`, better the `API_KEY` environment variable: a command line is visible in `ps`):
  - HTTP: `Authorization: Bearer KEY` (or `X-Api-Key: KEY`); missing or wrong -> 401
    `{"error": ..., "error_type": "unauthorized"}` with `WWW-Authenticate: Bearer`. The check runs
    before the body is read, so an unauthenticated client cannot make the router read or tokenize.
  - gRPC: metadata `authorization: Bearer KEY` or `x-api-key: KEY`; else UNAUTHENTICATED.
  - Open without the key: HTTP `GET /health` and `GET /metrics`, and `grpc.health.v1.Health` (load
    balancers, Kubernetes probes and Prometheus carry no key). Bind `--hostname` to a private address
    or filter /metrics at the proxy where metrics must stay private.
  - Keys are compared in constant time (hmac.compare_digest) and never logged: `Secret` prints as
    `***`, refusals are logged with the path or method only.
TLS: `--tls-cert` + `--tls-key` serve gRPC over TLS; `--tls-client-ca` also requires client
certificates signed by that CA (mutual TLS). HTTP stays plain: terminate TLS at a proxy.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

log = logging.getLogger("chameleon.router.auth")

OPEN_HTTP_PATHS = frozenset({"/health", "/metrics"})
OPEN_GRPC_PREFIXES = ("/grpc.health.v1.Health/",)
_REFUSAL = "missing or wrong API key: send 'Authorization: Bearer <key>'"


class Secret:
    """A string that never shows itself in reprs, logs or `--help` defaults (prints `***`)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not value:
            raise ValueError("an API key cannot be empty")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"


def key_matches(expected: Secret, offered: str | None) -> bool:
    """Constant-time comparison (no early exit on the first differing byte)."""
    if offered is None:
        return False
    return hmac.compare_digest(expected.reveal().encode(), offered.encode("utf-8", "surrogateescape"))


def offered_key(headers: Iterable[tuple[str, Any]]) -> str | None:
    """The key a client offers in `authorization: Bearer KEY` or `x-api-key: KEY` (names any case)."""
    for name, value in headers:
        if not isinstance(value, str):
            continue
        low = name.lower()
        if low == "authorization":
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif low == "x-api-key" and value:
            return value.strip()
    return None


# --- HTTP -----------------------------------------------------------------------------------------
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def api_key_middleware(key: Secret) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def check_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        open_path = request.method in ("GET", "HEAD") and request.path in OPEN_HTTP_PATHS
        if open_path or key_matches(key, offered_key(request.headers.items())):
            return await handler(request)
        log.info("request refused: no valid API key", extra={"path": request.path, "api": "http"})
        return web.json_response({"error": _REFUSAL, "error_type": "unauthorized"}, status=401,
                                 headers={"WWW-Authenticate": "Bearer"})

    return check_key


# --- gRPC -----------------------------------------------------------------------------------------
def _refusing_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that answers UNAUTHENTICATED."""

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _REFUSAL)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _REFUSAL)
        yield  # pragma: no cover (abort raises); makes this an async generator

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming)
    return grpc.unary_unary_rpc_method_handler(unary)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every method but grpc.health.v1 without the key (see the module docstring)."""

    def __init__(self, key: Secret) -> None:
        self._key = key

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method or ""
        if handler is None or method.startswith(OPEN_GRPC_PREFIXES):
            return handler
        metadata = ((m[0], m[1]) for m in details.invocation_metadata or ())
        if key_matches(self._key, offered_key(metadata)):
            return handler
        log.info("request refused: no valid API key", extra={"method": method, "api": "grpc"})
        return _refusing_handler(handler)


# --- TLS ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of the gRPC port: server certificate chain and key, and optionally the CA whose
    client certificates are required (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @staticmethod
    def from_flags(cert: Path | None, key: Path | None, client_ca: Path | None) -> TlsFiles | None:
        """None when no flag is set; ValueError naming the fix when the combination is incomplete."""
        if cert is None and key is None:
            if client_ca is not None:
                raise ValueError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)")
            return None
        if cert is None or key is None:
            raise ValueError("--tls-cert and --tls-key go together: give both PEM files")
        for flag, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-client-ca", client_ca)):
            if path is not None and not path.is_file():
                raise ValueError(f"{flag} {path}: no such file")
        return TlsFiles(cert, key, client_ca)

    def server_credentials(self) -> grpc.ServerCredentials:
        ca = self.client_ca.read_bytes() if self.client_ca is not None else None
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )
