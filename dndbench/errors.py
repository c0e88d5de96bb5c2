"""User-facing errors: each one renders as a single line that says what was wrong and how to fix it.

The CLI catches :class:`DndbenchError` and prints ``error: <message>`` with exit status 2; any
other exception is a bug and keeps its traceback.
"""
from __future__ import annotations


class DndbenchError(Exception):
    """Base class of errors caused by the user's input or environment, not by a bug."""


class ConfigError(DndbenchError):
    """A configuration value is missing, of the wrong type or out of range."""


class UnknownComponentError(ConfigError):
    """A component name that no registry entry matches."""

    def __init__(self, kind: str, name: str, available: list[str], close: list[str]) -> None:
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        super().__init__(f"unknown {kind} {name!r}.{hint} Available: {', '.join(available) or '(none)'}")
        self.kind, self.name, self.available, self.close = kind, name, available, close


class DataError(DndbenchError):
    """Input data (an image, a CSV, a checkpoint, a probe folder) is missing or malformed."""


class BackendError(DndbenchError):
    """An external model or service (API, hub download) failed."""
