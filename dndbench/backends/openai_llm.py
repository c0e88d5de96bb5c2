"""OpenAI chat-completions LLM (or any server speaking the same API, through ``base_url``).

The API key is read from the ``OPENAI_API_KEY`` environment variable only: it is never a config
option, never part of a cache key and never written anywhere.  Rate limits (429), server errors
(5xx), timeouts and dropped connections are retried with exponential backoff; ``max_calls`` caps
the API calls one process may make (a spending guard).  Answers are cached per conversation by
:meth:`~dndbench.backends.base.LLM.chat`, so re-runs cost nothing.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from dndbench.backends.base import LLM, LLMS, BackendConfig, Messages
from dndbench.errors import BackendError

KEY_VARIABLE = "OPENAI_API_KEY"
#: API calls made by this process, over all instances (checked against ``max_calls``)
_CALLS = {"count": 0}


@LLMS.register("openai")
class OpenAILLM(LLM):
    """OpenAI chat completions (default gpt-4-0125-preview, temperature 0.3, as in the DnD code)."""

    @dataclass
    class Config(BackendConfig):
        model: str = "gpt-4-0125-preview"
        batch_size: int = 1  # each answer is stored as soon as it is paid for
        temperature: float = 0.3
        max_tokens: int = 0  # 0: the server's default
        base_url: str = ""  # an OpenAI-compatible server; empty: api.openai.com
        timeout_s: float = 60.0
        max_retries: int = 5
        backoff_s: float = 1.0  # first retry delay, doubled on each retry
        max_backoff_s: float = 60.0
        max_calls: int = 1000  # API calls per process; 0: no cap

    def __init__(self, config: "OpenAILLM.Config", call_cache: Any = None,
                 cache_dir: Any = None) -> None:
        super().__init__(config, call_cache=call_cache, cache_dir=cache_dir)
        self._client: Any = None

    @property
    def model_id(self) -> str:
        """The model name, prefixed by the server when ``base_url`` is set."""
        base = self.config.base_url.rstrip("/")
        return f"{base}#{self.config.model}" if base else self.config.model

    def params(self) -> dict[str, Any]:
        out = {"temperature": self.config.temperature}
        if self.config.max_tokens:
            out["max_tokens"] = self.config.max_tokens
        return out

    def client(self) -> Any:
        """The ``openai.OpenAI`` client (its own retries off: this class retries)."""
        if self._client is None:
            key = os.environ.get(KEY_VARIABLE, "").strip()
            if not key:
                raise BackendError(f"llm 'openai' needs an API key: export {KEY_VARIABLE}=... "
                                   f"(it is read from the environment only), or choose another llm")
            import openai

            self._client = openai.OpenAI(api_key=key, base_url=self.config.base_url or None,
                                         timeout=self.config.timeout_s, max_retries=0)
        return self._client

    def _chat_batch(self, conversations: list[Messages]) -> list[str]:
        return [self._chat_one(messages) for messages in conversations]

    def _chat_one(self, messages: Messages) -> str:
        client = self.client()
        self._count_call()
        for attempt in range(self.config.max_retries + 1):
            try:
                response = client.chat.completions.create(**self._request(messages))
                return response.choices[0].message.content or ""
            except Exception as exc:
                if not _retryable(exc) or attempt == self.config.max_retries:
                    raise BackendError(self._failure(exc, attempt + 1)) from None
                time.sleep(min(self.config.backoff_s * 2**attempt, self.config.max_backoff_s))
        raise AssertionError("unreachable")

    def _request(self, messages: Messages) -> dict[str, Any]:
        request: dict[str, Any] = {"model": self.config.model, "messages": messages,
                                   "temperature": self.config.temperature}
        if self.config.max_tokens:
            request["max_tokens"] = self.config.max_tokens
        return request

    def _count_call(self) -> None:
        cap = self.config.max_calls
        if cap and _CALLS["count"] >= cap:
            raise BackendError(f"llm 'openai' reached its cap of {cap} API calls in this process; "
                               f"raise it with llm.max_calls=N (0 = no cap)")
        _CALLS["count"] += 1

    def _failure(self, exc: Exception, attempts: int) -> str:
        status = getattr(exc, "status_code", None)
        what = f"HTTP {status}" if status else type(exc).__name__
        message = (getattr(exc, "message", None) or str(exc)).strip().splitlines()
        text = message[0][:200] if message else ""
        key = os.environ.get(KEY_VARIABLE, "").strip()
        if key:
            text = text.replace(key, "***")
        return (f"OpenAI chat completion with model {self.config.model!r} failed after "
                f"{attempts} attempt(s): {what}: {text}")


def _retryable(exc: Exception) -> bool:
    """Rate limits, server errors, timeouts and connection failures are worth retrying."""
    import openai

    if isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError)):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(exc, openai.APIStatusError) and (status == 429 or (status or 0) >= 500)


def calls_made() -> int:
    """API calls made by this process so far."""
    return _CALLS["count"]


def reset_call_count() -> None:
    """Start counting API calls from zero (tests; a long-lived process between jobs)."""
    _CALLS["count"] = 0
