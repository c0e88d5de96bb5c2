"""describer=published: parsing of the four released formats, unit joins and error messages."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from dndbench.cache import Cache
from dndbench.context import Context
from dndbench.describers.base import DESCRIBERS
from dndbench.describers.published import PublishedDescriber, clean_broden_label, read_published
from dndbench.errors import ConfigError, DataError
from dndbench.models.base import ModelConfig, TargetModel

PUBLISHED = Path(__file__).resolve().parents[2] / "shared" / "data" / "published"
needs_published = pytest.mark.skipif(
    not PUBLISHED.is_dir(), reason=f"published reference data not found at {PUBLISHED}")


class FakeModel(TargetModel):
    """A stand-in target model (describing published labels never builds it)."""

    def build(self, pretrained: bool) -> torch.nn.Module:
        return torch.nn.Sequential()

    def transform(self):
        return lambda image: torch.zeros(3, 8, 8)


def make_ctx(tmp_path: Path, units: list[int], layer: str = "fc") -> Context:
    return Context(model=FakeModel(ModelConfig(name="fake")), probe=None,  # type: ignore[arg-type]
                   layer=layer, units=units, cache=Cache(tmp_path / "cache"))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def describer(path: Path | str, **options) -> PublishedDescriber:
    return DESCRIBERS.create("published", path=str(path), **options)  # type: ignore[return-value]


DND_ONE = "Neuron ID,label\n0,fishing and catching fish\n1,aquatic life\n2,sharks\n"
DND_THREE = ("Neuron ID,Label 1,Label 2,Label 3\n"
             "6,diagonal stripes,repetitive pattern,black and white\n"
             "10,red patterns,red designs,\n")
CLIP_DISSECT = ("layer,unit,description,similarity\n"
                "layer1,0,red,0.25\nlayer1,1, snorkeling ,0.5\nlayer4,0,dog,0.75\n")
MILAN = "layer,unit,description\nconv1,0,Black lettering\nfc,0,Living things\nfc,1,Fish in pictures\n"
NETDISSECT = ("unit,category,label,score,color-label\n"
              "1,color,blue-c,0.12,blue-c\n2,scene,mountain_snowy-s,0.05,red-c\n"
              "3,texture,polka-dotted,0.2,red-c\n")


def test_registered_with_flags():
    cls = DESCRIBERS.get("published")
    assert cls is PublishedDescriber
    assert (cls.needs_weights, cls.needs_probe, cls.in_default_suite) == (False, False, False)


def test_dnd_single_label(tmp_path):
    descs = describer(write(tmp_path, "fc.csv", DND_ONE)).describe(make_ctx(tmp_path, [0, 1, 2]))
    assert [(d.unit, d.label, d.alternatives) for d in descs] == [
        (0, "fishing and catching fish", []), (1, "aquatic life", []), (2, "sharks", [])]


def test_dnd_three_labels_give_alternatives(tmp_path):
    descs = describer(write(tmp_path, "l1.csv", DND_THREE)).describe(make_ctx(tmp_path, [6, 10], "layer1"))
    assert descs[0].label == "diagonal stripes"
    assert descs[0].alternatives == ["repetitive pattern", "black and white"]
    assert descs[1].alternatives == ["red designs"]  # empty Label 3 is dropped


def test_clip_dissect_takes_run_layer_and_similarity(tmp_path):
    path = write(tmp_path, "cd.csv", CLIP_DISSECT)
    descs = describer(path, format="clip_dissect").describe(make_ctx(tmp_path, [0, 1], "layer1"))
    assert [(d.unit, d.label, d.score) for d in descs] == [(0, "red", 0.25), (1, "snorkeling", 0.5)]


def test_layer_option_overrides_run_layer(tmp_path):
    path = write(tmp_path, "cd.csv", CLIP_DISSECT)
    descs = describer(path, format="clip_dissect", layer="layer4").describe(make_ctx(tmp_path, [0], "fc"))
    assert [(d.unit, d.label) for d in descs] == [(0, "dog")]


def test_milan(tmp_path):
    path = write(tmp_path, "milan.csv", MILAN)
    descs = describer(path, format="milan").describe(make_ctx(tmp_path, [0, 1]))
    assert [(d.unit, d.label) for d in descs] == [(0, "Living things"), (1, "Fish in pictures")]


def test_netdissect_is_one_based_and_cleaned(tmp_path):
    path = write(tmp_path, "nd.csv", NETDISSECT)
    descs = describer(path, format="netdissect").describe(make_ctx(tmp_path, [0, 1, 2]))
    assert [(d.unit, d.label, d.score) for d in descs] == [
        (0, "blue-c", 0.12), (1, "mountain snowy", 0.05), (2, "polka-dotted", 0.2)]
    assert descs[1].extras == {"category": "scene"}


def test_netdissect_raw_labels_when_not_cleaning(tmp_path):
    path = write(tmp_path, "nd.csv", NETDISSECT)
    descs = describer(path, format="netdissect", clean_labels=False).describe(make_ctx(tmp_path, [0, 1]))
    assert [d.label for d in descs] == ["blue-c", "mountain_snowy-s"]


@pytest.mark.parametrize("raw, clean", [("blue-c", "blue-c"), ("kitchen-s", "kitchen"),
                                        ("wine_cellar-bottle_storage-s", "wine cellar-bottle storage"),
                                        ("mountain_snowy-s", "mountain snowy"), ("t-shirt", "t-shirt"),
                                        ("pool table", "pool table")])
def test_clean_broden_label(raw, clean):
    assert clean_broden_label(raw) == clean


def test_missing_units_are_reported(tmp_path, caplog):
    d = describer(write(tmp_path, "fc.csv", DND_ONE))
    ctx = make_ctx(tmp_path, [1, 2, 5, 7])
    with caplog.at_level(logging.WARNING):
        descs = d.describe(ctx)
    assert [x.unit for x in descs] == [1, 2]  # unit 0 is in the file but not in the neuron set
    assert d.missing_units == [5, 7]
    assert ctx.counters["published_missing_units"] == 2
    assert "lack 2 of 4" in caplog.text and "5, 7" in caplog.text


def test_no_missing_units_no_warning(tmp_path, caplog):
    d = describer(write(tmp_path, "fc.csv", DND_ONE))
    with caplog.at_level(logging.WARNING):
        d.describe(make_ctx(tmp_path, [0, 1]))
    assert d.missing_units == [] and caplog.text == ""


def test_empty_path_is_config_error():
    with pytest.raises(ConfigError, match="needs `path`"):
        DESCRIBERS.create("published")


def test_missing_file_is_config_error(tmp_path):
    d = describer(tmp_path / "nope.csv")
    with pytest.raises(ConfigError, match="does not exist"):
        d.describe(make_ctx(tmp_path, [0]))


def test_unknown_format_lists_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="dnd, clip_dissect, milan, netdissect"):
        describer(write(tmp_path, "fc.csv", DND_ONE), format="tcav")


def test_unknown_layer_lists_layers(tmp_path):
    path = write(tmp_path, "cd.csv", CLIP_DISSECT)
    with pytest.raises(DataError, match="layer1, layer4"):
        describer(path, format="clip_dissect").describe(make_ctx(tmp_path, [0], "layer2"))


def test_wrong_format_names_missing_columns(tmp_path):
    path = write(tmp_path, "fc.csv", DND_ONE)
    with pytest.raises(DataError, match="needs column"):
        describer(path, format="netdissect").describe(make_ctx(tmp_path, [0]))


def test_cache_key_follows_file_content(tmp_path):
    path = write(tmp_path, "fc.csv", DND_ONE)
    d, ctx = describer(path), make_ctx(tmp_path, [0])
    before = d.cache_key_parts(ctx)
    path.write_text(DND_ONE.replace("sharks", "whales"))
    assert d.cache_key_parts(ctx) != before


# -- the real released files -------------------------------------------------------------------
@needs_published
def test_real_dnd_fc():
    table = read_published(PUBLISHED / "DnD_results/rn50_results/resnet50_imagenet_broden_fc.csv", "dnd")
    assert sorted(table.unit) == list(range(1000))
    assert table.loc[table.unit == 0, "label"].item() == "fishing and catching fish"


@needs_published
def test_real_netdissect_fc_units_are_zero_based_and_clean():
    table = read_published(PUBLISHED / "NetDissect_results/resnet50_imagenet_fc.csv", "netdissect")
    assert sorted(table.unit) == list(range(1000))
    assert not table.label.str.contains(r"-s$|_").any()


@needs_published
def test_real_clip_dissect_and_milan_layers():
    cd = read_published(PUBLISHED / "CLIP_Dissect_results/resnet50_imagenet_broden.csv",
                        "clip_dissect", layer="layer4")
    milan = read_published(PUBLISHED / "MILAN_results/m_base_resnet50_imagenet.csv", "milan", layer="fc")
    assert len(cd) == 2048 and cd.score.notna().all()
    assert sorted(milan.unit) == list(range(1000))


@needs_published
def test_real_dnd_layer_subset_reports_missing(tmp_path):
    path = PUBLISHED / "DnD_results/rn50_results/resnet50_imagenet_broden_layer1.csv"
    d = describer(path)
    descs = d.describe(make_ctx(tmp_path, list(range(256)), "layer1"))
    assert len(descs) == 50 and len(d.missing_units) == 206
    alternatives = [a for x in descs for a in x.alternatives]
    assert len(alternatives) > 80 and all(a.strip() for a in alternatives)  # blank cells dropped
