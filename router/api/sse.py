"""Server-Sent Events for aiohttp, and a look-ahead over an event stream.

TGI writes `data:{json}\n\n` (no space after the colon) and OpenAI-style streams end with
`data: [DONE]` (with the space: huggingface_hub compares that exact line).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator
from typing import Any, Generic, TypeVar

from aiohttp import web

T = TypeVar("T")
DONE = b"data: [DONE]\n\n"


def jsonable(value: float | None) -> float | None:
    """JSON has no NaN/inf: such logprobs (the first prompt token's) become null."""
    if value is None or not math.isfinite(value):
        return None
    return value


def text_beyond(final_text: str, streamed: str) -> str:
    """What the final text adds to the streamed pieces: bytes of a character split over tokens stream
    as "" and decode only at the end, so a stream's last message carries them."""
    return final_text.removeprefix(streamed) if final_text.startswith(streamed) else ""


def event(payload: Any) -> bytes:
    return b"data:" + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


async def open_stream(request: web.Request, headers: dict[str, str] | None = None) -> web.StreamResponse:
    resp = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **(headers or {}),
        },
    )
    await resp.prepare(request)
    return resp


class Lookahead(Generic[T]):
    """Reads an async iterator in a helper task so the consumer can see whether the next item is
    already there (`ready()`): the TGI stream puts `generated_text` on the event of the LAST token,
    and the engine yields that token and its FinalEvent in the same step.

    `aclose()` cancels the reader and closes the iterator (the engine then drops the request).
    Errors of the iterator are re-raised by `next()` in order.
    """

    _END = object()

    def __init__(self, source: AsyncIterator[T]) -> None:
        self._source = source
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        try:
            async for item in self._source:
                self._queue.put_nowait(("item", item))
        except Exception as exc:  # delivered to the consumer in order
            self._queue.put_nowait(("error", exc))
            return
        self._queue.put_nowait(("end", None))

    @staticmethod
    def _unpack(entry: tuple[str, Any]) -> Any:
        kind, value = entry
        if kind == "error":
            raise value
        return Lookahead._END if kind == "end" else value

    async def next(self) -> T | None:
        """The next item, or None at the end."""
        value = self._unpack(await self._queue.get())
        return None if value is self._END else value

    async def ready(self) -> T | None:
        """The next item if it is already produced (after letting the reader run once), else None.
        A returned item is consumed."""
        await asyncio.sleep(0)
        if self._queue.empty():
            return None
        head = self._queue._queue[0]  # type: ignore[attr-defined]
        if head[0] != "item":
            return None
        return self._unpack(self._queue.get_nowait())

    async def aclose(self) -> None:
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            await aclose()
