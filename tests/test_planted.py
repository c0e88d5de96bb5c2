"""The planted-concept catalogues and the seeded scenes ToyNet is trained on."""
from __future__ import annotations

from pathlib import Path

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


def _toynet_with_planted() -> tuple[object, dict[str, list[int]]]:
    import torch

    from dndbench.toyworld.network import ToyNet

    torch.manual_seed(0)
    units = {"layer2": [3, 17], "layer4": [5, 6, 100]}
    return ToyNet(12, WIDTHS, 1, units), units


def test_planted_units_sit_on_their_channels_and_come_from_the_detector_heads() -> None:
    import torch

    from dndbench.hooks import record_outputs

    net, units = _toynet_with_planted()
    net.eval()
    names = [f"{layer}{part}" for layer in units for part in ("", ".head", ".context")]
    with record_outputs(net, names) as out, torch.no_grad():
        net(torch.randn(2, 3, 64, 64))
    for layer, chosen in units.items():
        assert out[layer].shape[1] == WIDTHS[int(layer[-1]) - 1]
        expected = torch.relu(out[f"{layer}.head"] + out[f"{layer}.context"][:, :, None, None])
        assert torch.equal(out[layer][:, chosen], expected)
    assert net.layer2.planted[0, :, 0, 0].nonzero().ravel().tolist() == units["layer2"]


def test_no_gradient_crosses_between_the_trunk_and_the_detector() -> None:
    import torch

    from dndbench.hooks import record_outputs

    net, units = _toynet_with_planted()
    detector = {id(p) for name, p in net.named_parameters()
                if name.startswith("detector.") or ".head." in name or ".context." in name}
    with record_outputs(net, ["layer2.head", "layer4.head"]) as out:
        logits = net(torch.randn(4, 3, 64, 64))
        logits.sum().backward(retain_graph=True)
        from_ce = {id(p) for p in net.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        net.zero_grad(set_to_none=True)
        (out["layer2.head"].sum() + out["layer4.head"].sum()).backward()
        from_planted = {id(p) for p in net.parameters()
                        if p.grad is not None and p.grad.abs().sum() > 0}
    assert from_ce and not from_ce & detector, "the classification loss reached the detector"
    assert from_planted and from_planted <= detector, "the planted loss reached the trunk"


def test_class_units_whose_top_images_disagree_with_their_class_are_flagged() -> None:
    from dndbench.toyworld.train_toynet import fc_units, flagged_fc_units

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(12), 20)
    logits = np.eye(12)[labels] * 5 + rng.normal(0, 0.1, (240, 12))
    logits[:, 3] = rng.normal(size=240)  # unit 3 ignores its class
    logits[labels == 0, 4] += 10  # unit 4's top images are circles
    units = fc_units(logits, labels)
    assert flagged_fc_units({"fc_units": units}) == [3, 4]
    assert units[0] == {"unit": 0, "concept": "circle", "auc": 1.0, "top10": 10, "gate": True}
    assert units[4]["top10"] == 0


def test_the_shipped_network_records_its_class_units_gate(tmp_path: Path) -> None:
    from dndbench.cache import Cache
    from dndbench.models.base import MODELS

    model = MODELS.create("toynet")
    model.cache = Cache(tmp_path)
    meta = model.meta()
    assert model.flagged_fc_units() == meta["flagged_fc_units"] == []
    fc = meta["report"]["fc_units"]
    assert [u["concept"] for u in fc] == model.class_names()
    assert all(u["gate"] == (u["auc"] >= 0.95 and u["top10"] >= 9) for u in fc)

