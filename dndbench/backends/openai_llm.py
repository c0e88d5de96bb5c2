"""OpenAI chat-completions LLM (or any server speaking the same API, through ``base_url``).

The API key is read from the ``OPENAI_API_KEY`` environment variable only: it is never a config
option, never part of a cache key and never written anywhere.  Retries are the ``openai`` client's
own: rate limits (429), lock and request timeouts (408, 409), server errors (5xx), timeouts and
dropped connections are retried up to ``max_retries`` times with exponential backoff (honouring
the server's ``Retry-After``); ``timeout_s`` bounds each request.  ``max_calls`` caps the chat
completions one process may ask for (a spending guard).  Answers are cached per conversation by
:meth:`~dndbench.backends.base.LLM.chat`, so re-runs cost nothing: only cache misses are sent.

The misses are sent concurrently through ``openai.AsyncOpenAI``, at most ``max_concurrency``
requests in flight (an asyncio semaphore); answers come back in the order of the conversations.
Each answer is written to the call cache as soon as it arrives, so what was paid for is kept
when a later request fails; after a failure no new request is started, and the first failure is
raised as a one-line :class:`~dndbench.errors.BackendError`.  Tokens reported by the server are
added up in :attr:`OpenAILLM.tokens` (read by the run's cost accounting).
"""
from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Coroutine, TypeVar

from dndbench.backends.base import LLM, LLMS, BackendConfig, Messages
from dndbench.errors import BackendError, ConfigError, has_credentials, without_credentials

KEY_VARIABLE = "OPENAI_API_KEY"
#: the server when ``base_url`` is empty (the ``openai`` client reads it, credentials and all)
URL_VARIABLE = "OPENAI_BASE_URL"
DEFAULT_URL = "https://api.openai.com/v1"
#: API calls made by this process, over all instances (checked against ``max_calls``)
_CALLS = {"count": 0}

T = TypeVar("T")


@dataclass
class OpenAIConfig(BackendConfig):
    """Options of ``llm=openai``."""

    model: str = "gpt-4-0125-preview"
    batch_size: int = 64  # conversations sent in one concurrent round
    temperature: float = 0.3
    max_tokens: int = 0  # 0: the server's default
    base_url: str = ""  # an OpenAI-compatible server; empty: api.openai.com
    timeout_s: float = 60.0  # per request (the client's ``timeout``)
    max_retries: int = 5  # retries of a failed request (the client's ``max_retries``)
    max_calls: int = 1000  # chat completions per process; 0: no cap
    max_concurrency: int = 8  # requests in flight at once


@LLMS.register("openai")
class OpenAILLM(LLM[OpenAIConfig]):
    """OpenAI chat completions (default gpt-4-0125-preview, temperature 0.3, as in the DnD code)."""

    Config = OpenAIConfig

    def __init__(self, config: OpenAIConfig, call_cache: Any = None,
                 cache_dir: Any = None) -> None:
        super().__init__(config, call_cache=call_cache, cache_dir=cache_dir)
        #: tokens (prompt + completion) of the answers this instance paid for
        self.tokens = 0

    @classmethod
    def preflight(cls, config: OpenAIConfig) -> None:
        """Raise a ConfigError, before a job starts, for what would fail at its first request:
        no API key in the environment, a ``base_url`` that is not an http(s) URL or that holds
        credentials (they belong in ``$OPENAI_BASE_URL``)."""
        url = config.base_url.strip()
        if url and not url.lower().startswith(("http://", "https://")):
            raise ConfigError(f"llm.base_url={url}: not an http(s) URL; give the server's API "
                              f"root, e.g. llm.base_url=http://localhost:8000/v1")
        if has_credentials(url):
            raise ConfigError(f"llm.base_url holds credentials; export {URL_VARIABLE}=... instead "
                              f"(read from the environment only, never written)")
        if not os.environ.get(KEY_VARIABLE, "").strip():
            raise ConfigError(f"llm 'openai' needs an API key: export {KEY_VARIABLE}=... (it is "
                              f"read from the environment only), or choose another llm")

    def server(self) -> str:
        """The server requests go to, without credentials: ``base_url``, else
        ``$OPENAI_BASE_URL``, else api.openai.com."""
        url = self.config.base_url.strip() or os.environ.get(URL_VARIABLE, "").strip()
        return without_credentials(url.rstrip("/")) if url else DEFAULT_URL

    @property
    def model_id(self) -> str:
        """The model name, prefixed by the server (without credentials) unless it is
        api.openai.com."""
        base = self.server()
        return f"{base}#{self.config.model}" if base != DEFAULT_URL else self.config.model

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"temperature": self.config.temperature}
        if self.config.max_tokens:
            out["max_tokens"] = self.config.max_tokens
        return out

    def client(self) -> Any:
        """A new ``openai.AsyncOpenAI`` client, retrying and timing out as configured (one per
        round of requests: an async client belongs to the event loop that uses it)."""
        key = os.environ.get(KEY_VARIABLE, "").strip()
        if not key:
            raise BackendError(f"llm 'openai' needs an API key: export {KEY_VARIABLE}=... "
                               f"(it is read from the environment only), or choose another llm")
        import openai

        return openai.AsyncOpenAI(api_key=key, base_url=self.config.base_url or None,
                                  timeout=self.config.timeout_s,
                                  max_retries=self.config.max_retries)

    def _chat_batch(self, conversations: list[Messages]) -> list[str]:
        return run_coroutine(self._chat_all(conversations))

    async def _chat_all(self, conversations: list[Messages]) -> list[str]:
        """Answers of ``conversations`` (in order), at most ``max_concurrency`` in flight."""
        limit = asyncio.Semaphore(max(1, int(self.config.max_concurrency)))
        failures: list[BackendError] = []

        async def answer(client: Any, messages: Messages) -> str:
            async with limit:
                if failures:  # something failed: start nothing new
                    return ""
                try:
                    self._count_call()
                    response = await client.chat.completions.create(**self._request(messages))
                except BackendError as exc:
                    failures.append(exc)
                    return ""
                except Exception as exc:  # the client has already retried what is worth it
                    failures.append(BackendError(self._failure(exc)))
                    return ""
                text = response.choices[0].message.content or ""
                self._paid_for(messages, text, response)
                return text

        async with self.client() as client:
            answers = await asyncio.gather(*(answer(client, m) for m in conversations))
        if failures:
            raise failures[0]
        return list(answers)

    def _paid_for(self, messages: Messages, text: str, response: Any) -> None:
        """Store an answer at once and count its tokens."""
        if self.call_cache is not None:
            self.call_cache.put(self.key("chat", messages), text)
        usage = getattr(response, "usage", None)
        total = getattr(usage, "total_tokens", None) if usage is not None else None
        if isinstance(total, int):
            self.tokens += total

    def _request(self, messages: Messages) -> dict[str, Any]:
        request: dict[str, Any] = {"model": self.config.model, "messages": messages,
                                   "temperature": self.config.temperature}
        if self.config.max_tokens:
            request["max_tokens"] = self.config.max_tokens
        return request

    def _count_call(self) -> None:
        cap = self.config.max_calls
        if cap and _CALLS["count"] >= cap:
            raise BackendError(f"llm 'openai' reached its budget of {cap} API calls (llm.max_calls) "
                               f"in this process; every answer paid for is cached, so rerunning "
                               f"the same command with a larger llm.max_calls=N (0 = no cap) "
                               f"resumes where it stopped")
        _CALLS["count"] += 1

    def _failure(self, exc: Exception) -> str:
        status = getattr(exc, "status_code", None)
        what = f"HTTP {status}" if status else type(exc).__name__
        message = (getattr(exc, "message", None) or str(exc)).strip().splitlines()
        text = without_credentials(message[0][:200] if message else "")
        key = os.environ.get(KEY_VARIABLE, "").strip()
        if key:
            text = text.replace(key, "***")
        attempts = _attempts(exc)
        after = f" after {attempts} attempt(s)" if attempts else ""
        hint = ("; check that the server is up and llm.base_url (or $OPENAI_BASE_URL) is right"
                if status is None else "")
        return (f"OpenAI chat completion with model {self.config.model!r} at {self.server()} "
                f"failed{after}: {what}: {text}{hint}")


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code, also when an event loop is already
    running in this thread (a notebook): then it runs in a worker thread with its own loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _attempts(exc: Exception) -> int | None:
    """Requests the client sent before giving up, from the retry count it stamps on each request
    (``x-stainless-retry-count``); None when the error carries no request."""
    request = getattr(exc, "request", None)
    count = getattr(request, "headers", {}).get("x-stainless-retry-count") if request else None
    return int(count) + 1 if count is not None and str(count).isdigit() else None


def calls_made() -> int:
    """API calls made by this process so far."""
    return _CALLS["count"]


def reset_call_count() -> None:
    """Start counting API calls from zero (tests; a long-lived process between jobs)."""
    _CALLS["count"] = 0
