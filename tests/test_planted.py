"""The planted-concept catalogues and the seeded scenes ToyNet is trained on."""
from __future__ import annotations

import numpy as np
import pytest

from dndbench.toyworld import planted as P
from dndbench.toyworld.render import render, shows
from dndbench.toyworld.synonyms import concept_parts
from dndbench.toyworld.world_report import concept_kind

WIDTHS = (24, 48, 96, 128)


def _parts(catalogue: str) -> set[str]:
    return {part for concepts in P.CATALOGUES[catalogue].values() for c in concepts
            for alternative in concept_parts(c) for part in alternative}


def test_the_milan_catalogue_shares_no_concept_with_the_benchmark() -> None:
    assert not _parts("benchmark") & _parts("milan")


def test_the_benchmark_has_every_kind_in_every_layer_it_needs() -> None:
    kinds = {concept_kind(c) for concepts in P.CATALOGUES["benchmark"].values() for c in concepts}
    assert kinds == {"single", "compositional", "polysemantic", "open-vocabulary"}
    units = P.planted_units("benchmark", WIDTHS)
    assert sorted(units) == ["layer1", "layer2", "layer3", "layer4"]
    assert all(len(v) >= 8 for v in units.values())
    for layer, v in units.items():
        assert len(set(v)) == len(v) and all(0 < u < WIDTHS[int(layer[-1]) - 1] for u in v)


def test_an_unknown_catalogue_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="choose from benchmark, milan"):
        P.planted_units("nope", WIDTHS)


@pytest.mark.parametrize("concept", sorted({c for v in P.CATALOGUES["benchmark"].values()
                                            for c in v}))
def test_seeded_scenes_show_the_concept_and_near_misses_mostly_do_not(concept: str) -> None:
    rng = np.random.default_rng(0)
    shown = [shows(s, render(s)[1], concept)
             for s in (P.seeded_scene(concept, rng, negative=False) for _ in range(12))]
    missed = [shows(s, render(s)[1], concept)
              for s in (P.seeded_scene(concept, rng, negative=True) for _ in range(12))]
    assert sum(shown) >= 11  # an occluded distractor may hide a part
    assert sum(missed) <= 4  # a near miss shows it only by chance (e.g. via the distractor)
