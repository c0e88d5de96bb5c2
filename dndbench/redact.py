"""Secrets: which names and values count as secret, and keeping them out of everything written.

API keys and tokens come from the environment only (``OPENAI_API_KEY``, ``HF_TOKEN``, a
server URL with credentials in ``OPENAI_BASE_URL``).  The command line refuses them before
Hydra sees it (:func:`refuse_secrets`), so Hydra's own files (``.hydra/*.yaml``,
``multirun.yaml``) never hold one; the run record drops secret-named keys
(:func:`scrub_secrets`) and every log line of a job passes :class:`RedactingFilter`, which
replaces the environment's secret values and URL credentials by ``***``.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Iterable

from dndbench.errors import ConfigError, has_credentials, without_credentials

#: an option or variable name that holds a secret: ``api_key``, ``OPENAI_API_KEY``, ``hf_token``,
#: ``password``, ``client_secret`` (not ``max_tokens``)
SECRET_NAME = re.compile(r"(^|[_.-])(api_?key|token|secret|password|passwd)$", re.IGNORECASE)
#: environment variables whose values are secret whatever their name
SECRET_VARIABLES = ("OPENAI_API_KEY",)
#: environment variables that may hold a URL with credentials
URL_VARIABLES = ("OPENAI_BASE_URL",)
#: shorter values are not treated as secrets (they would match everywhere)
MIN_SECRET_LENGTH = 6
REDACTED = "***"
#: loggers that log every request URL at INFO (quieted to WARNING during a job)
NOISY_LOGGERS = ("httpx", "httpcore", "openai", "urllib3")


def is_secret_name(name: str) -> bool:
    """Whether an option or variable called ``name`` holds a secret."""
    return bool(SECRET_NAME.search(str(name).split(".")[-1]))


def secret_values(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The secret values of the environment, by the variable holding them: secret-named
    variables, :data:`SECRET_VARIABLES` and the credentials of :data:`URL_VARIABLES`."""
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for name, value in env.items():
        value = value.strip()
        if len(value) >= MIN_SECRET_LENGTH and (name in SECRET_VARIABLES or is_secret_name(name)):
            out[value] = name
    for name in URL_VARIABLES:
        match = re.search(r"://([^/\s@]+)@", env.get(name, ""))
        if match:
            userinfo = match.group(1)
            for part in (userinfo, *userinfo.split(":", 1)):
                if len(part) >= MIN_SECRET_LENGTH:
                    out[part] = name
    return out


def redact(text: str, values: Iterable[str] | None = None) -> str:
    """``text`` without URL credentials and without any of the secret ``values`` (default: the
    environment's, :func:`secret_values`)."""
    out = without_credentials(text)
    for value in sorted(secret_values() if values is None else values, key=len, reverse=True):
        out = out.replace(value, REDACTED)
    return out


def scrub_secrets(obj: Any) -> Any:
    """A copy of a config (nested dicts and lists) whose secret-named keys are ``"<redacted>"``
    and whose strings hold no URL credentials or environment secrets."""
    values = secret_values()
    if isinstance(obj, dict):
        return {k: ("<redacted>" if is_secret_name(str(k)) and v else scrub_secrets(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub_secrets(v) for v in obj]
    if isinstance(obj, str):
        return redact(obj, values)
    return obj


def refuse_secrets(overrides: list[str]) -> None:
    """Raise a ConfigError for a command-line override that carries a secret: a secret-named
    key (``+llm.api_key=...``, ``hydra.job.env_set.OPENAI_API_KEY=...``), a URL with
    credentials, or the value of a secret environment variable.  The message never repeats
    the secret."""
    values = secret_values()
    for line in overrides:
        key, _, value = line.lstrip("+~").partition("=")
        if is_secret_name(key) and value.strip() not in ("", "null"):
            raise ConfigError(
                f"{key}: secrets are never options (they would be written to the run's "
                f"config files); export {_variable_for(key)} instead: API keys and tokens "
                f"are read from the environment only")
        if has_credentials(value):
            raise ConfigError(
                f"{key} holds a URL with credentials (user:password@), which would be written "
                f"to the run's config files; give the URL without them and put the server in "
                f"the environment instead (export OPENAI_BASE_URL=https://user:pw@host/v1 for "
                f"llm=openai; it is read from there only and never written)")
        for secret, variable in values.items():
            if secret in value:
                raise ConfigError(f"{key}: its value holds the value of ${variable}, a secret "
                                  f"that would be written to the run's config files; secrets "
                                  f"are read from the environment only")


def refuse_secret_config(container: Any, where: str = "") -> None:
    """Raise a ConfigError for a secret-named option with a value or a string holding URL
    credentials anywhere in a composed config (e.g. one set by a ``--config-dir`` YAML)."""
    if isinstance(container, dict):
        for key, value in container.items():
            path = f"{where}.{key}" if where else str(key)
            if is_secret_name(str(key)) and isinstance(value, str) and value.strip():
                refuse_secrets([f"{path}={value}"])
            refuse_secret_config(value, path)
    elif isinstance(container, list):
        for i, value in enumerate(container):
            refuse_secret_config(value, f"{where}[{i}]")
    elif isinstance(container, str) and has_credentials(container):
        refuse_secrets([f"{where}={container}"])


def _variable_for(key: str) -> str:
    """The environment variable to use instead of the option ``key``."""
    if key.startswith("hydra.job.env_set."):
        return key.rsplit(".", 1)[-1] + "=... in the environment"
    return "OPENAI_API_KEY=... (llm=openai) or the service's own variable"


class RedactingFilter(logging.Filter):
    """A logging filter that rewrites each record without URL credentials or environment
    secrets (attach it to handlers: it then sees every propagated record)."""

    def __init__(self) -> None:
        super().__init__()
        self.values = list(secret_values())

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self.values)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


def guard_logging() -> None:
    """Redact every handler of the root logger and quiet the loggers that print request URLs."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
