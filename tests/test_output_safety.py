"""Outputs are safe to open and to share: spreadsheet formulas in descriptions.csv are
neutralised (the parquet copy keeps the exact text), Markdown tables escape ``|`` and HTML, and
every file a job writes (run folder and cache) gets the user's umask, not mkstemp's 0600."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from dndbench.results.records import neutralise_cell, read_descriptions, restore_cell

#: labels a model (or another author's file) might write, and what a spreadsheet would run
LABELS = ['=HYPERLINK("http://evil.example","click")', "+1+1", "-2+3", "@SUM(A1:A9)",
          "\tindented", "\rreturn", "'quoted", "-0.5", "plain words", "a | b <b>bold</b>"]
PLUGIN = textwrap.dedent(f'''
    from dataclasses import dataclass

    import pandas as pd

    from dndbench.describers.base import DESCRIBERS, Describer, DescriberConfig, Description
    from dndbench.metrics.base import METRICS, Metric

    LABELS = {LABELS!r}


    @DESCRIBERS.register("hostile")
    class Hostile(Describer):
        """Labels units with texts a spreadsheet would run."""

        needs_weights = False
        needs_probe = False
        in_default_suite = False

        @dataclass
        class Config(DescriberConfig):
            pass

        def describe(self, ctx):
            return [Description(unit=u, label=LABELS[i % len(LABELS)],
                                alternatives=["=1+1", "fine"]) for i, u in enumerate(ctx.units)]


    @METRICS.register("label_length")
    class LabelLength(Metric):
        """The length of each label."""

        def score(self, descriptions, ctx):
            return pd.DataFrame({{"unit": descriptions["unit"], "metric": "label_length",
                                  "value": descriptions["label"].str.len().astype(float)}})
''')
SETTING = "mine | <script>alert(1)</script>"


@pytest.mark.parametrize("text, written", [
    ("=1+1", "'=1+1"), ("+1", "+1"), ("+x", "'+x"), ("-x", "'-x"), ("-0.5", "-0.5"),
    ("-1e3", "-1e3"), ("@a", "'@a"), ("\tt", "'\tt"), ("\rr", "'\rr"), ("'q", "''q"),
    ("ok", "ok"), ("", ""), (-0.5, -0.5), (None, None),
], ids=repr)
def test_the_spreadsheet_rule_and_its_inverse(text: object, written: object) -> None:
    assert neutralise_cell(text) == written
    assert restore_cell(neutralise_cell(text)) == text


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small job with hostile labels, run under umask 002 (a group-shared setup)."""
    folder = tmp_path_factory.mktemp("safety")
    (folder / "plugins").mkdir()
    (folder / "plugins" / "hostile.py").write_text(PLUGIN)
    env = {**os.environ, "DNDBENCH_CACHE": str(folder / "cache")}
    out = subprocess.run(
        [sys.executable, "-m", "dndbench", "describer=hostile", "metric=label_length",
         f"describer.label_as='{SETTING}'", f"hydra.run.dir={folder / 'run'}"],
        cwd=folder, env=env, capture_output=True, text=True, timeout=600,
        preexec_fn=lambda: os.umask(0o002))
    assert out.returncode == 0, out.stderr[-3000:]
    return folder / "run"


def test_descriptions_csv_cells_cannot_run_and_parquet_keeps_the_text(run_dir: Path) -> None:
    raw = pd.read_csv(run_dir / "descriptions.csv", keep_default_na=False)
    for cell in [*raw["label"], *raw["label_2"]]:
        assert not str(cell).startswith(("=", "+", "@", "\t", "\r")) or cell in ("+1",)
        assert not str(cell).startswith("-") or str(cell) == "-0.5"
    assert "'=HYPERLINK(\"http://evil.example\",\"click\")" in set(raw["label"])
    assert "-0.5" in set(raw["label"].astype(str))
    exact = pd.read_parquet(run_dir / "descriptions.parquet")
    assert set(exact["label"]) == set(LABELS[:len(exact)])
    assert set(exact["label_2"]) == {"=1+1"}
    assert list(read_descriptions(run_dir / "descriptions.csv")["label"]) == list(exact["label"])
    assert set(exact["setting"]) == {SETTING}


def test_markdown_escapes_pipes_and_html(run_dir: Path) -> None:
    board = (run_dir / "leaderboard.md").read_text()
    assert SETTING not in board and "<script>" not in board
    assert "mine \\| &lt;script&gt;alert(1)&lt;/script&gt;" in board


def test_files_get_the_users_umask(run_dir: Path) -> None:
    cache = run_dir.parent / "cache"
    files = [p for root in (run_dir, cache) for p in root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and any(p.name == "summary.json" for p in files)
    modes = {str(p.relative_to(run_dir.parent)): oct(stat.S_IMODE(p.stat().st_mode))
             for p in files}
    assert {m for m in modes.values()} == {"0o664"}, modes


@pytest.mark.parametrize("label", ["=HYPERLINK(\"x\")", "+cmd", "@sum", "-x", "'quoted"])
def test_a_label_a_spreadsheet_would_run_is_refused(label: str) -> None:
    from dndbench.describers.base import DESCRIBERS
    from dndbench.errors import ConfigError
    from dndbench.pipeline import setting_label

    with pytest.raises(ConfigError, match="label_as=.*start the label with a letter or a digit"):
        setting_label(DESCRIBERS.config("constant", label_as=label))
    assert setting_label(DESCRIBERS.config("constant", label_as="DnD, beta=5")) == "DnD, beta=5"
