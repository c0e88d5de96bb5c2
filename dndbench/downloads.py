"""Checksummed downloads, through ``pooch``: a URL is fetched into a temporary file beside its
target, its SHA-256 is compared with the expected one, and only a verified file is moved into
place, so a corrupt or truncated download never sits where a good one is expected.

The transfer itself goes through :mod:`urllib` (so ``file://`` URLs work, and tests can replace
the opener); a source may pin its checksum pip-style, as ``URL#sha256=<64 hex digits>``.
"""
from __future__ import annotations

import hashlib
import logging
import re
import urllib.request
from pathlib import Path
from typing import Any, Callable

from dndbench.errors import ConfigError, DataError

CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_PINNED = re.compile(r"^(?P<url>.*)#sha256=(?P<sha256>[^#&]*)$")


def check_sha256(value: str | None, option: str) -> str | None:
    """``value`` as a lower-case SHA-256 hex digest (None / empty: no check); ConfigError naming
    ``option`` when it is not 64 hex digits."""
    if not value:
        return None
    value = value.strip()
    if not _HEX64.fullmatch(value):
        raise ConfigError(f"{option}: a SHA-256 checksum is 64 hex digits, got {value!r}")
    return value.lower()


def split_pinned(source: str, option: str) -> tuple[str, str | None]:
    """``URL#sha256=HEX`` -> (URL, HEX); a source without the fragment -> (source, None)."""
    match = _PINNED.match(source)
    if not match:
        return source, None
    return match["url"], check_sha256(match["sha256"], option)


def sha256_of(path: Path | str) -> str:
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _urlopen(url: str) -> Any:
    return urllib.request.urlopen(url, timeout=60)


class _Transfer:
    """A pooch downloader: streams ``url`` into pooch's temporary file with ``opener``, with an
    optional progress bar, and keeps the SHA-256 of what it wrote (for the mismatch message)."""

    def __init__(self, opener: Callable[[str], Any], progress: bool) -> None:
        self.opener, self.progress = opener, progress
        self.sha256 = ""

    def __call__(self, url: str, output_file: str, _pooch: Any = None,
                 check_only: bool = False) -> bool | None:
        if check_only:
            return True
        from tqdm.auto import tqdm

        digest = hashlib.sha256()
        with self.opener(url) as response, open(output_file, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
                      disable=not self.progress) as bar:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        self.sha256 = digest.hexdigest()
        return None


def download(url: str, path: Path | str, *, sha256: str | None = None,
             opener: Callable[[str], Any] | None = None, progress: bool = False,
             fix: str = "") -> Path:
    """Download ``url`` to ``path`` and return ``path``; with ``sha256`` the bytes must match it.

    Transfer failures raise the opener's ``OSError`` (callers word them for their users); a
    checksum mismatch raises a one-line :class:`DataError` (ending in ``fix`` when given) and
    leaves nothing at ``path``.  An existing file at ``path`` is replaced.
    """
    import pooch

    path = Path(path)
    expected = check_sha256(sha256, "sha256")
    transfer = _Transfer(opener or _urlopen, progress)
    path.unlink(missing_ok=True)  # pooch keeps an existing file when no checksum is given
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)  # pooch logs every download at INFO level
    try:
        pooch.retrieve(url, known_hash=f"sha256:{expected}" if expected else None,
                       fname=path.name, path=path.parent, downloader=transfer)
    except ValueError:
        if not expected or not transfer.sha256 or transfer.sha256 == expected:
            raise
        hint = f"; {fix}" if fix else ""
        raise DataError(f"download of {url} is corrupt or has changed: its SHA-256 is "
                        f"{transfer.sha256}, expected {expected}{hint}") from None
    finally:
        logger.setLevel(level)
    return path
