"""HTTP plumbing shared by the TGI and OpenAI routes: JSON bodies, errors, correlation ids."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from router.errors import ApiError, ValidationError

log = logging.getLogger("chameleon.router.http")

MAX_BODY: web.AppKey[int] = web.AppKey("max_request_bytes", int)
MAX_JSON_DEPTH = 32  # nesting of arrays/objects; the deepest legitimate body (chat content parts) is ~5
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(exc: ApiError) -> web.Response:
    return web.json_response(exc.body(), status=exc.http_status)


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object. Body size is capped by the app's client_max_size."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        limit = request.app[MAX_BODY]
        raise ApiError(
            "validation",
            f"request body too large: the limit is {limit} bytes (--max-request-bytes)",
            status=413,
        ) from exc
    too_deep = ValidationError(f"request body nests arrays/objects more than {MAX_JSON_DEPTH} levels deep")
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise too_deep
    try:
        body = json.loads(raw or b"null")
    except RecursionError as exc:
        raise too_deep from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ValidationError("request body must be a JSON object")
    try:  # JSON may escape lone UTF-16 surrogates ("\ud800"), which no tokenizer can encode
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:
        raise ValidationError(
            f"request body holds an unpaired UTF-16 surrogate ({exc.object[exc.start:exc.end]!a}); "
            "send valid Unicode text") from exc
    return body


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(raw: bytes) -> int:
    """The deepest nesting of `[`/`{` in a JSON text, ignoring brackets inside strings. Linear time
    and no recursion, so it runs before the parser (whose recursion a deep body could exhaust).
    On malformed input it may over- or under-count; the parser then refuses the body anyway."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    depth = deepest = 0
    for byte in brackets:
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def correlation_id(request: web.Request) -> str | None:
    value = request.headers.get("x-correlation-id") or request.headers.get("x-request-id")
    return value[:128] if value else None


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """ApiError -> TGI error JSON; anything unexpected -> 500 JSON (logged, never the traceback)."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            kind = "validation" if exc.status < 500 else "generation"
            return web.json_response({"error": exc.reason, "error_type": kind}, status=exc.status)
        raise
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        return web.json_response(
            {"error": "internal error (see the router log)", "error_type": "generation"}, status=500
        )
