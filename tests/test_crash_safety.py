"""Crash safety, in-process: a killed describer resumes after the chunks it stored; a run
directory killed while being written is marked incomplete and skipped by ``leaderboard``.  The
kill here is an exception nothing catches; tests/test_kill.py kills whole jobs with SIGKILL and
tests/test_training_checkpoint.py covers trainings (docs/reliability.md, "Killed jobs")."""
from __future__ import annotations

import pandas as pd
import pytest

from dndbench.describers.base import DESCRIBERS, Describer, Description
from dndbench.describers.describe_cache import describe_cached
from dndbench.testing.kit import tiny_context


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, nothing catches it."""


class Chunked(Describer):
    needs_weights = needs_probe = False
    kill_at: int | None = None
    computed: list[list[int]] = []

    def chunk_units(self) -> int:
        return 2

    def describe(self, ctx):
        return self.describe_units(ctx, list(ctx.units))

    def describe_units(self, ctx, units):
        if self.kill_at is not None and self.kill_at in units:
            raise Killed()
        type(self).computed.append(list(units))
        return [Description(unit=u, label=f"concept {u}", score=float(u)) for u in units]


@pytest.mark.parametrize("kill_at", [2, 4])
def test_killed_describer_resumes_where_it_stopped(tmp_path, monkeypatch, kill_at):
    units = [0, 1, 2, 3, 4, 5]
    monkeypatch.setattr(Chunked, "computed", [])
    whole, _ = describe_cached(Chunked(DESCRIBERS.config("dnd")), tiny_context(tmp_path / "a", units=units))

    monkeypatch.setattr(Chunked, "computed", [])
    monkeypatch.setattr(Chunked, "kill_at", kill_at)
    with pytest.raises(Killed):
        describe_cached(Chunked(DESCRIBERS.config("dnd")), tiny_context(tmp_path / "b", units=units))
    done_before = [u for c in Chunked.computed for u in c]
    assert done_before == units[:kill_at]

    monkeypatch.setattr(Chunked, "computed", [])
    monkeypatch.setattr(Chunked, "kill_at", None)
    ctx = tiny_context(tmp_path / "b", units=units)
    frame, cached = describe_cached(Chunked(DESCRIBERS.config("dnd")), ctx)
    assert not cached and frame.equals(whole)
    assert [u for c in Chunked.computed for u in c] == units[kill_at:]  # nothing stored is redone
    assert ctx.counters["describe/chunks_cached"] == kill_at // 2
    assert ctx.counters["describe/chunks_computed"] == (len(units) - kill_at) // 2


def test_leaderboard_skips_an_incomplete_run(tmp_path, caplog):
    from dndbench.cli import mark_complete, mark_incomplete
    from dndbench.results.leaderboard import load_scores

    row = {"model": "m", "layer": "l", "probe": "p", "neuron_set": "n", "metric": "x",
           "setting": "s", "unit": 0, "value": 1.0}
    for name in ("done", "killed"):
        run = tmp_path / name
        mark_incomplete(run)
        pd.DataFrame([row | {"setting": name}]).to_csv(run / "scores.csv", index=False)
    mark_complete(tmp_path / "done")
    assert (tmp_path / "done" / "COMPLETE").exists()
    assert not (tmp_path / "done" / "INCOMPLETE").exists()
    scores = load_scores([tmp_path])
    assert set(scores["setting"]) == {"done"}
    assert "killed" in caplog.text and "INCOMPLETE" in caplog.text
