"""Server-sent events framing, both ways.

Writing: :func:`sse_event` frames one JSON value as ``data: ...\\n\\n`` bytes (orjson, no spaces);
:data:`SSE_DONE` is OpenAI's end marker. Errors after a stream began are framed by
:func:`sse_error` from :mod:`fleetchat.errors`' envelope, so a client sees the same shape as a
non-streamed error.

Reading: :func:`iter_sse_data` turns a byte stream into the ``data`` payload of each event (used by
``fleetchat bench`` and tests), tolerant of CRLF line ends and events split across reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from fleetchat.errors import FleetchatError, error_body

SSE_DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_MEDIA_TYPE = "text/event-stream"


def sse_event(value: Any) -> bytes:
    return b"data: " + orjson.dumps(value) + b"\n\n"


def sse_error(err: FleetchatError) -> bytes:
    return sse_event(error_body(err))


async def iter_sse_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Yield the ``data`` field of each event; comments and other fields are skipped."""
    buffer = b""
    data: list[bytes] = []
    async for chunk in chunks:
        buffer += chunk
        while True:
            nl = buffer.find(b"\n")
            if nl < 0:
                break
            line, buffer = buffer[:nl].rstrip(b"\r"), buffer[nl + 1 :]
            if not line:
                if data:
                    yield b"\n".join(data).decode("utf-8")
                    data = []
                continue
            if line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        yield b"\n".join(data).decode("utf-8")
