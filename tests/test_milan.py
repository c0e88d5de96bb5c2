"""Tests of MILAN: exemplars, decoding, annotation loading, training, checkpoints, describer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dndbench.cache import Cache
from dndbench.describers.base import DESCRIBERS
from dndbench.describers.milan.annotations import (
    AnnotatedUnit,
    catalogue_parts,
    check_disjoint,
    concept_in_text,
    describe_concept,
    load_milannotations,
    plural,
    toy_annotations,
)
from dndbench.describers.milan.checkpoint import from_released, load_any, to_released
from dndbench.describers.milan.decoding import beam_search, decode, greedy, rerank
from dndbench.describers.milan.exemplars import compute_exemplars, top_images
from dndbench.describers.milan.model import Decoder, EncoderSpec, LanguageModel, Milan, Sizes
from dndbench.describers.milan.text import Vocab, tokenize
from dndbench.describers.milan.training import FitConfig, bleu1, train_on_units
from dndbench.errors import ConfigError, DataError
from dndbench.testing.kit import check_describer, tiny_context
from dndbench.testing.milan_fixture import make_milannotations

TINY = Sizes(embedding_size=16, hidden_size=32, lm_embedding_size=16, lm_hidden_size=32,
             lm_layers=2, dropout=0.1, lm_dropout=0.1)
TINY_SPEC = EncoderSpec(arch="toynet", input_size=16, mean=(0.5,) * 3, std=(0.25,) * 3,
                        options={"widths": [4, 4, 8, 8], "blocks": 1})


def _vocab() -> Vocab:
    return Vocab(["red", "green", "blue", "things", "regions", "the", "colour"])


def _fixture_milan(tmp_path: Path, seed: int = 0, epochs: int = 30) -> Milan:
    units = load_milannotations(make_milannotations(tmp_path / "ann"))
    torch.manual_seed(0)
    from dndbench.describers.milan.model import build_backbone

    return train_on_units(units, TINY_SPEC, build_backbone(TINY_SPEC), TINY,
                          FitConfig(epochs=epochs, lm_epochs=epochs, batch_size=4, lr=1e-2,
                                    hold_out=0.2, seed=seed, refit=False), progress=False)


# -- text --------------------------------------------------------------------------------------
def test_vocab_round_trip() -> None:
    vocab = Vocab.build(["Red things", "red, regions"])
    assert tokenize("Red, things") == ["red", ",", "things"]
    assert vocab.tokens[-4:] == ["<bos>", "<eos>", "<pad>", "<unk>"]
    ids = vocab.encode("red things zebra")
    assert ids[0] == vocab.bos and ids[-1] == vocab.eos and ids[3] == vocab.unk
    assert vocab.decode(ids[1:]) == "red things"
    assert plural("cross") == "crosses" and concept_in_text("star", "two stars")
    assert not concept_in_text("star", "starfish")
    assert concept_in_text("crescent", "half moon shapes") and concept_in_text("red circle", "red discs")
    assert len(set(describe_concept("red", np.random.default_rng(0)))) == 3


def test_descriptions_name_the_concept_and_vary_its_synonyms() -> None:
    from dndbench.toyworld.planted import CATALOGUES

    concepts = sorted({c for layer in CATALOGUES["milan"].values() for c in layer})
    texts = []
    for concept in concepts:
        for seed in range(5):
            found = describe_concept(concept, np.random.default_rng(seed))
            assert len(set(found)) == 3 and concept_in_text(concept, found[0]), found
            assert all(concept_in_text(concept, text) for text in found), found
            texts += found
    # synonyms are used, not only the concept's own name
    assert any(t.startswith(("half moon", "moon", "crescent moon")) for t in texts)
    assert any("violet" in t or "purplish" in t for t in texts)


# -- disjoint from the test network ------------------------------------------------------------
def _unit(*texts: str) -> AnnotatedUnit:
    return AnnotatedUnit("layer1", 0, np.zeros((1, 3, 4, 4), np.uint8),
                         np.ones((1, 1, 4, 4), np.float32), list(texts))


def test_catalogues_are_disjoint_and_leaks_are_refused() -> None:
    bench, milan = catalogue_parts("benchmark"), catalogue_parts("milan")
    assert {"circle", "red", "brick wall", "zigzag", "two objects", "large object",
            "outlined"} <= set(bench)
    assert not set(bench) & set(milan)
    # every description the annotator can write for a milan concept is clean
    check_disjoint([_unit(*describe_concept(c, np.random.default_rng(s)))
                    for c in milan for s in range(5)], "benchmark")
    for leak in ("red things", "disc shapes", "bricks", "a big square", "two objects",
                 "hollow shapes", "zig-zag patterns", "starry sky and stars"):
        with pytest.raises(DataError, match="benchmark"):
            check_disjoint([_unit("green things", leak)], "benchmark")
    with pytest.raises(DataError, match="vocabulary"):
        check_disjoint([], "benchmark", words=["green", "circles"])
    with pytest.raises(DataError, match="unknown planted catalogue"):
        catalogue_parts("nope")


class _Spec:
    def __init__(self, shape: str) -> None:
        self.main = type("Main", (), {"shape": shape})()


def test_toy_annotations_skip_test_concepts_and_disagreeing_class_units() -> None:
    from types import SimpleNamespace

    from dndbench.describers.milan.exemplars import Exemplars

    classes = ["circle", "square", "diamond", "house"]
    shown = {0: "circle", 1: "circle", 2: "diamond", 3: "house"}  # image i -> its main shape
    model = SimpleNamespace(planted_concepts=lambda layer: {}, class_names=lambda: classes)
    probe = SimpleNamespace(annotation=lambda i: None, spec=lambda i: _Spec(shown[i]))
    ctx = SimpleNamespace(model=model, probe=probe, layer="fc", is_final_layer=True)
    # unit 0 (circle): a test concept; unit 1 (square): its exemplars show circles
    indices = np.array([[0, 1], [0, 1], [2, 2], [3, 2]])
    ex = Exemplars([0, 1, 2, 3], indices, np.zeros((4, 2, 3, 4, 4), np.uint8),
                   np.ones((4, 2, 1, 4, 4), np.float32), np.zeros(4))
    from collections import Counter

    skipped: Counter[str] = Counter()
    units = toy_annotations(ctx, ex, exclude=catalogue_parts("benchmark"),  # type: ignore[arg-type]
                            min_agreement=0.5, skipped=skipped)
    assert [(u.unit, u.concept) for u in units] == [(2, "diamond"), (3, "house")]
    assert skipped == {"class: test-network concept": 1, "class: exemplars disagree": 1}
    kept = toy_annotations(ctx, ex, min_agreement=0.5)  # type: ignore[arg-type]
    assert [u.concept for u in kept] == ["circle", "diamond", "house"]


def test_generalisation_scores() -> None:
    from dndbench.describers.milan.generalisation import score

    figures = score([
        {"layer": "layer1", "unit": 1, "concept": "red", "prediction": "orange things"},
        {"layer": "layer1", "unit": 2, "concept": "red", "prediction": "crimson regions"},
        {"layer": "layer3", "unit": 3, "concept": "red circle", "prediction": "red squares"},
        {"layer": "layer3", "unit": 4, "concept": "star or water", "prediction": "sky"},
        {"layer": "layer4", "unit": 5, "concept": "two objects", "prediction": "a pair of houses"},
    ])
    assert figures["units"] == 5 and figures["names_concept"] == pytest.approx(2 / 5)
    assert figures["by_kind"]["single"] == {"units": 2, "names_concept": 0.5}
    assert figures["by_kind"]["compositional"]["names_concept"] == 0.0
    assert figures["by_kind"]["polysemantic"]["names_concept"] == 0.0
    assert figures["by_kind"]["open-vocabulary"]["names_concept"] == 1.0
    assert figures["by_layer"]["layer1"]["units"] == 2
    # single concepts: both descriptions name a colour
    assert figures["single_units"] == 2 and figures["same_category"] == 1.0
    assert score([])["names_concept"] is None


# -- exemplars ---------------------------------------------------------------------------------
def test_exemplars_top_images_and_one_percent_masks(tmp_path: Path) -> None:
    ctx = tiny_context(tmp_path, layer="layer1", units=[0, 3, 7], probe_size=40)
    ex = compute_exemplars(ctx, k=15, quantile=0.99)
    pooled = ctx.activations.pooled(ctx.layer).max[:, [0, 3, 7]]
    assert np.array_equal(ex.indices, top_images(pooled, 15))
    assert all(pooled[ex.indices[u, 0], u] == pooled[:, u].max() for u in range(3))
    every = ctx.activations.maps(ctx.layer, [0, 3, 7], range(40))
    for u in range(3):
        assert ex.thresholds[u] == pytest.approx(np.quantile(every[:, u], 0.99), rel=1e-6)
        # the top 1 % of values: at most 1 % lie above T, at least 1 % at or above (ties)
        assert (every[:, u] > ex.thresholds[u]).mean() <= 0.0101
        assert (every[:, u] >= ex.thresholds[u]).mean() >= 0.0099
    assert ex.images.shape == (3, 15, 3, 32, 32) and ex.masks.shape == (3, 15, 1, 32, 32)
    kept = ex.masks.mean()  # top images hold the top activations: more than 1 % of their pixels
    assert 0.0 < kept < 0.5


def test_full_pass_agrees_with_lazy_search(tmp_path: Path) -> None:
    from dndbench.describers.milan.exemplars import full_pass, thresholds

    ctx = tiny_context(tmp_path, layer="layer1", units=[1, 4], probe_size=30)
    top = top_images(ctx.activations.pooled(ctx.layer).max[:, [1, 4]], 5)
    thr, maps = full_pass(ctx, [1, 4], top, 0.99)
    assert np.allclose(thr, thresholds(ctx, [1, 4], 0.99, chunk=4), rtol=1e-6)
    for u in range(2):
        assert np.allclose(maps[u], ctx.activations.maps(ctx.layer, [1, 4], top[u])[:, u])


def test_final_layer_masks_cover_the_image(tmp_path: Path) -> None:
    ctx = tiny_context(tmp_path, layer="fc", units=[1])
    ex = compute_exemplars(ctx, k=5)
    assert ex.masks.shape == (1, 5, 1, 32, 32) and ex.masks.min() == 1.0


# -- decoding ----------------------------------------------------------------------------------
def _decoder(vocab: Vocab, seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    return Decoder(len(vocab), 6, TINY).eval()


def test_beam_of_one_is_greedy_and_beams_are_sorted() -> None:
    vocab = _vocab()
    dec = _decoder(vocab)
    feats = torch.randn(3, 5, 6)
    g_tokens, g_logp = greedy(dec, feats, vocab, max_length=6)
    b_tokens, b_logp = beam_search(dec, feats, vocab, beam_size=1, max_length=6)
    width = min(g_tokens.shape[1], b_tokens.shape[2])
    assert torch.equal(g_tokens[:, :width], b_tokens[:, 0, :width])
    assert torch.allclose(g_logp, b_logp[:, 0], atol=1e-5)
    tokens, logp = beam_search(dec, feats, vocab, beam_size=5, max_length=6)
    assert tokens.shape[:2] == (3, 5)
    assert bool((logp[:, :-1] >= logp[:, 1:]).all())
    assert bool((logp[:, 0] >= g_logp - 1e-5).all())  # beam search finds at least greedy's score


def test_pmi_rerank_changes_order() -> None:
    tokens = torch.tensor([[[1, 2, 0], [3, 4, 0]]])
    logp = torch.tensor([[-1.0, -1.2]])       # captioner prefers the generic caption
    lm_scores = torch.tensor([[-0.5, -5.0]])   # ... which the language model finds very likely
    new_tokens, new_logp, pmi = rerank(tokens, logp, lm_scores, temperature=0.2)
    assert new_tokens[0, 0].tolist() == [3, 4, 0]
    assert pmi[0].tolist() == pytest.approx([-1.2 + 1.0, -1.0 + 0.1])
    same, _, _ = rerank(tokens, logp, lm_scores, temperature=0.0)
    assert torch.equal(same, tokens)


def test_decode_strategies() -> None:
    vocab = _vocab()
    dec = _decoder(vocab)
    torch.manual_seed(1)
    lm = LanguageModel(len(vocab), TINY, vocab.pad).eval()
    feats = torch.randn(2, 5, 6)
    for strategy in ("greedy", "beam", "rerank"):
        out = decode(dec, lm, feats, vocab, strategy, beam_size=4, max_length=5)
        assert len(out) == 2 and all(len(d.texts) >= 1 for d in out)
        assert all(d.scores == sorted(d.scores, reverse=True) for d in out)
    with pytest.raises(ValueError):
        decode(dec, None, feats, vocab, "rerank")


# -- annotations -------------------------------------------------------------------------------
def test_milannotations_loader(tmp_path: Path) -> None:
    units = load_milannotations(make_milannotations(tmp_path / "ann"))
    keys = [(u.layer, u.unit) for u in units]
    assert keys == [("layer1", 0), ("layer1", 1), ("layer2", 5), ("layer2", 7), ("layer2", 9)]
    assert units[2].descriptions == ["blue things", "the colour blue", "blue regions"]
    assert units[0].images.shape == (4, 3, 16, 16) and units[0].images.dtype == np.uint8
    assert units[0].masks.shape == (4, 1, 16, 16)


def test_published_annotation_csv_reads() -> None:
    from dndbench.describers.milan.annotations import read_annotation_csv

    path = Path(__file__).resolve().parents[2] / "shared/data/published/MILANNOTATIONS_resnet152_imagenet.csv"
    if not path.exists():
        pytest.skip("published MILANNOTATIONS csv not present")
    texts = read_annotation_csv(path)
    assert len(texts) > 1000 and all(isinstance(v, list) for v in texts.values())


# -- training ----------------------------------------------------------------------------------
def test_training_lowers_loss_and_is_deterministic(tmp_path: Path) -> None:
    a = _fixture_milan(tmp_path / "a")
    b = _fixture_milan(tmp_path / "b")
    history = a.meta["report"]["history"]
    assert history["train_loss"][-1] < 0.5 * history["train_loss"][0]
    assert history["lm_loss"][-1] < history["lm_loss"][0]
    assert a.meta["report"]["held_out_units"] == 1
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    c = _fixture_milan(tmp_path / "c", seed=1)
    assert not torch.equal(c.decoder.lstm.weight_hh, a.decoder.lstm.weight_hh)


def test_bleu1() -> None:
    assert bleu1(["red things"], [["red things", "red"]]) == pytest.approx(1.0)
    assert bleu1(["blue"], [["red things"]]) == 0.0


def test_save_load_round_trip(tmp_path: Path) -> None:
    milan = _fixture_milan(tmp_path, epochs=2)
    milan.save(tmp_path / "m.pt")
    again = Milan.load(tmp_path / "m.pt")
    assert again.vocab.tokens == milan.vocab.tokens
    for (k, v), (_, w) in zip(milan.state_dict().items(), again.state_dict().items()):
        assert torch.equal(v, w), k


# -- released checkpoints ----------------------------------------------------------------------
def test_released_checkpoint_mapping_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    sizes = Sizes(embedding_size=8, hidden_size=16, lm_embedding_size=8, lm_hidden_size=16)
    milan = Milan(_vocab(), EncoderSpec(arch="resnet18"), sizes).eval()  # 224 px, as released
    payload = to_released(milan)
    assert "encoder.encoder.model.layer4.1.conv2.weight" in payload["state_dict"]
    assert {"init_h.0.weight", "attend.output.0.weight", "feature_gate.0.weight",
            "lstm.weight_ih", "output.1.weight", "lm.lstm.weight_hh_l1",
            "lm.output.0.weight"} <= set(payload["state_dict"])
    torch.save(payload, tmp_path / "milan-base.pth")
    loaded = load_any(tmp_path / "milan-base.pth", "auto")
    assert loaded.vocab.tokens == milan.vocab.tokens and loaded.sizes == milan.sizes
    for (k, v), (_, w) in zip(milan.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(v, w), k
    images, masks = torch.rand(1, 3, 3, 32, 32), torch.ones(1, 3, 1, 32, 32)
    a = decode(milan.decoder, milan.lm, milan.encode(images, masks), milan.vocab, beam_size=3)
    b = decode(loaded.decoder, loaded.lm, loaded.encode(images, masks), loaded.vocab, beam_size=3)
    assert a[0].texts == b[0].texts
    bad = dict(payload, children={"encoder": "SpatialConvEncoder"})
    with pytest.raises(Exception, match="not supported"):
        from_released(bad)


# -- the describer -----------------------------------------------------------------------------
def test_check_describer_on_tiny_context(tmp_path: Path) -> None:
    milan = _fixture_milan(tmp_path, epochs=10)
    milan.save(tmp_path / "tiny-milan.pt")
    cfg = DESCRIBERS.config("milan", checkpoint=str(tmp_path / "tiny-milan.pt"), beam_size=4, k=5)
    describer = DESCRIBERS.create(cfg)
    frame = check_describer(describer, tiny_context(tmp_path / "ctx", layer="layer1", units=[0, 2]))
    assert list(frame["unit"]) == [0, 2]
    assert "logp_caption" in frame.columns


def test_describer_refuses_the_annotation_network_and_non_toy_without_checkpoint(tmp_path: Path) -> None:
    describer = DESCRIBERS.create(DESCRIBERS.config("milan"))
    with pytest.raises(ConfigError, match="toy"):
        describer.weights_key(tiny_context(tmp_path))
    with pytest.raises(ConfigError):
        DESCRIBERS.create(DESCRIBERS.config("milan", strategy="sample"))


def test_describer_refuses_only_the_annotation_network(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    from types import SimpleNamespace

    from dndbench.toyworld.target_model import ToyNetConfig, ToyNetModel

    describer = DESCRIBERS.create(DESCRIBERS.config("milan"))

    def ctx(**options: object) -> SimpleNamespace:
        return SimpleNamespace(model=ToyNetModel(ToyNetConfig(name="toynet", **options)))

    with pytest.raises(ConfigError, match="trained on"):
        describer._check_toy(ctx(seed=1, catalogue="milan"))
    describer._check_toy(ctx(seed=1))  # same seed, the benchmark's concepts: a new network
    describer._check_toy(ctx())
    assert "milan" not in caplog.text
    describer._check_toy(ctx(seed=0, catalogue="milan"))
    assert "no test of MILAN" in caplog.text


def test_describer_and_training_command_build_the_same_toy_milan() -> None:
    from dndbench.describers.milan.training import TOY_SIZES, ToyMilanConfig, toy_key

    describer = DESCRIBERS.create(DESCRIBERS.config("milan"))
    assert toy_key(describer.toy_config()) == toy_key(ToyMilanConfig())
    paper = DESCRIBERS.create(DESCRIBERS.config("milan", sizes="paper")).toy_config()
    assert paper.sizes["hidden_size"] == 512 and TOY_SIZES["hidden_size"] < 512
    with pytest.raises(ConfigError):
        DESCRIBERS.create(DESCRIBERS.config("milan", sizes="huge"))


def _tiny_toynet(cache: Cache, seed: int, catalogue: str, every_candidate: bool) -> None:
    """Train a tiny ToyNet into ``cache``; with ``every_candidate`` record every planted
    candidate as ground truth (a tiny network passes few selectivity gates)."""
    import json

    from dndbench.toyworld.target_model import ToyNetConfig, ToyNetModel

    model = ToyNetModel(ToyNetConfig(name="toynet", seed=seed, train_images=200, epochs=1,
                                     catalogue=catalogue))
    model.cache = cache
    meta_path = model.ensure_trained() / "meta.json"
    if every_candidate:
        meta = json.loads(meta_path.read_text())
        meta["planted"] = {}
        for u in meta["report"]["planted_units"]:
            meta["planted"].setdefault(u["layer"], {})[str(u["unit"])] = u["concept"]
        meta_path.write_text(json.dumps(meta))


@pytest.mark.slow
def test_toy_annotation_set_and_training(tmp_path: Path) -> None:
    from dndbench.describers.milan.generalisation import UnseenConfig
    from dndbench.describers.milan.training import ToyMilanConfig, ensure_toy_milan
    from dndbench.toyworld.planted import CATALOGUES
    from dndbench.toyworld.synonyms import names_concept

    cfg = ToyMilanConfig(annotation_train_images=200, annotation_epochs=1, probe_size=120,
                         layers=("layer3", "fc"), k=5,
                         sizes={"embedding_size": 16, "hidden_size": 32, "lm_embedding_size": 16,
                                "lm_hidden_size": 32},
                         fit=FitConfig(epochs=3, lm_epochs=3, hold_out=0.2),
                         unseen=UnseenConfig(train_images=200, epochs=1, probe_size=120))
    cache = Cache(tmp_path)
    _tiny_toynet(cache, 1, "milan", every_candidate=True)
    _tiny_toynet(cache, 0, "benchmark", every_candidate=True)
    path = ensure_toy_milan(cfg, cache)
    milan = Milan.load(path)
    meta, report = milan.meta, milan.meta["report"]
    # every layer3 unit of the milan catalogue (all recorded here)
    assert meta["annotations"]["planted"] == len(CATALOGUES["milan"]["layer3"])
    assert meta["skipped_units"].get("class: test-network concept", 0) >= 1
    assert {"bleu1", "exact_match", "concept_accuracy"} <= set(report["held_out"])
    bench = catalogue_parts("benchmark")
    assert not any(names_concept(w, p) for w in milan.vocab.words for p in bench)
    assert set(meta["annotation_concepts"]).isdisjoint(bench)
    general = report["generalisation"]
    assert general["vocabulary_names_a_test_concept"] == []
    unseen = general["unseen_concepts"]
    # every candidate of the benchmark catalogue
    assert unseen["units"] == sum(len(c) for c in CATALOGUES["benchmark"].values())
    assert {"single", "compositional", "polysemantic", "open-vocabulary"} <= set(unseen["by_kind"])
    # a closed-vocabulary captioner cannot name a word it never saw
    assert unseen["names_concept"] == 0.0
    assert general["seen_concepts"]["units"] == report["held_out_units"]
    assert general["test_network"]["catalogue"] == "benchmark"
