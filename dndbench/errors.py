"""User-facing errors: each one renders as a single line that says what was wrong and how to fix it.

The CLI catches :class:`DndbenchError` and prints ``error: <message>`` with exit status 2; any
other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import re

#: the ``user:password@`` (or ``token@``) part of a URL
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")


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


class UnknownOptionError(ConfigError):
    """An option (config key) that the config it was given to does not have."""

    def __init__(self, where: str, key: str, valid: list[str]) -> None:
        import difflib

        close = difflib.get_close_matches(key, valid, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        super().__init__(f"{where} has no option {key!r}.{hint} Valid options: "
                         f"{', '.join(valid) or '(none)'}")
        self.where, self.key, self.valid, self.close = where, key, valid, close


class DataError(DndbenchError):
    """Input data (an image, a CSV, a checkpoint, a probe folder) is missing or malformed."""


class BackendError(DndbenchError):
    """An external model or service (API, hub download) failed."""


def without_credentials(text: str) -> str:
    """``text`` with the credentials of every URL in it removed (``https://user:pw@host`` ->
    ``https://host``), so messages and logs can name a server safely."""
    return _URL_USERINFO.sub(lambda m: m.group("scheme"), str(text))


def has_credentials(text: str) -> bool:
    """Whether ``text`` holds a URL with credentials (``scheme://user:pw@host``)."""
    return bool(_URL_USERINFO.search(str(text)))
