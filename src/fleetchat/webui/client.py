"""ChatClient: the web UI's only way out — an OpenAI-compatible API through the official client.

Wraps :class:`openai.AsyncOpenAI` (base URL and key configurable, so any compatible server works)
and turns its failures into fleetchat errors with one readable message each, which the tabs show in
the page. Streams are async generators: when the consumer stops (the Stop button cancels the Gradio
task) the ``finally`` closes the HTTP response, so the server sees the disconnect and aborts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import openai

from fleetchat.errors import FleetchatError, WorkerError, error_from_body


@dataclass(frozen=True)
class GenParams:
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512

    def as_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}


def make_openai_client(base_url: str, api_key: str, timeout: float) -> openai.AsyncOpenAI:
    # No retries: a UI should say "the API is down" now, not after three silent back-offs.
    return openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout, max_retries=0)


def explain(exc: BaseException, base_url: str) -> FleetchatError:
    """One fleetchat error with a message a person can act on, for any failure of the API client."""
    if isinstance(exc, FleetchatError):
        return exc
    if isinstance(exc, openai.APITimeoutError):
        return WorkerError(f"the API at {base_url} did not answer in time")
    if isinstance(exc, openai.APIConnectionError):
        return WorkerError(f"cannot reach the API at {base_url}: is fleetchat serve (or fleetchat api) running?")
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else None
        if body is not None and "error" not in body and "message" in body:
            body = {"error": body}  # the openai client sometimes hands over the inner object
        err = error_from_body(exc.status_code, body if body is not None else str(exc.message))
        err.message = f"API error {exc.status_code}: {err.message}"
        return err
    if isinstance(exc, openai.APIError):
        body = exc.body if isinstance(exc.body, dict) else {}
        message = body.get("message") or exc.message
        return WorkerError(f"the model failed: {message}")
    return FleetchatError(f"{type(exc).__name__}: {exc}")


class ChatClient:
    """Model list and streamed chat completions over an OpenAI-compatible API."""

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self.client = client
        self.base_url = str(client.base_url).rstrip("/")

    async def list_models(self) -> list[str]:
        """Ids from ``GET /v1/models``, sorted. Raises a FleetchatError when the API is unreachable."""
        try:
            page = await self.client.models.list()
        except Exception as exc:  # noqa: BLE001 - every failure becomes one readable error
            raise explain(exc, self.base_url) from exc
        return sorted({m.id for m in page.data})

    async def stream_chat(
        self, model: str, messages: list[dict[str, str]], params: GenParams
    ) -> AsyncIterator[str]:
        """Yield text deltas of one streamed chat completion."""
        try:
            stream = await self.client.chat.completions.create(
                model=model, messages=messages, stream=True, **params.as_dict()
            )
        except Exception as exc:  # noqa: BLE001
            raise explain(exc, self.base_url) from exc
        try:
            async for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta and choice.delta.content:
                        yield choice.delta.content
        except Exception as exc:  # noqa: BLE001
            raise explain(exc, self.base_url) from exc
        finally:
            # Runs on normal end, error and cancellation (Stop): closing the response tells the server.
            await stream.close()

    async def close(self) -> None:
        await self.client.close()
