"""The proposing summariser (``llm=proposer``): distinct seeded candidates over DnD's shuffled
summarise requests, cached answers, and no correct concept cut by its defaults."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dndbench.backends.base import LLMS
from dndbench.backends.call_cache import services
from dndbench.cache import Cache
from dndbench.describers.dnd import candidates as cand
from dndbench.toyworld.captions import canonical_caption
from dndbench.toyworld.keyword_summariser import content_terms
from dndbench.toyworld.proposing_summariser import propose, term_weights
from dndbench.toyworld.world import sample_scene


def _llm(tmp_path, name: str = "proposer", **options):
    return LLMS.create(LLMS.config(name, **options), services=services(Cache(tmp_path)))


def _captions(seed: int, colour: str = "red", majority: int = 8, minority: int = 2) -> list[str]:
    """``majority`` toy captions of ``colour`` objects and ``minority`` of blue ones (each with a
    random shape, texture and scene, so they mention many concepts)."""
    rng = np.random.default_rng(seed)
    return ([canonical_caption(sample_scene(rng, colour=colour)) for _ in range(majority)]
            + [canonical_caption(sample_scene(rng, colour="blue")) for _ in range(minority)])


def _unit_candidates(llm, captions: list[str], unit: int, n: int = 5, seed: int = 0) -> list[str]:
    """DnD's N summarise requests of one unit (seeded shuffles), normalised as DnD does."""
    conversations = [cand.summary_conversation(cand.shuffled(captions, seed, unit, i))
                     for i in range(n)]
    return cand.normalise_candidates([cand.after_colon(a) for a in llm.chat(conversations)])


@pytest.mark.parametrize("unit", [0, 1, 2, 3])
def test_distinct_candidates_for_a_unit_with_several_concepts(tmp_path, unit):
    captions = _captions(unit)
    proposed = _unit_candidates(_llm(tmp_path), captions, unit)
    keyword = _unit_candidates(_llm(tmp_path, "keyword"), captions, unit)
    assert len(proposed) >= 3 > len(keyword)
    vocabulary = {t for c in captions for t in content_terms(c)}
    for label in proposed:  # every proposal is built from 1-3 terms of the captions
        terms = content_terms(label)
        assert 1 <= len(terms) <= 3 and set(terms) <= vocabulary, label


def test_the_same_conversation_gives_the_same_answer(tmp_path):
    captions = _captions(5)
    conversations = [cand.summary_conversation(cand.shuffled(captions, 0, 7, i)) for i in range(5)]
    first = _llm(tmp_path / "a")
    answers = first.chat(conversations)
    assert first.computed == 5
    assert first.chat(conversations) == answers and first.computed == 5  # from the call cache
    fresh = _llm(tmp_path / "b")  # a new cache: recomputed, same answers
    assert fresh.chat(list(reversed(conversations))) == list(reversed(answers))
    assert fresh.computed == 5
    reseeded = _llm(tmp_path / "c", seed=1).chat(conversations)
    assert reseeded != answers  # the seed is part of the draw


@pytest.mark.parametrize("seed", range(6))
def test_the_majority_concept_is_among_the_candidates(tmp_path, seed):
    llm = _llm(tmp_path)
    captions = _captions(100 + seed, colour="green")
    candidates = _unit_candidates(llm, captions, unit=seed)
    assert any("green" in content_terms(c) for c in candidates), candidates


def test_defaults_keep_every_term_eligible():
    lists = [["red", "circle"], ["red", "star"], ["red"], ["blue", "ring"]]
    weights = term_weights(lists)
    assert list(weights) == ["red", "circle", "star", "blue", "ring"]
    assert weights["red"] == pytest.approx(0.75 ** 2) and weights["ring"] == pytest.approx(1 / 16)
    assert list(term_weights(lists, min_share=0.9)) == ["red"]  # the top term always stays
    lengths = {len(propose(lists, np.random.default_rng(s))) for s in range(40)}
    assert lengths == {1, 2, 3}


def test_simplify_requests_match_the_keyword_baseline(tmp_path):
    simplify = [cand.simplify_conversation(c) for c in _captions(3)]
    assert _llm(tmp_path / "p").chat(simplify) == _llm(tmp_path / "k", "keyword").chat(simplify)
    empty = [[{"role": "user", "content": ""}]]
    assert _llm(tmp_path / "p").chat(empty) == [""]


def test_registered_with_light_imports():
    assert "proposer" in LLMS.names()
    code = "import sys, dndbench.toyworld.proposing_summariser; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
