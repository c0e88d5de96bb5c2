"""A backend failure is never a score: a unit whose backend call fails is missing, with the
reason, and every other unit is described exactly as without the failure."""
from __future__ import annotations

import pytest
from test_dnd import FakeLLM, dnd, fake_context  # the fake DnD backends

from dndbench.backends.base import LLMS, BackendConfig
from dndbench.describers.describe_cache import describe_cached
from dndbench.errors import BackendError

FAILING = "fake_failing_llm"


@LLMS.register(FAILING)
class FailingLLM(FakeLLM):
    """The fake LLM, except that any call holding a conversation about ``poison`` raises."""

    poison = ""

    def _chat_batch(self, conversations):
        for c in conversations:
            if self.poison and self.poison in c[-1]["content"]:
                raise BackendError(f"server refused a request about {self.poison}")
        return super()._chat_batch(conversations)


def failing_context(tmp_path, units):
    ctx = fake_context(tmp_path, units=units)
    ctx.backends["llm"] = BackendConfig(name=FAILING, device="cpu")
    return ctx


@pytest.mark.parametrize("units_per_batch", [0, 3])
def test_failed_units_are_missing_and_the_others_unchanged(tmp_path, monkeypatch, units_per_batch):
    units = list(range(0, 16, 2))
    good, _ = describe_cached(dnd(units_per_batch=units_per_batch),
                              fake_context(tmp_path / "good", units=units))
    poison = str(good["captions"].iloc[0]).split(" | ")[0].split()[1]  # a colour word
    monkeypatch.setattr(FailingLLM, "poison", poison)
    failures: dict[int, str] = {}
    ctx = failing_context(tmp_path / "bad", units)
    frame, from_cache = describe_cached(dnd(units_per_batch=units_per_batch), ctx,
                                        failures=failures)
    assert not from_cache
    assert failures and all(poison in reason for reason in failures.values())
    described = set(frame["unit"])
    assert described and described.isdisjoint(failures)
    assert described | set(failures) == set(units)
    expected = good[good["unit"].isin(described)].reset_index(drop=True)
    assert frame.reset_index(drop=True)[expected.columns.tolist()].equals(expected)

    # nothing is stored under the full key: a rerun retries the failed units, and once the
    # backend works they are described like the rest
    monkeypatch.setattr(FailingLLM, "poison", "")
    again, cached = describe_cached(dnd(units_per_batch=units_per_batch),
                                    failing_context(tmp_path / "bad", units))
    assert not cached
    assert again.reset_index(drop=True).equals(good.reset_index(drop=True))


def test_describer_without_chunks_lets_the_error_end_the_job(tmp_path, monkeypatch):
    from dndbench.describers.base import DESCRIBERS, Describer

    calls = []

    class Flaky(Describer):
        needs_weights = needs_probe = False

        def describe(self, ctx):
            calls.append(1)
            raise BackendError("captioner is down")

    d = Flaky(DESCRIBERS.config("dnd"))
    with pytest.raises(BackendError, match="down"):
        describe_cached(d, fake_context(tmp_path, units=[0, 1]))
    assert calls == [1]  # no substitute table was made
