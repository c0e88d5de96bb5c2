"""Text metrics (planted_concept, milannotations, final_layer_bertscore) on small known cases:
for each a perfect, a wrong and a constant description, with the expected values."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from dndbench.backends.embedder import EMBEDDERS, Embedder
from dndbench.cache import Cache
from dndbench.context import Context
from dndbench.errors import ConfigError, DataError, UnknownComponentError
from dndbench.metrics.base import METRICS
from dndbench.metrics.final_layer_bertscore import greedy_f1, usual_layer
from dndbench.metrics.planted_concept import rank_chance, reciprocal_rank
from dndbench.models.base import ModelConfig, TargetModel

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO.parent / "shared" / "data" / "published"
K = 33  # concepts in the toy world
LETTERS = "abcdefghijklmnopqrstuvwxyz"

_VOCAB: dict[str, int] = {}


@EMBEDDERS.register("test_one_hot_words")
class OneHotWords(Embedder):
    """Bag of words with one dimension per distinct word (no collisions): cosine = word overlap."""

    def _load_model(self, source: str, local_only: bool) -> None:
        return None

    def _encode(self, model: None, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 512), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().replace(",", " ").split():
                out[row, _VOCAB.setdefault(word, len(_VOCAB))] += 1.0
        return out


class FakeModel(TargetModel):
    """A stand-in with planted units in ``layer3`` and class names for ``fc``."""

    PLANTED = {0: "red", 1: "striped", 2: "brick wall", 3: "red circle", 4: "red or blue"}

    def __init__(self, classes: list[str] | None = None) -> None:
        super().__init__(ModelConfig(name="fake"))
        self.classes = classes

    def build(self, pretrained: bool) -> torch.nn.Module:
        return torch.nn.Sequential()

    def transform(self) -> Any:
        return lambda image: torch.zeros(3, 8, 8)

    def class_names(self) -> list[str] | None:
        return self.classes

    def planted_concepts(self, layer: str) -> dict[int, str]:
        return dict(self.PLANTED) if layer == "layer3" else {}


def make_ctx(tmp_path: Path, layer: str = "layer3", units: list[int] | None = None,
             classes: list[str] | None = None) -> Context:
    return Context(model=FakeModel(classes), probe=None, layer=layer,  # type: ignore[arg-type]
                   units=units if units is not None else list(FakeModel.PLANTED),
                   cache=Cache(tmp_path / "cache"))


def frame(labels: dict[int, str | None]) -> pd.DataFrame:
    return pd.DataFrame({"unit": list(labels), "label": list(labels.values())})


def figure(scores: pd.DataFrame, name: str, column: str = "value") -> dict[int, float]:
    rows = scores[scores.metric == name]
    return dict(zip(rows.unit.tolist(), rows[column].tolist()))


# -- planted_concept --------------------------------------------------------------------------
def planted(**options: Any) -> Any:
    return METRICS.create("planted_concept", **{"embedder": "test_one_hot_words", **options})


def harmonic_mean_rr(first: int, last: int) -> float:
    return sum(1 / r for r in range(first, last + 1)) / (last - first + 1)


def test_planted_perfect_labels_hit_and_rank_first(tmp_path: Path) -> None:
    scores = planted().score(frame(dict(FakeModel.PLANTED)), make_ctx(tmp_path))
    assert list(scores.columns) == ["unit", "metric", "value", "chance"]
    assert figure(scores, "planted_hit") == {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}
    ranks = figure(scores, "planted_rank")
    assert ranks[0] == ranks[1] == ranks[2] == ranks[3] == pytest.approx(1.0)


def test_planted_wrong_and_constant_labels(tmp_path: Path) -> None:
    scores = planted().score(frame({0: "green", 1: "depiction", 2: "a wall of stone"}), make_ctx(tmp_path))
    assert figure(scores, "planted_hit") == {0: 0.0, 1: 0.0, 2: 0.0}
    ranks = figure(scores, "planted_rank")
    # "green" puts the concept green first and leaves red tied with the 31 others at cosine 0
    assert ranks[0] == pytest.approx(harmonic_mean_rr(2, K))
    # a constant that shares no word with any concept ties them all: exactly the chance level
    assert ranks[1] == pytest.approx(rank_chance(K))
    # "wall" is a word of "brick wall" only: ranked first although not a hit
    assert ranks[2] == pytest.approx(1.0)


def test_planted_chance_levels(tmp_path: Path) -> None:
    scores = planted().score(frame(dict(FakeModel.PLANTED)), make_ctx(tmp_path))
    hit_chance = figure(scores, "planted_hit", "chance")
    assert hit_chance[0] == pytest.approx(1 / K)  # only the word "red" itself hits "red"
    assert hit_chance[3] == 0.0 and hit_chance[4] == 0.0  # no single concept names both parts
    rank_chances = figure(scores, "planted_rank", "chance")
    assert rank_chances[0] == pytest.approx(rank_chance(K))
    assert rank_chances[3] == pytest.approx(rank_chance(K + 1))  # "red circle" joins the candidates
    assert rank_chance(1) == 1.0 and rank_chance(2) == pytest.approx(0.75)


@pytest.mark.parametrize("unit,label,hit", [
    (1, "red stripes", 1.0), (1, "Stripy-pattern", 1.0), (1, "strip", 0.0),
    (2, "bricks", 1.0), (2, "brick walls at night", 1.0), (2, "wall", 0.0),
    (3, "red circles on sand", 1.0), (3, "a red disc", 1.0), (3, "red shape", 0.0), (3, "circle", 0.0),
    (4, "blue and red", 1.0), (4, "red", 0.0), (4, "bluish or reddish", 1.0),
    (0, "redwood", 0.0), (0, "RED", 1.0),
])
def test_planted_hit_whole_words_synonyms_and_parts(tmp_path: Path, unit: int, label: str,
                                                    hit: float) -> None:
    scores = planted().score(frame({unit: label}), make_ctx(tmp_path))
    assert figure(scores, "planted_hit") == {unit: hit}


def test_planted_skips_units_without_concept_or_label(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, units=[0, 1, 2, 9])
    scores = planted().score(frame({0: "red", 1: None, 2: " ", 9: "red"}), ctx)
    assert set(scores.unit) == {0}


def test_planted_applies_only_with_planted_units(tmp_path: Path) -> None:
    m = planted()
    assert m.applies_to(make_ctx(tmp_path))
    assert not m.applies_to(make_ctx(tmp_path, units=[7, 8]))
    assert not m.applies_to(make_ctx(tmp_path, layer="fc", units=[0]))


def test_planted_unknown_embedder() -> None:
    with pytest.raises(UnknownComponentError):
        METRICS.create("planted_concept", embedder="minilmm")


def test_reciprocal_rank_ties_share_ranks() -> None:
    assert reciprocal_rank(np.array([0.9, 0.5, 0.1]), 1) == pytest.approx(0.5)
    assert reciprocal_rank(np.array([0.5, 0.5, 0.1]), 0) == pytest.approx(0.75)


def test_synonym_table_covers_every_concept() -> None:
    from dndbench.toyworld.synonyms import concept_synonyms
    from dndbench.toyworld.world import all_concepts

    for concept in all_concepts():
        forms = concept_synonyms(concept.name)
        assert forms[0] == concept.name
    assert "hourglasses" in concept_synonyms("hourglass") and "crosses" in concept_synonyms("cross")
    with pytest.raises(KeyError):
        concept_synonyms("unicorn")


# -- milannotations ---------------------------------------------------------------------------
ANNOTATIONS = [
    ("layer1", 0, "red star"), ("layer1", 0, "red star"), ("layer1", 0, "red star"),
    ("layer1", 1, "sky"), ("layer1", 1, "grass"), ("layer1", 1, "sky grass"),
    ("layer1", 2, "water"),
    ("layer1", 3, "   "),  # an empty summary is no annotation
    ("layer2", 0, "dog"),
]


@pytest.fixture
def annotations(tmp_path: Path) -> Path:
    path = tmp_path / "ann.csv"
    pd.DataFrame(ANNOTATIONS, columns=["layer", "unit", "summary"]).to_csv(path, index=False)
    return path


def milan(path: Path, **options: Any) -> Any:
    return METRICS.create("milannotations", **{"annotations": str(path), "embedder": "test_one_hot_words",
                                               **options})


def milan_ctx(tmp_path: Path, layer: str = "layer1", units: list[int] | None = None) -> Context:
    return make_ctx(tmp_path, layer=layer, units=units if units is not None else [0, 1, 2, 3, 4])


def test_milannotations_perfect_wrong_constant(tmp_path: Path, annotations: Path) -> None:
    m, ctx = milan(annotations), milan_ctx(tmp_path)
    perfect = m.score(frame({0: "red star", 1: "sky", 2: "water", 3: "x", 4: "y"}), ctx)
    sims = figure(perfect, "milannotations_similarity")
    assert set(sims) == {0, 1, 2}  # units 3 and 4 have no annotations: not scored
    assert sims[0] == pytest.approx(1.0) and sims[2] == pytest.approx(1.0)
    assert sims[1] == pytest.approx((1 + 0 + 1 / np.sqrt(2)) / 3)
    assert figure(m.score(frame({0: "blue heart", 1: "snow", 2: "sand"}), ctx),
                  "milannotations_similarity") == pytest.approx({0: 0.0, 1: 0.0, 2: 0.0})
    assert figure(m.score(frame({0: "depiction", 1: "depiction", 2: "depiction"}), ctx),
                  "milannotations_similarity") == pytest.approx({0: 0.0, 1: 0.0, 2: 0.0})


def test_milannotations_inter_annotator_is_label_independent(tmp_path: Path, annotations: Path) -> None:
    m, ctx = milan(annotations), milan_ctx(tmp_path)
    a = figure(m.score(frame({0: "red star", 1: "sky", 2: "water"}), ctx), "inter_annotator")
    b = figure(m.score(frame({0: "depiction", 1: "depiction", 2: "depiction"}), ctx), "inter_annotator")
    assert a == b
    assert a[0] == pytest.approx(1.0)
    assert a[1] == pytest.approx((0 + 1 / np.sqrt(2) + 1 / np.sqrt(2)) / 3)
    assert 2 not in a  # one annotation: no pair


def test_milannotations_reliability_filter(tmp_path: Path, annotations: Path) -> None:
    m = milan(annotations, reliability_threshold=0.9, filter_embedder="test_one_hot_words")
    scores = m.score(frame({0: "red star", 1: "sky", 2: "water"}), milan_ctx(tmp_path))
    assert set(scores.unit) == {0}  # unit 1's best pair has cosine 0.71, unit 2 has no pair
    keep_all = milan(annotations, reliability_threshold=0.0, filter_embedder="no_such_embedder")
    assert set(keep_all.score(frame({0: "a", 1: "b", 2: "c"}), milan_ctx(tmp_path)).unit) == {0, 1, 2}


def test_milannotations_applies_to(tmp_path: Path, annotations: Path) -> None:
    assert not METRICS.create("milannotations").applies_to(milan_ctx(tmp_path))
    assert milan(annotations).applies_to(milan_ctx(tmp_path))
    assert not milan(annotations).applies_to(milan_ctx(tmp_path, units=[7]))
    assert not milan(annotations).applies_to(milan_ctx(tmp_path, layer="layer3"))
    assert milan(annotations, layer="layer2").applies_to(milan_ctx(tmp_path, layer="layer3", units=[0]))


def test_milannotations_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        milan(tmp_path / "none.csv").score(frame({0: "a"}), milan_ctx(tmp_path))
    bad = tmp_path / "bad.csv"
    bad.write_text("layer,unit,description\nlayer1,0,red\n")
    with pytest.raises(DataError, match="summary"):
        milan(bad).score(frame({0: "a"}), milan_ctx(tmp_path))
    with pytest.raises(ConfigError, match="reliability_threshold"):
        METRICS.create("milannotations", reliability_threshold=5.0)
    with pytest.raises(ConfigError, match="annotations=PATH"):
        METRICS.create("milannotations").score(frame({0: "a"}), milan_ctx(tmp_path))


@pytest.fixture
def milannotations_csv() -> Path:
    path = PUBLISHED / "MILANNOTATIONS_resnet152_imagenet.csv"
    if not path.is_file():
        pytest.skip(f"published MILANNOTATIONS not found at {path} (only present next to the "
                    f"project's development checkout)")
    return path


def test_milannotations_on_released_files(tmp_path: Path, milannotations_csv: Path) -> None:
    from dndbench.describers.published import read_published

    dnd = read_published(PUBLISHED / "DnD_results/rn152_results/resnet152_imagenet_layer1.csv", "dnd")
    ctx = milan_ctx(tmp_path, units=dnd.unit.astype(int).tolist())
    m = METRICS.create("milannotations", annotations=str(milannotations_csv), embedder="test_one_hot_words")
    scores = m.score(dnd, ctx)
    sims = scores[scores.metric == "milannotations_similarity"]
    assert len(sims) == 50 and sims.value.between(0, 1).all()
    inter = scores[scores.metric == "inter_annotator"]
    assert len(inter) == 50  # three annotations per unit in the release


@pytest.mark.slow
def test_milannotations_command_on_released_dnd_labels(tmp_path: Path, milannotations_csv: Path) -> None:
    """The documented command (mpnet, offline) writes the metric's mean and n to summary.json."""
    labels = PUBLISHED / "DnD_results/rn152_results/resnet152_imagenet_layer1.csv"
    units = tmp_path / "units.txt"
    units.write_text("\n".join(str(u) for u in pd.read_csv(labels)["Neuron ID"]) + "\n")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "dndbench", "model=resnet152", "neurons.layer=layer1",
         f"neurons.units=file:{units}", "describer=published", f"describer.path={labels}",
         "describer.format=dnd", "metric=milannotations", f"metric.annotations={milannotations_csv}",
         "metric.embedder=mpnet", "metric.reliability_threshold=0", f"hydra.run.dir={out}"],
        capture_output=True, text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert metrics["milannotations_similarity"]["n"] == 50
    assert metrics["milannotations_similarity"]["mean"] == pytest.approx(0.2166, abs=0.002)


# -- final_layer_bertscore --------------------------------------------------------------------
def write_tiny_roberta(folder: Path, layers: int = 3) -> Path:
    """A random-weight RoBERTa (32 wide) with a letter-level byte-level BPE tokenizer."""
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, "\u0120": 5}
    for ch in LETTERS:
        vocab[ch] = len(vocab)
        vocab["\u0120" + ch] = len(vocab)
    tokenizer = RobertaTokenizer(vocab=vocab, merges=[("\u0120", ch) for ch in LETTERS],
                                 model_max_length=64)
    config = RobertaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=layers,
                           num_attention_heads=4, intermediate_size=37, max_position_embeddings=80,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    RobertaModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_roberta(tmp_path_factory.mktemp("tiny-roberta"))


CLASSES = ["red star", "blue circle", "striped heart"]


def bertscore(path: Path, **options: Any) -> Any:
    return METRICS.create("final_layer_bertscore", **{"path": str(path), "num_layers": 2, **options})


def test_bertscore_perfect_wrong_constant(tmp_path: Path, tiny_roberta: Path) -> None:
    m, ctx = bertscore(tiny_roberta), make_ctx(tmp_path, layer="fc", units=[0, 1, 2], classes=CLASSES)
    perfect = figure(m.score(frame(dict(enumerate(CLASSES))), ctx), "final_layer_bertscore")
    assert perfect == pytest.approx({0: 1.0, 1: 1.0, 2: 1.0})
    wrong = figure(m.score(frame({0: "blue circle", 1: "striped heart", 2: "red star"}), ctx),
                   "final_layer_bertscore")
    constant = figure(m.score(frame({0: "depiction", 1: "depiction", 2: "depiction"}), ctx),
                      "final_layer_bertscore")
    for unit in range(3):
        assert 0.0 < wrong[unit] < 0.999 and 0.0 < constant[unit] < 0.999


def test_bertscore_is_symmetric_and_cached(tmp_path: Path, tiny_roberta: Path) -> None:
    m, ctx = bertscore(tiny_roberta), make_ctx(tmp_path, layer="fc", classes=CLASSES)
    ab, ba = m.f1([("red star", "blue circle"), ("blue circle", "red star")], ctx)
    assert ab == pytest.approx(ba, abs=1e-6)
    computed = ctx.counters["bertscore_pairs"]
    m.f1([("red star", "blue circle")], ctx)
    assert ctx.counters["bertscore_pairs"] == computed  # from the call cache


def test_greedy_matching_by_hand() -> None:
    cand = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    ref = np.array([[1.0, 0.0], [0.6, 0.8]])
    # the start/end tokens (weight 0) do not count, but a token may still match them
    p = (1.0 + 0.8) / 2
    r = (1.0 + 1.0) / 2
    value = greedy_f1(cand, np.array([1.0, 1.0, 0.0]), ref, np.array([1.0, 1.0]))
    assert value == pytest.approx(2 * p * r / (p + r))
    assert greedy_f1(cand, np.zeros(3), ref, np.ones(2)) == 0.0


def test_bertscore_class_names_file_and_unit_checks(tmp_path: Path, tiny_roberta: Path) -> None:
    names = tmp_path / "classes.txt"
    names.write_text("sky\ngrass\n")
    ctx = make_ctx(tmp_path, layer="fc", units=[0, 1], classes=None)
    scores = bertscore(tiny_roberta, class_names=str(names)).score(frame({0: "sky", 1: "sky"}), ctx)
    values = figure(scores, "final_layer_bertscore")
    assert values[0] == pytest.approx(1.0) and values[1] < 0.999
    with pytest.raises(ConfigError, match="unit 5 has no class name"):
        bertscore(tiny_roberta, class_names=str(names)).score(frame({5: "sky"}), ctx)


def test_bertscore_applies_only_at_final_layer_with_an_offline_model(
        tmp_path: Path, tiny_roberta: Path, caplog: pytest.LogCaptureFixture) -> None:
    fc = make_ctx(tmp_path, layer="fc", classes=CLASSES)
    assert bertscore(tiny_roberta).applies_to(fc)
    assert not bertscore(tiny_roberta).applies_to(make_ctx(tmp_path, layer="layer3", classes=CLASSES))
    assert not bertscore(tiny_roberta).applies_to(make_ctx(tmp_path, layer="fc", classes=None))
    with caplog.at_level(logging.INFO, logger="dndbench"):
        default = METRICS.create("final_layer_bertscore")  # roberta-large: not in the test HF cache
        assert not default.applies_to(fc) and not default.applies_to(fc)
    skipped = [r for r in caplog.records if "final_layer_bertscore skipped" in r.getMessage()]
    assert len(skipped) == 1


def test_bertscore_layers(tmp_path: Path, tiny_roberta: Path) -> None:
    assert usual_layer("roberta-large") == 17 and usual_layer("FacebookAI/roberta-large") == 17
    assert usual_layer("/models/roberta-base/") == 10 and usual_layer("tiny") is None
    ctx = make_ctx(tmp_path, layer="fc", units=[0], classes=CLASSES)
    with pytest.raises(ConfigError, match="num_layers=9"):
        bertscore(tiny_roberta, num_layers=9).score(frame({0: "red star"}), ctx)
    last = bertscore(tiny_roberta, num_layers=0)  # unknown model: its last layer
    assert figure(last.score(frame({0: "red star"}), ctx), "final_layer_bertscore")[0] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="not a folder"):
        bertscore(tmp_path / "missing").score(frame({0: "red star"}), ctx)


def test_bertscore_applies_with_a_copy_in_the_hub_cache(tmp_path: Path, tiny_roberta: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """roberta-large downloaded under its current id (FacebookAI/roberta-large) counts as offline."""
    import shutil

    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--FacebookAI--roberta-large" / "snapshots" / "abc123"
    shutil.copytree(tiny_roberta, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    fc = make_ctx(tmp_path, layer="fc", classes=CLASSES)
    assert not METRICS.create("final_layer_bertscore").applies_to(fc)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    metric = METRICS.create("final_layer_bertscore")
    assert metric.cached_hub_id() == "FacebookAI/roberta-large" and metric.applies_to(fc)
