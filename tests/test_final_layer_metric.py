"""metric=final_layer_similarity: known answers with a deterministic toy embedder."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dndbench.backends.embedder import EMBEDDERS, Embedder
from dndbench.cache import Cache
from dndbench.context import Context
from dndbench.errors import ConfigError, UnknownComponentError
from dndbench.metrics.base import METRICS
from dndbench.metrics.final_layer_similarity import SIMILARITY, TOP1
from dndbench.models.base import ModelConfig, TargetModel

PUBLISHED = Path(__file__).resolve().parents[2] / "shared" / "data" / "published"


@EMBEDDERS.register("toy_words")
class ToyWordEmbedder(Embedder):
    """Bag of hashed words: equal strings give cosine 1, strings without shared words about 0."""

    def _load_model(self, source: str, local_only: bool) -> None:
        return None

    def _encode(self, model: None, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 256), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().replace(",", " ").split():
                out[row, int(hashlib.sha256(word.encode()).hexdigest(), 16) % 256] += 1.0
        return out


class FakeModel(TargetModel):
    """A stand-in classifier with a final layer ``fc`` and optional class names."""

    def __init__(self, names: list[str] | None) -> None:
        super().__init__(ModelConfig(name="fake"))
        self.names = names

    def build(self, pretrained: bool) -> torch.nn.Module:
        return torch.nn.Sequential()

    def transform(self):
        return lambda image: torch.zeros(3, 8, 8)

    def class_names(self) -> list[str] | None:
        return self.names


CLASSES = ["tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark"]


def make_ctx(tmp_path: Path, names: list[str] | None = CLASSES, layer: str = "fc") -> Context:
    return Context(model=FakeModel(names), probe=None, layer=layer,  # type: ignore[arg-type]
                   units=list(range(len(names or []))), cache=Cache(tmp_path / "cache"))


def metric(**options):
    return METRICS.create("final_layer_similarity", **{"embedder": "toy_words", **options})


def descriptions(labels: dict[int, str | None]) -> pd.DataFrame:
    return pd.DataFrame({"unit": list(labels), "label": list(labels.values())})


def by_metric(scores: pd.DataFrame, name: str) -> dict[int, float]:
    rows = scores[scores.metric == name]
    return dict(zip(rows.unit.tolist(), rows.value.tolist()))


def test_identical_strings_score_one(tmp_path):
    scores = metric().score(descriptions(dict(enumerate(CLASSES))), make_ctx(tmp_path))
    assert list(scores.columns) == ["unit", "metric", "value"]
    assert by_metric(scores, SIMILARITY) == pytest.approx({0: 1.0, 1: 1.0, 2: 1.0})
    assert by_metric(scores, TOP1) == {0: 1.0, 1: 1.0, 2: 1.0}


def test_swapped_labels_miss_top1(tmp_path):
    swapped = descriptions({0: CLASSES[1], 1: CLASSES[0], 2: "great shark"})
    scores = metric().score(swapped, make_ctx(tmp_path))
    assert by_metric(scores, TOP1) == {0: 0.0, 1: 0.0, 2: 1.0}
    sims = by_metric(scores, SIMILARITY)
    assert sims[0] == pytest.approx(0.0, abs=0.2) and 0.5 < sims[2] < 1.0


def test_units_without_label_are_skipped(tmp_path):
    scores = metric().score(descriptions({0: "tench", 1: None, 2: " "}), make_ctx(tmp_path))
    assert set(scores.unit) == {0} and len(scores) == 2


def test_class_names_file_wins_over_model(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("red\ngreen\nblue\n\n")
    scores = metric(class_names=str(path)).score(descriptions({0: "red", 2: "blue"}), make_ctx(tmp_path))
    assert by_metric(scores, TOP1) == {0: 1.0, 2: 1.0}


def test_no_class_names_is_config_error(tmp_path):
    ctx = make_ctx(tmp_path, names=None)
    m = metric()
    assert not m.applies_to(ctx)
    with pytest.raises(ConfigError, match="class_names"):
        m.score(descriptions({0: "red"}), ctx)


def test_missing_class_names_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        metric(class_names=str(tmp_path / "none.txt")).score(descriptions({0: "x"}), make_ctx(tmp_path))


def test_unit_beyond_class_list_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unit 7 has no class name"):
        metric().score(descriptions({0: "tench", 7: "dog"}), make_ctx(tmp_path))


def test_applies_only_to_final_layer(tmp_path):
    assert metric().applies_to(make_ctx(tmp_path))
    assert not metric().applies_to(make_ctx(tmp_path, layer="layer4"))


def test_unknown_embedder_fails_at_construction():
    with pytest.raises(UnknownComponentError, match="minilm"):
        metric(embedder="minlm")


def test_second_scoring_embeds_nothing(tmp_path):
    labels = descriptions({0: "a fish", 1: "gold"})
    first_ctx, second_ctx = make_ctx(tmp_path), make_ctx(tmp_path)
    metric().score(labels, first_ctx)
    metric().score(labels, second_ctx)  # a new metric instance: only the persistent cache is shared
    assert first_ctx.counters["embedded_texts.toy_words"] == 5
    assert second_ctx.counters["embedded_texts.toy_words"] == 0


def test_minilm_scores_right_class_highest(tmp_path):
    labels = descriptions({0: "a tench, a kind of fish", 1: "goldfish in a bowl", 2: "shark"})
    scores = metric(embedder="minilm").score(labels, make_ctx(tmp_path))
    assert by_metric(scores, TOP1) == {0: 1.0, 1: 1.0, 2: 1.0}
    assert all(0.3 < v <= 1.0 for v in by_metric(scores, SIMILARITY).values())


@pytest.mark.slow
@pytest.mark.skipif(not PUBLISHED.is_dir(), reason=f"published reference data not found at {PUBLISHED}")
def test_published_dnd_fc_beats_netdissect(tmp_path):
    from dndbench.describers.published import read_published
    from dndbench.metrics.final_layer_similarity import read_class_names

    names = read_class_names(PUBLISHED / "imagenet_labels.txt")
    ctx = make_ctx(tmp_path, names=names)
    means = {}
    for fmt, rel in [("dnd", "DnD_results/rn50_results/resnet50_imagenet_broden_fc.csv"),
                     ("netdissect", "NetDissect_results/resnet50_imagenet_fc.csv")]:
        scores = metric(embedder="minilm").score(read_published(PUBLISHED / rel, fmt), ctx)
        means[fmt] = scores.groupby("metric").value.mean()
    assert means["dnd"][SIMILARITY] > means["netdissect"][SIMILARITY] > 0.1
    assert means["dnd"][TOP1] > 0.15
