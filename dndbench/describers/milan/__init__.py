"""MILAN (Hernandez et al., ICLR 2022), implemented from the paper and its released code
(``docs/describers/milan.md``).

For every unit: the ``k`` = 15 top-activating probe images with masks keeping the unit's top
1 % activations (:mod:`dndbench.describers.milan.exemplars`); a frozen pyramid encoder turns each masked
exemplar into a feature vector; the attention-LSTM captioner p(d | E) beam-searches (beam 50, at
most 15 tokens) and the beams are re-ranked by log p(d | E) - λ log p(d) (λ = 0.2) with an LSTM
language model p(d).

Weights: ``checkpoint`` names a file written by ``python -m dndbench.describers.milan.training``
(``checkpoint_format=dndbench``) or a released MILAN checkpoint such as ``milan-base.pth``
(``checkpoint_format=released``; :mod:`dndbench.describers.milan.checkpoint`).  Empty, on a toy network,
means the toy MILAN: trained on annotations of another toy network (``annotation_seed``, whose
planted concepts, the ``milan`` catalogue, are disjoint from the test network's) on first use,
or loaded from the cache if the training command built it.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from dndbench.describers.base import DESCRIBERS, Describer, Description
from dndbench.describers.milan.config import MilanConfig
from dndbench.errors import ConfigError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from dndbench.context import Context
    from dndbench.describers.milan.model import Milan
    from dndbench.describers.milan.training import ToyMilanConfig


@DESCRIBERS.register("milan")
class MilanDescriber(Describer[MilanConfig]):
    """MILAN: a captioner trained on human descriptions of exemplars, decoded by weighted PMI."""

    Config = MilanConfig
    needs_weights = True
    needs_probe = True
    version = "1"

    def __init__(self, config: MilanConfig) -> None:
        super().__init__(config)
        if not 0 < config.quantile < 1 or config.k < 1 or config.beam_size < 1 or config.max_length < 1:
            raise ConfigError("milan: need 0 < quantile < 1 and k, beam_size, max_length >= 1")
        self._model: Milan | None = None

    # -- weights ----------------------------------------------------------------------------------
    def toy_config(self) -> "ToyMilanConfig":
        """The toy MILAN these options select."""
        from dataclasses import asdict

        from dndbench.describers.milan.model import Sizes
        from dndbench.describers.milan.training import TOY_SIZES, FitConfig, ToyMilanConfig

        c = self.config
        sizes = dict(TOY_SIZES) if c.sizes == "toy" else asdict(Sizes())
        fit = FitConfig(epochs=c.epochs, lm_epochs=c.epochs, seed=c.train_seed,
                        hold_out=c.hold_out, max_length=c.max_length, refit=False)
        return ToyMilanConfig(annotation_seed=c.annotation_seed, probe_seed=c.annotation_probe_seed,
                              probe_size=c.annotation_probe_size, k=c.k, quantile=c.quantile,
                              sizes=sizes, fit=fit)

    def _is_toy(self, ctx: "Context") -> bool:
        return ctx.model.config.name == "toynet" or type(ctx.model).__name__ == "ToyNetModel"

    def weights_key(self, ctx: "Context") -> str:
        """What identifies the MILAN weights used (part of the cache key)."""
        from pathlib import Path

        from dndbench.cache import stable_hash

        if self.config.checkpoint:
            path = Path(self.config.checkpoint).expanduser()
            if not path.is_file():
                raise ConfigError(f"milan: checkpoint {path} not found")
            st = path.stat()
            return stable_hash("milan-file", str(path.resolve()), st.st_size, st.st_mtime_ns)
        from dndbench.describers.milan.training import toy_key

        self._check_toy(ctx)
        return toy_key(self.toy_config())

    def _check_toy(self, ctx: "Context") -> None:
        if not self._is_toy(ctx):
            raise ConfigError("milan: without describer.checkpoint=PATH only toy networks can be "
                              "described (the toy MILAN); give a trained or released checkpoint")
        toy = self.toy_config()
        catalogue = getattr(ctx.model.config, "catalogue", "benchmark")
        if (getattr(ctx.model.config, "seed", None) == toy.annotation_seed
                and catalogue == toy.annotation_catalogue):
            raise ConfigError(f"milan: the described toy network (seed {toy.annotation_seed}, "
                              f"catalogue {catalogue}) is the one whose units the toy MILAN is "
                              f"trained on; choose another describer.annotation_seed")
        if catalogue == toy.annotation_catalogue:
            log.warning("milan: the described toy network plants the %r concepts the toy MILAN "
                        "is trained on, so its planted units are no test of MILAN", catalogue)

    def model(self, ctx: "Context") -> "Milan":
        """The MILAN model (loaded, or trained on first use for the toy world)."""
        if self._model is None:
            from pathlib import Path

            if self.config.checkpoint:
                from dndbench.describers.milan.checkpoint import load_any

                self._model = load_any(Path(self.config.checkpoint).expanduser(),
                                       self.config.checkpoint_format)
            else:
                from dndbench.describers.milan.model import Milan
                from dndbench.describers.milan.training import ensure_toy_milan

                self._check_toy(ctx)
                self._model = Milan.load(ensure_toy_milan(self.toy_config(), ctx.cache,
                                                          progress=ctx.progress))
        return self._model

    def cache_key_parts(self, ctx: "Context") -> tuple[Any, ...]:
        return (*super().cache_key_parts(ctx), self.weights_key(ctx))

    # -- describing -------------------------------------------------------------------------------
    @staticmethod
    def device(ctx: "Context") -> str:
        """Where MILAN's networks run: the run's device (``device=auto``: the GPU when there is
        one, else the CPU)."""
        from dndbench.activations import pick_device

        return pick_device(ctx.device)

    def describe(self, ctx: "Context") -> list[Description]:
        import torch

        from dndbench.describers.milan.decoding import decode
        from dndbench.describers.milan.exemplars import compute_exemplars

        if not ctx.units:
            return []
        device = self.device(ctx)
        milan = self.model(ctx).to(device)
        c = self.config
        ex = compute_exemplars(ctx, k=c.k, quantile=c.quantile)
        out: list[Description] = []
        for start in range(0, len(ex.units), 16):
            part = slice(start, start + 16)
            images = torch.from_numpy(ex.images[part]).to(device).float() / 255.0
            feats = milan.encode(images, torch.from_numpy(ex.masks[part]).to(device))
            decoded = decode(milan.decoder, milan.lm, feats, milan.vocab, c.strategy,
                             c.beam_size, c.max_length, c.temperature)
            for row, d in enumerate(decoded, start):
                out.append(self._summarise(ex.units[row], d, float(ex.thresholds[row])))
            ctx.count("milan_units", len(decoded))
        return out

    def describe_units(self, ctx: "Context", units: list[int]) -> list[Description]:
        """``units`` only (one chunk of the describe cache, so a killed run keeps the chunks it
        stored); a unit's exemplars and caption depend on that unit alone."""
        import dataclasses

        return self.describe(dataclasses.replace(ctx, units=list(units)))

    @staticmethod
    def _summarise(unit: int, decoded: Any, threshold: float) -> Description:
        texts = [t for t in decoded.texts if t.strip()]
        label = texts[0] if texts else "(empty)"
        alternatives = [t for t in dict.fromkeys(texts[1:]) if t != label][:2]
        score = decoded.scores[0] if decoded.scores else float("nan")
        logp = decoded.logp[0] if decoded.logp else float("nan")
        return Description(unit=unit, label=label, alternatives=alternatives, score=float(score),
                           extras={"logp_caption": float(logp), "threshold": threshold})
