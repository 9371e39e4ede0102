"""Any OpenAI-compatible chat endpoint (`vllm serve`, a hosted Qwen API) over async HTTP.

Requests run concurrently up to `max_concurrency` per engine (one client and one bound
shared by every micro-batch the actor runs at once); 429, 5xx, timeouts and refused
connections are retried with exponential backoff and jitter (honouring Retry-After), up to
`max_retries`. When retries run out the engine raises `EngineUnavailable`, which fails the
micro-batch (it is redone on resume) instead of rejecting its rows. The API key is read
from the environment variable the config names, never from the config itself.

A refused key (HTTP 401/403) is no fault of the rows either: it raises `EngineUnavailable`
naming the variable (never its value), so the run stops with nothing rejected and resumes
once the key is fixed. The key is never put in a message: server text quoted in errors
(some servers echo the key they were sent) has it masked.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from actors.engines import EngineUnavailable
from actors.engines.background import BackgroundLoop
from actors.engines.llm import EngineConfig, LLMEngine, LLMRequest, LLMResponse

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
AUTH_STATUS = frozenset({401, 403})
MASK = "***"


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _body(model: str, request: LLMRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": request.messages,
        "temperature": request.sampling.temperature,
        "top_p": request.sampling.top_p,
        "max_tokens": request.sampling.max_tokens,
        "seed": request.seed,
    }
    if request.json_schema is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": request.json_schema}}
    elif request.choice is not None:
        body["structured_outputs"] = {"choice": request.choice}  # vLLM's extra field
    return body


class OpenAIEngine(LLMEngine):
    def __init__(self, config: EngineConfig):
        if not config.base_url:
            raise ValueError("an openai engine needs base_url (e.g. http://127.0.0.1:8000/v1)")
        self.config = config
        api_key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        self._masked = _masker(api_key)
        self._key_sent = bool(api_key)
        self._loop = BackgroundLoop("openai-engine-loop")
        self._client, self._gate = self._loop.run(self._open(api_key))

    async def _open(self, api_key: str) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        # Made on the engine's loop, which they belong to.
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        client = httpx.AsyncClient(base_url=self.config.base_url, headers=headers, timeout=self.config.request_timeout_s,
                                   limits=httpx.Limits(max_connections=self.config.max_concurrency))
        return client, asyncio.Semaphore(self.config.max_concurrency)

    def generate(self, requests: list[LLMRequest]) -> list[LLMResponse]:
        return self._loop.run(self._generate(requests))

    async def _generate(self, requests: list[LLMRequest]) -> list[LLMResponse]:
        return list(await asyncio.gather(*(self._one(self._client, self._gate, r) for r in requests)))

    def close(self) -> None:
        self._loop.run(self._client.aclose())
        self._loop.close()

    async def _one(self, client: httpx.AsyncClient, gate: asyncio.Semaphore, request: LLMRequest) -> LLMResponse:
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, _Retryable)),
            stop=stop_after_attempt(self.config.max_retries + 1),
            wait=_wait,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    async with gate:
                        return await self._post(client, request)
        except _Retryable as exc:
            raise EngineUnavailable(
                f"{self.config.base_url}: no answer after {self.config.max_retries} retries ({self._masked(str(exc))}); "
                "the micro-batch is left uncommitted, `speechmed resume` redoes it"
            ) from None
        raise AssertionError("unreachable")

    async def _post(self, client: httpx.AsyncClient, request: LLMRequest) -> LLMResponse:
        try:
            response = await client.post("/chat/completions", json=_body(self.config.model, request))
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code in RETRY_STATUS:
            after = response.headers.get("retry-after")
            raise _Retryable(f"HTTP {response.status_code}", float(after) if after and after.isdigit() else None)
        if response.status_code in AUTH_STATUS:
            raise EngineUnavailable(self._refused(response))
        if response.status_code >= 400:
            # A request the server will never accept (bad schema, prompt too long): not retried.
            raise RuntimeError(f"HTTP {response.status_code}: {self._masked(response.text[:500])}")
        choice = response.json()["choices"][0]
        return LLMResponse(text=choice["message"]["content"] or "", finish_reason=choice.get("finish_reason"))


    def _refused(self, response: httpx.Response) -> str:
        """What a 401/403 means and what to do; names the variable, never the key."""
        name = self.config.api_key_env
        if not name:
            what = "no key was sent (api_key_env is null); name the variable holding the key with api_key_env"
        elif self._key_sent:
            what = f"the key in ${name} was refused; set a valid key in ${name} on every node that runs this stage"
        else:
            what = f"no key was sent: ${name} is not set on the node that runs this stage; set it there"
        return (f"{self.config.base_url}: HTTP {response.status_code} ({self._masked(response.text[:200])}): {what}. "
                "Nothing was rejected; the micro-batch is left uncommitted, `speechmed resume` redoes it")


def _masker(secret: str) -> Callable[[str], str]:
    """A function that masks `secret` in a text (a no-op without one)."""
    return (lambda text: text.replace(secret, MASK)) if secret else (lambda text: text)


_backoff = wait_exponential_jitter(multiplier=0.5, max=30)


def _wait(state: RetryCallState) -> float:
    """Exponential backoff with jitter, or the server's Retry-After when it gives one."""
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, _Retryable) and exc.retry_after is not None:
        return min(exc.retry_after, 60.0)
    return _backoff(state)
