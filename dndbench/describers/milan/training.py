"""Train MILAN (captioner + language model) on an annotation set, with a held-out split.

``python -m dndbench.describers.milan.training`` (toy world, the default) annotates every unit of
``layer1``-``fc`` of a toy network trained with another seed (``--annotation-seed``, default 1)
and its own planted concepts (the ``milan`` catalogue, disjoint from the test network's:
no annotation names a concept of the test network, :func:`~dndbench.describers.milan.
annotations.check_disjoint`), and trains the toy MILAN into the cache folder the ``milan``
describer reads, so a later ``python -m dndbench describer=milan`` loads it instead of
training on first use.
``--source milannotations --root DIR`` trains on the released MILANNOTATIONS layout instead
(``--encoder resnet101`` with ImageNet weights as in the paper; ``--out`` required).

The held-out units (``hold_out``, by unit) give the reported validation loss and caption quality
(exact match, BLEU-1, and for the toy world whether the description names the unit's concept);
with ``refit`` (the real track's default) the saved model is then trained again on every unit;
the toy MILAN saves the validated model itself.  The toy MILAN's report also describes the test
network's planted units, concepts it never saw
(:mod:`~dndbench.describers.milan.generalisation`).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from dndbench.cache import Cache, atomic_path, stable_hash
from dndbench.describers.milan.annotations import featurize
from dndbench.describers.milan.generalisation import UnseenConfig
from dndbench.toyworld.target_model import ToyNetConfig, ToyNetModel
from dndbench.training_checkpoint import remove_checkpoints

if TYPE_CHECKING:
    import torch

    from dndbench.describers.milan.annotations import AnnotatedUnit
    from dndbench.describers.milan.model import EncoderSpec, Milan, Sizes

log = logging.getLogger(__name__)
#: bump whenever a change of the code alters the trained toy MILAN
TOY_MILAN_VERSION = "toy-milan-v2"


@dataclass
class FitConfig:
    """Optimisation of both networks (AdamW); ``hold_out``: fraction of units held out."""

    epochs: int = 40
    lm_epochs: int = 40
    batch_size: int = 32
    lr: float = 1e-3
    hold_out: float = 0.1
    seed: int = 0
    refit: bool = True
    max_length: int = 15


#: the toy MILAN's network sizes: the paper's (:class:`~dndbench.describers.milan.model.Sizes`) scaled
#: down so that training on CPU fits the default job's time budget; the real track keeps the
#: paper's sizes
TOY_SIZES: dict[str, Any] = {"embedding_size": 64, "hidden_size": 128, "lm_embedding_size": 64,
                             "lm_hidden_size": 128, "lm_layers": 2, "dropout": 0.5,
                             "lm_dropout": 0.5}


@dataclass
class ToyMilanConfig:
    """Everything that determines the toy MILAN: the annotation network (the ``toynet`` model
    with seed ``annotation_seed``, planted ``annotation_catalogue`` and, by default, its
    standard training, so its weights are shared with ``model=toynet model.seed=1
    model.catalogue=milan``; also the frozen exemplar encoder), the probe its exemplars come
    from, the annotator, the model sizes / fit, and the ``unseen`` network of the
    generalisation report (the test network: no annotation may name a concept of its
    catalogue)."""

    annotation_seed: int = 1
    annotation_catalogue: str = "milan"
    annotation_train_images: int = ToyNetConfig.train_images
    annotation_epochs: int = ToyNetConfig.epochs
    probe_seed: int = 3000
    probe_size: int = 800
    layers: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4", "fc")
    k: int = 15
    quantile: float = 0.99
    min_agreement: float = 0.6
    sizes: dict[str, Any] = field(default_factory=lambda: dict(TOY_SIZES))
    fit: FitConfig = field(default_factory=lambda: FitConfig(refit=False))
    unseen: UnseenConfig = field(default_factory=UnseenConfig)


def toy_key(config: ToyMilanConfig) -> str:
    from dndbench.toyworld.train_toynet import TOYNET_VERSION
    from dndbench.toyworld.world import GENERATOR_VERSION

    return stable_hash("milan-toy", TOY_MILAN_VERSION, TOYNET_VERSION, GENERATOR_VERSION,
                       asdict(config))


def toy_dir(config: ToyMilanConfig, cache: Cache) -> Path:
    return cache.root / "milan" / toy_key(config)


# -- data ------------------------------------------------------------------------------------------
def split_units(n: int, hold_out: float, seed: int) -> tuple[list[int], list[int]]:
    """Train / held-out unit positions (at least one held out when 0 < hold_out and n > 1)."""
    if hold_out <= 0 or n < 2:
        return list(range(n)), []
    order = np.random.default_rng(seed).permutation(n)
    m = max(1, int(round(hold_out * n)))
    return sorted(order[m:].tolist()), sorted(order[:m].tolist())


def _pairs(units: Sequence["AnnotatedUnit"], rows: Sequence[int]) -> list[tuple[int, str]]:
    return [(r, text) for r in rows for text in units[r].descriptions]


def _batch(milan: "Milan", texts: Sequence[str], max_length: int) -> "torch.Tensor":
    import torch

    return torch.tensor(milan.vocab.pad_batch([milan.vocab.encode(t, max_length) for t in texts]))


def caption_loss(milan: "Milan", feats: "torch.Tensor", tokens: "torch.Tensor") -> "torch.Tensor":
    import torch.nn.functional as F

    logp = milan.decoder(feats, tokens[:, :-1])
    return F.nll_loss(logp.flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=milan.vocab.pad)


def lm_loss(milan: "Milan", tokens: "torch.Tensor") -> "torch.Tensor":
    import torch.nn.functional as F

    logp = milan.lm(tokens[:, :-1])
    return F.nll_loss(logp.flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=milan.vocab.pad)


# -- fitting ---------------------------------------------------------------------------------------
def fit(milan: "Milan", feats: "torch.Tensor", units: Sequence["AnnotatedUnit"],
        rows: Sequence[int], config: FitConfig, held_out: Sequence[int] = (),
        checkpoint: tuple[Path, str] | None = None) -> dict[str, Any]:
    """Train the captioner and the language model on ``rows``; per-epoch losses in the history.

    ``checkpoint`` (file, key): save the loop's state there after every epoch and resume from
    it when present (:mod:`dndbench.training_checkpoint`); the caller removes it once the
    weights are written."""
    import torch

    from dndbench.training_checkpoint import TrainingCheckpoint

    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    pairs = _pairs(units, rows)
    opt_c = torch.optim.AdamW(milan.decoder.parameters(), lr=config.lr)
    opt_l = torch.optim.AdamW(milan.lm.parameters(), lr=config.lr)
    history: dict[str, list[float]] = {"train_loss": [], "lm_loss": [], "held_out_loss": []}
    ckpt = None if checkpoint is None else TrainingCheckpoint(
        checkpoint[0], stable_hash("milan-fit/v1", checkpoint[1], asdict(config), pairs,
                                   list(held_out)),
        modules={"decoder": milan.decoder, "lm": milan.lm},
        optimizers={"captioner": opt_c, "lm": opt_l}, generators={"order": gen})
    resumed = ckpt.resume() if ckpt is not None else None
    first = resumed.epoch if resumed is not None else 0
    if resumed is not None:
        history = resumed.extra["history"]
    milan.train()
    for epoch in range(first, max(config.epochs, config.lm_epochs)):
        order = torch.randperm(len(pairs), generator=gen).tolist()
        c_total = l_total = 0.0
        for start in range(0, len(order), config.batch_size):
            chunk = [pairs[i] for i in order[start:start + config.batch_size]]
            tokens = _batch(milan, [t for _, t in chunk], config.max_length)
            if epoch < config.epochs:
                loss = caption_loss(milan, feats[[r for r, _ in chunk]], tokens)
                opt_c.zero_grad()
                loss.backward()
                opt_c.step()
                c_total += loss.item() * len(chunk)
            if epoch < config.lm_epochs:
                loss = lm_loss(milan, tokens)
                opt_l.zero_grad()
                loss.backward()
                opt_l.step()
                l_total += loss.item() * len(chunk)
        history["train_loss"].append(c_total / max(1, len(pairs)))
        history["lm_loss"].append(l_total / max(1, len(pairs)))
        if held_out:
            history["held_out_loss"].append(held_out_loss(milan, feats, units, held_out, config))
            milan.train()
        if ckpt is not None:
            ckpt.save(epoch + 1, extra={"history": history})
    milan.eval()
    return history


def held_out_loss(milan: "Milan", feats: "torch.Tensor", units: Sequence["AnnotatedUnit"],
                  rows: Sequence[int], config: FitConfig) -> float:
    import torch

    milan.eval()
    pairs = _pairs(units, rows)
    with torch.no_grad():
        tokens = _batch(milan, [t for _, t in pairs], config.max_length)
        return float(caption_loss(milan, feats[[r for r, _ in pairs]], tokens))


# -- evaluation ------------------------------------------------------------------------------------
def bleu1(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-1: clipped unigram precision times the brevity penalty."""
    from dndbench.describers.milan.text import tokenize

    matched = total = pred_len = ref_len = 0
    for pred, refs in zip(predictions, references):
        p = tokenize(pred)
        r = [tokenize(x) for x in refs]
        best: Counter[str] = Counter()
        for toks in r:
            best |= Counter(toks)
        matched += sum(min(n, best[w]) for w, n in Counter(p).items())
        total += len(p)
        pred_len += len(p)
        ref_len += min((len(t) for t in r), key=lambda n: (abs(n - len(p)), n)) if r else 0
    if not total:
        return 0.0
    bp = 1.0 if pred_len > ref_len else float(np.exp(1 - ref_len / max(pred_len, 1)))
    return bp * matched / total


def evaluate(milan: "Milan", feats: "torch.Tensor", units: Sequence["AnnotatedUnit"],
             rows: Sequence[int], strategy: str = "rerank", beam_size: int = 50,
             temperature: float = 0.2) -> dict[str, Any]:
    """Caption quality of the units ``rows``: exact match, BLEU-1, concept accuracy (toy)."""
    from dndbench.describers.milan.annotations import concept_in_text
    from dndbench.describers.milan.decoding import decode

    if not rows:
        return {}
    decoded = decode(milan.decoder, milan.lm, feats[list(rows)], milan.vocab, strategy,
                     beam_size, temperature=temperature)
    preds = [d.texts[0] if d.texts else "" for d in decoded]
    refs = [units[r].descriptions for r in rows]
    out: dict[str, Any] = {
        "units": len(rows),
        "exact_match": float(np.mean([p in r for p, r in zip(preds, refs)])),
        "bleu1": bleu1(preds, refs),
        "examples": [{"layer": units[r].layer, "unit": units[r].unit, "prediction": p,
                      "references": units[r].descriptions, "concept": units[r].concept}
                     for r, p in zip(rows, preds)],
    }
    concepts = [units[r].concept for r in rows]
    if all(concepts):
        out["concept_accuracy"] = float(np.mean([concept_in_text(c, p) for c, p in zip(concepts, preds)]))
    return out


# -- the whole job ---------------------------------------------------------------------------------
def train_on_units(units: Sequence["AnnotatedUnit"], spec: "EncoderSpec", backbone: Any,
                   sizes: "Sizes", config: FitConfig, progress: bool = True,
                   checkpoint_dir: Path | None = None, checkpoint_key: str = "") -> "Milan":
    """Vocabulary, features, held-out evaluation and (with ``refit``) a final fit on every unit;
    the report is in ``milan.meta``.  With ``checkpoint_dir``, each fit saves its state there
    after every epoch (``checkpoint.pt``, ``checkpoint-refit.pt``; ``checkpoint_key``: the hash
    of what determines the training) and a killed training resumes; the caller deletes them
    (:func:`~dndbench.training_checkpoint.remove_checkpoints`) once the weights are saved."""
    import torch

    from dndbench.describers.milan.model import Milan
    from dndbench.describers.milan.text import Vocab

    started = time.perf_counter()
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(config.seed)
        vocab = Vocab.build(t for u in units for t in u.descriptions)
        milan = Milan(vocab, spec, sizes, backbone)
        feats = featurize(milan, units)
        train_rows, held = split_units(len(units), config.hold_out, config.seed)
        initial = _fresh_state(milan)
        sites = {phase: None if checkpoint_dir is None else
                 (Path(checkpoint_dir) / name, checkpoint_key)
                 for phase, name in (("fit", "checkpoint.pt"), ("refit", "checkpoint-refit.pt"))}
        history = fit(milan, feats, units, train_rows, config, held, checkpoint=sites["fit"])
        report: dict[str, Any] = {"units": len(units), "train_units": len(train_rows),
                                  "held_out_units": len(held), "history": history,
                                  "held_out": evaluate(milan, feats, units, held)}
        if progress:
            print(format_report(report), file=sys.stderr)
        if config.refit and held:
            milan.load_state_dict(initial)
            report["refit_history"] = fit(milan, feats, units, list(range(len(units))), config,
                                          checkpoint=sites["refit"])
    finally:
        torch.use_deterministic_algorithms(was)
    report["seconds"] = round(time.perf_counter() - started, 2)
    milan.meta = {"report": report, "vocab_size": len(vocab)}
    return milan.eval()


def _fresh_state(milan: "Milan") -> dict[str, Any]:
    return {k: v.clone() for k, v in milan.state_dict().items()}


def toy_sizes(config: ToyMilanConfig) -> "Sizes":
    from dndbench.describers.milan.model import Sizes

    return Sizes(**config.sizes)


def annotation_model(config: ToyMilanConfig, cache: Cache, progress: bool = False) -> Any:
    """The toy network whose units are annotated (trained into the cache on first use, with a
    progress bar when ``progress``)."""
    model = ToyNetModel(ToyNetConfig(name="toynet", seed=config.annotation_seed,
                                     train_images=config.annotation_train_images,
                                     epochs=config.annotation_epochs,
                                     catalogue=config.annotation_catalogue))
    model.cache = cache
    model.progress = progress
    return model


def toy_encoder(config: ToyMilanConfig, cache: Cache,
                progress: bool = False) -> tuple["EncoderSpec", Any]:
    """The frozen exemplar encoder of the toy MILAN: the annotation ToyNet (a classifier of all
    the toy world's shapes, in the role ImageNet ResNet-101 plays for real networks; its
    planted units are MILAN's own concepts, never the test network's)."""
    from dndbench.describers.milan.model import EncoderSpec
    from dndbench.toyworld.network import MEAN, STD
    from dndbench.toyworld.train_toynet import planted_map

    model = annotation_model(config, cache, progress)
    cfg = model.train_config()
    planted = {layer: sorted(units) for layer, units in planted_map(cfg).items()}
    spec = EncoderSpec(arch="toynet", input_size=model.input_size, mean=MEAN, std=STD,
                       options={"widths": list(cfg.widths), "blocks": cfg.blocks,
                                "num_classes": len(model.class_names()), "planted": planted})
    return spec, model.network(pretrained=True)


def toy_annotation_set(config: ToyMilanConfig, cache: Cache, progress: bool = False,
                       skipped: Counter[str] | None = None) -> list["AnnotatedUnit"]:
    """Annotated units of every configured layer of the annotation network, none of them
    annotated with a concept of the unseen network's catalogue (checked: a leak raises
    :class:`~dndbench.errors.DataError`); ``skipped`` counts the units left out, by reason."""
    from dndbench.context import Context
    from dndbench.describers.milan.annotations import (
        catalogue_parts,
        check_disjoint,
        toy_annotations,
    )
    from dndbench.describers.milan.exemplars import compute_exemplars
    from dndbench.toyworld.probe_set import ToyWorldConfig, ToyWorldProbe

    model = annotation_model(config, cache, progress)
    probe = ToyWorldProbe(ToyWorldConfig(name="toyworld", seed=config.probe_seed,
                                         size=config.probe_size))
    probe.cache = cache
    probe._KEEP = config.probe_size  # keep every render: each layer's passes revisit the images
    exclude = catalogue_parts(config.unseen.catalogue)
    units: list[AnnotatedUnit] = []
    for layer in config.layers:
        ctx = Context(model=model, probe=probe, layer=model.resolve_layer(layer),
                      units=list(range(model.num_units(layer))), cache=cache, progress=progress)
        ex = compute_exemplars(ctx, k=config.k, quantile=config.quantile)
        units += toy_annotations(ctx, ex, seed=config.fit.seed, min_agreement=config.min_agreement,
                                 exclude=exclude, skipped=skipped)
    check_disjoint(units, config.unseen.catalogue)
    return units


def train_toy(config: ToyMilanConfig, out_dir: Path | str, cache: Cache,
              progress: bool = True) -> "Milan":
    """Build the toy annotation set, train, write ``milan.pt`` and ``meta.json`` (last)."""
    from dndbench.describers.milan.annotations import check_disjoint
    from dndbench.describers.milan.generalisation import (
        format_generalisation,
        generalisation_report,
    )

    started = time.perf_counter()
    skipped: Counter[str] = Counter()
    units = toy_annotation_set(config, cache, progress, skipped)
    spec, backbone = toy_encoder(config, cache, progress)
    milan = train_on_units(units, spec, backbone, toy_sizes(config), config.fit, progress,
                           checkpoint_dir=Path(out_dir), checkpoint_key=toy_key(config))
    check_disjoint([], config.unseen.catalogue, words=milan.vocab.words)
    trained = time.perf_counter()
    report = milan.meta["report"]
    report["generalisation"] = generalisation_report(
        milan, report.get("held_out", {}), config.unseen, config.k, config.quantile, cache,
        progress, config.annotation_catalogue)
    if progress:
        print(format_generalisation(report["generalisation"]), file=sys.stderr)
    sources = Counter(u.extras.get("source", "") for u in units)
    milan.meta.update({"key": toy_key(config), "config": asdict(config),
                       "annotations": dict(sources), "skipped_units": dict(skipped),
                       "annotation_concepts": dict(Counter(u.concept for u in units)),
                       "seconds_generalisation": round(time.perf_counter() - trained, 2),
                       "seconds_total": round(time.perf_counter() - started, 2)})
    save(milan, Path(out_dir))
    remove_checkpoints(out_dir)  # the weights are written: a rerun has nothing to resume
    return milan


def save(milan: "Milan", out_dir: Path) -> None:
    with atomic_path(out_dir / "milan.pt") as tmp:
        milan.save(tmp)
    with atomic_path(out_dir / "meta.json") as tmp:
        tmp.write_text(json.dumps(milan.meta, indent=2, default=str))


def ensure_toy_milan(config: ToyMilanConfig, cache: Cache, progress: bool = False) -> Path:
    """``milan.pt`` of the toy MILAN; if missing from the cache, installed there from the
    package's shipped weights when ``config`` is theirs (:mod:`dndbench.toyworld.weights`), else
    trained there first (with progress bars when ``progress``: the run's ``progress=`` option)."""
    folder = toy_dir(config, cache)
    if not (folder / "meta.json").exists():
        with cache.lock(folder):
            if not (folder / "meta.json").exists():
                from dndbench.toyworld import weights

                if not weights.install("toy_milan", folder.name, folder):  # shipped weights
                    log.warning("training the toy MILAN (first use) into %s", folder)
                    train_toy(config, folder, cache, progress=progress)
    return folder / "milan.pt"


def format_report(report: dict[str, Any]) -> str:
    """A readable summary of the training report."""
    h = report["history"]
    lines = [f"units: {report['units']} ({report['train_units']} train, "
             f"{report['held_out_units']} held out)",
             f"final train loss {h['train_loss'][-1]:.3f}, lm loss {h['lm_loss'][-1]:.3f}"
             + (f", held-out loss {h['held_out_loss'][-1]:.3f}" if h["held_out_loss"] else "")]
    ho = report.get("held_out") or {}
    if ho:
        accuracy = (f", concept accuracy {ho['concept_accuracy']:.3f}"
                    if "concept_accuracy" in ho else "")
        lines.append(f"held out: exact match {ho['exact_match']:.3f}, BLEU-1 {ho['bleu1']:.3f}"
                     + accuracy)
        for ex in ho["examples"][:20]:
            lines.append(f"  {ex['layer']}:{ex['unit']:<4} {ex['prediction']!r:32} refs {ex['references']}")
    if report.get("generalisation"):
        from dndbench.describers.milan.generalisation import format_generalisation

        lines.append(format_generalisation(report["generalisation"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from dndbench.cache import default_cache_dir

    parser = argparse.ArgumentParser(prog="python -m dndbench.describers.milan.training",
                                     description="Train MILAN on an annotation set.")
    parser.add_argument("--source", choices=("toy", "milannotations"), default="toy")
    parser.add_argument("--root", type=Path, help="MILANNOTATIONS folder (--source milannotations)")
    parser.add_argument("--encoder", default="resnet101", help="torchvision ResNet (milannotations)")
    parser.add_argument("--encoder-weights", default="IMAGENET1K_V1")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    parser.add_argument("--annotation-seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=FitConfig.epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hold-out", type=float, default=FitConfig.hold_out)
    args = parser.parse_args(argv)
    fit_cfg = FitConfig(epochs=args.epochs, lm_epochs=args.epochs, seed=args.seed,
                        hold_out=args.hold_out)
    cache = Cache(default_cache_dir())
    if args.source == "toy":
        config = ToyMilanConfig(annotation_seed=args.annotation_seed,
                                fit=replace(fit_cfg, refit=ToyMilanConfig().fit.refit))
        out = args.out or toy_dir(config, cache)
        milan = train_toy(config, out, cache)
    else:
        if args.root is None or args.out is None:
            parser.error("--source milannotations needs --root and --out")
        milan = train_milannotations(args.root, args.encoder, args.encoder_weights, fit_cfg)
        save(milan, args.out)
        out = args.out
    print(format_report(milan.meta["report"]))
    print(f"wrote {out / 'milan.pt'} and {out / 'meta.json'}")
    return 0


def train_milannotations(root: Path, arch: str = "resnet101", weights: str | None = "IMAGENET1K_V1",
                         config: FitConfig | None = None, sizes: "Sizes | None" = None) -> "Milan":
    """MILAN trained on a MILANNOTATIONS folder with a torchvision ResNet pyramid encoder."""
    from dndbench.describers.milan.annotations import load_milannotations
    from dndbench.describers.milan.model import EncoderSpec, Sizes, build_backbone

    units = load_milannotations(root)
    spec = EncoderSpec(arch=arch)
    backbone = build_backbone(spec, weights)
    milan = train_on_units(units, spec, backbone, sizes or Sizes(), config or FitConfig())
    milan.meta["source"] = str(root)
    return milan


if __name__ == "__main__":
    sys.exit(main())
