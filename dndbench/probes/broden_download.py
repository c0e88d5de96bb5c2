"""Download and unzip the Broden dataset (NetDissect's ``broden1_224`` / ``broden1_227``).

    python -m dndbench.probes.broden_download --dest data [--resolution 224] [--force]

The zip (about 1 GB) is streamed into a temporary file in ``DEST`` with a progress bar, unzipped
into a temporary folder there, and only then renamed to ``DEST/broden1_<resolution>``, so an
interrupted download never leaves a half-written dataset behind.
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
from typing import Any, BinaryIO

from dndbench.errors import DataError, DndbenchError

URL_TEMPLATE = "http://netdissect.csail.mit.edu/data/broden1_{resolution}.zip"
RESOLUTIONS = (224, 227)
CHUNK = 1 << 20


def open_url(url: str) -> Any:
    """Open ``url`` for reading (a seam that tests replace)."""
    return urllib.request.urlopen(url, timeout=60)


def dataset_dir(dest: Path | str, resolution: int = 224) -> Path:
    """Where :func:`download` puts the dataset: ``DEST/broden1_<resolution>``."""
    return Path(dest) / f"broden1_{resolution}"


def _fetch(url: str, out: BinaryIO, progress: bool) -> None:
    from tqdm.auto import tqdm

    try:
        with open_url(url) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
                      disable=not progress) as bar:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
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
             progress: bool = True) -> Path:
    """Download Broden at ``resolution`` into ``dest``; return the dataset folder.

    An existing dataset folder is kept unless ``force``."""
    if resolution not in RESOLUTIONS:
        raise DataError(f"Broden comes at resolution {' or '.join(map(str, RESOLUTIONS))}, "
                        f"not {resolution}")
    dest = Path(dest)
    target = dataset_dir(dest, resolution)
    if (target / "index.csv").is_file() and not force:
        return target
    dest.mkdir(parents=True, exist_ok=True)
    url = URL_TEMPLATE.format(resolution=resolution)
    fd, tmp_zip = tempfile.mkstemp(dir=dest, prefix=f".{target.name}.", suffix=".zip.part")
    workdir = Path(tempfile.mkdtemp(dir=dest, prefix=f".{target.name}.unzip."))
    try:
        with os.fdopen(fd, "wb") as out:
            _fetch(url, out, progress)
        folder = _extract(Path(tmp_zip), workdir, url)
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=dest, prefix=f".{target.name}.old."))
            os.replace(target, old / target.name)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, target)
    finally:
        Path(tmp_zip).unlink(missing_ok=True)
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
    args = parser.parse_args(argv)
    try:
        target = download(args.dest, args.resolution, force=args.force, progress=not args.quiet)
    except DndbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Broden is in {target}; use probe=broden probe.root={target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
