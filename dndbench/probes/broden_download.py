"""Download and unzip the Broden dataset (NetDissect's ``broden1_224`` / ``broden1_227``).

    python -m dndbench.probes.broden_download --dest data [--resolution 224] [--force]
                                              [--sha256 HEX]

The zip (about 1 GB) is streamed into a temporary folder in ``DEST`` with a progress bar
(:func:`dndbench.downloads.download`), checked against ``--sha256`` when one is given (a mismatch
is an error and nothing is kept), unzipped there, and only then renamed to
``DEST/broden1_<resolution>``, so an interrupted or corrupt download never leaves a half-written
dataset behind.  The dataset's authors publish no checksum, so none is checked by default: pass
the SHA-256 of a copy you trust (``sha256sum broden1_224.zip``) to pin it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from dndbench import downloads
from dndbench.errors import DataError, DndbenchError

URL_TEMPLATE = "http://netdissect.csail.mit.edu/data/broden1_{resolution}.zip"
RESOLUTIONS = (224, 227)


def open_url(url: str) -> Any:
    """Open ``url`` for reading (a seam that tests replace)."""
    return urllib.request.urlopen(url, timeout=60)


def dataset_dir(dest: Path | str, resolution: int = 224) -> Path:
    """Where :func:`download` puts the dataset: ``DEST/broden1_<resolution>``."""
    return Path(dest) / f"broden1_{resolution}"


def _fetch(url: str, path: Path, sha256: str | None, progress: bool) -> None:
    try:
        downloads.download(url, path, sha256=sha256, opener=open_url, progress=progress,
                           fix="retry, or check the --sha256 value")
    except OSError as exc:  # URLError, HTTPError, timeouts and connection resets are OSErrors
        raise DataError(f"could not download {url}: {exc}; fetch it by hand and unzip it into "
                        f"the destination folder") from None


def _extract(zip_path: Path, workdir: Path, url: str) -> Path:
    """Unzip into ``workdir``; return the folder that holds ``index.csv``."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(workdir)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"download of {url} is not a valid zip file: {exc}") from None
    candidates = [workdir] + sorted(p for p in workdir.iterdir() if p.is_dir())
    for folder in candidates:
        if (folder / "index.csv").is_file():
            return folder
    raise DataError(f"{url} holds no index.csv; it is not a Broden dataset")


def download(dest: Path | str, resolution: int = 224, *, force: bool = False,
             progress: bool = True, sha256: str | None = None) -> Path:
    """Download Broden at ``resolution`` into ``dest``; return the dataset folder.

    An existing dataset folder is kept unless ``force``; with ``sha256`` the zip must have that
    SHA-256 (a mismatch is a :class:`DataError` and nothing is kept)."""
    if resolution not in RESOLUTIONS:
        raise DataError(f"Broden comes at resolution {' or '.join(map(str, RESOLUTIONS))}, "
                        f"not {resolution}")
    sha256 = downloads.check_sha256(sha256, "--sha256")
    dest = Path(dest)
    target = dataset_dir(dest, resolution)
    if (target / "index.csv").is_file() and not force:
        return target
    dest.mkdir(parents=True, exist_ok=True)
    url = URL_TEMPLATE.format(resolution=resolution)
    workdir = Path(tempfile.mkdtemp(dir=dest, prefix=f".{target.name}.download."))
    try:
        zip_path = workdir / f"{target.name}.zip"
        _fetch(url, zip_path, sha256, progress)
        (workdir / "unzipped").mkdir()
        folder = _extract(zip_path, workdir / "unzipped", url)
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=dest, prefix=f".{target.name}.old."))
            os.replace(target, old / target.name)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, target)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m dndbench.probes.broden_download",
                                     description="Download the Broden dataset for probe=broden.")
    parser.add_argument("--dest", default="data", help="folder to put broden1_<res> in (data)")
    parser.add_argument("--resolution", type=int, default=224, choices=RESOLUTIONS)
    parser.add_argument("--force", action="store_true", help="replace an existing copy")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--sha256", default=None,
                        help="expected SHA-256 of the zip (none is published; default: no check)")
    args = parser.parse_args(argv)
    try:
        target = download(args.dest, args.resolution, force=args.force, progress=not args.quiet,
                          sha256=args.sha256)
    except DndbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Broden is in {target}; use probe=broden probe.root={target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
