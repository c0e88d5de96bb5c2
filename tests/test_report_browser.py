"""report.html in a real browser: headless Chromium renders it at two widths, its scripts run
without a console error, and the leaderboard, the cards, the filters and the pictures are there
after they ran (the DOM is read back with ``--dump-dom``).

Needs the Debian package ``chromium`` (``apt-get install -y chromium``; ``.ci/run`` installs it).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_report import build_report_run

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install -y "
                             "chromium; .ci/run installs it)")
WIDTHS = (1400, 420)
#: what Chromium logs (``--enable-logging=stderr``) for anything written to the page's console
#: (``...:INFO:CONSOLE:12] "Uncaught TypeError: ..."``; every level looks alike): the report's
#: script writes nothing there, so any such line is an uncaught exception or a complaint
CONSOLE_LINE = re.compile(r":CONSOLE[:(]\d+\)?\]")


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium once (no network, no sync, a throw-away profile)."""
    assert CHROMIUM is not None
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
               "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if CONSOLE_LINE.search(line)]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    return build_report_run(root / "run", root / "cache")


def test_the_harness_sees_console_errors(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text("<!doctype html><p>x</p><script>undefinedFunction();</script>")
    out = chromium(tmp_path / "profile", "--dump-dom", page.as_uri())
    assert any("Uncaught ReferenceError" in line for line in console_errors(out.stderr)), \
        out.stderr[-2000:]


def test_scripts_run_without_errors_and_the_page_is_complete(report: Path, tmp_path: Path) -> None:
    out = chromium(tmp_path / "profile", "--dump-dom", report.as_uri())
    assert out.returncode == 0, out.stderr[-2000:]
    assert not console_errors(out.stderr), console_errors(out.stderr)
    dom = out.stdout
    assert 'class="board overview sortable"' in dom and "planted_rank" in dom  # leaderboard
    assert len(re.findall(r'<article class="card"', dom)) == 4  # the cards
    assert 'id="f-setting"' in dom and 'id="f-fail"' in dom and 'id="f-sort"' in dom  # filters
    assert re.search(r'<img src="report_files/layer1/u0_top\.jpg"', dom)  # a picture
    assert "Showing units 1–4 of 4." in dom  # written by the script: it ran to the end


def test_a_filter_in_the_address_selects_the_failures(report: Path, tmp_path: Path) -> None:
    out = chromium(tmp_path / "profile", "--dump-dom",
                   report.as_uri() + "#setting=netdissect&fail=1")
    assert not console_errors(out.stderr), console_errors(out.stderr)
    shown = re.findall(r'<article class="card"[^>]*data-unit="(\d+)"(?![^>]*hidden)', out.stdout)
    assert shown == ["3"]  # netdissect's only miss: unit 3 (truth yellow, label green)
    assert "Showing units 1–1 of 1 (4 in all)." in out.stdout


@pytest.mark.parametrize("width", WIDTHS)
def test_screenshots_at_two_widths(report: Path, tmp_path: Path, width: int) -> None:
    from PIL import Image

    shot = tmp_path / f"report-{width}.png"
    out = chromium(tmp_path / "profile", f"--screenshot={shot}",
                   f"--window-size={width},1600", report.as_uri())
    assert out.returncode == 0 and shot.is_file(), out.stderr[-2000:]
    assert not console_errors(out.stderr), console_errors(out.stderr)
    pixels = np.asarray(Image.open(shot).convert("L"), np.float64)
    assert pixels.shape == (1600, width)
    assert pixels.std() > 10 and (pixels < 100).mean() > 0.005  # text and tables, not blank
