"""Describe-and-Dissect (DnD; Bai et al., TMLR 2025), implemented from the paper and its released
code (``docs/describers/dnd.md``).

For each unit: (1) its top-``k`` probe images, augmented with attention crops (Otsu boxes of the
unit's upsampled activation map) and re-ranked; (2) the top images captioned, each caption
optionally simplified by the LLM, then ``n`` LLM summaries over seeded shuffles of the captions,
normalised into candidate concepts; (3) ``q`` images per candidate from the text-to-image
backend, ranked by the unit's pooled activation, each candidate scored (``scoring``) and the best
three kept: label 1 is the description.  Steps run batched over chunks of ``units_per_batch``
units, with images streamed (:mod:`dndbench.describers.dnd.batching`): shared images, prompts and
concepts are computed once, memory does not grow with the layer, and results equal those of
one-unit-at-a-time runs.

Paper vs released code (``docs/describers/dnd.md``, "Paper and code"), both available; defaults:

* ``heatmap``: ``minmax`` (default; map min-max normalised to 8 bits before Otsu) or ``raw``
  (the code's ``x*255`` cast to uint8, which wraps for activations above 1);
* ``downscale``: False (default; full-resolution synthetic images, the paper's description) or
  True (the code's 32x32 downscale before the target network and CLIP);
* ``simplify``: True (default, the code's per-caption LLM simplification) or False (summarise
  the raw captions);
* the LLM model is the ``llm`` backend's choice (``llm=openai llm.model=gpt-4-0125-preview`` is
  the code's, GPT-3.5-Turbo the paper's).

Other deviations, documented: images of a prompt are seeded per (prompt, seed, i) instead of by
one generator shared across the run; original top images keep their probe-set activations in
the re-ranking (crops get theirs from the target network); candidates are de-duplicated in
first-occurrence order; ties are broken by candidate index (lower first).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dndbench.describers.base import DESCRIBERS, Describer, Description
from dndbench.describers.dnd.config import DnDConfig
from dndbench.errors import ConfigError

if TYPE_CHECKING:
    from dndbench.context import Context


@DESCRIBERS.register("dnd")
class DnDDescriber(Describer[DnDConfig]):
    """Describe-and-Dissect: captions -> LLM candidates -> text-to-image -> best concept."""

    Config = DnDConfig
    uses_backends = ("captioner", "llm", "text2image", "vlm")
    in_default_suite = True
    #: 2: extras hold the report's JSON (candidate scores, captions, top images and crops);
    #: 3: a unit without a usable LLM candidate is missing (no fallback to the captions)
    version = "3"

    def __init__(self, config: DnDConfig) -> None:
        super().__init__(config)
        check_config(config)

    def describe(self, ctx: "Context") -> list[Description]:
        from dndbench.describers.dnd.batching import describe_units

        units = list(ctx.units)
        step = self.config.units_per_batch or max(1, len(units))
        out: list[Description] = []
        for start in range(0, len(units), step):
            out += describe_units(ctx, self.config, units[start:start + step])
        return out

    def chunk_units(self) -> int:
        """Units per cached chunk (:mod:`dndbench.describers.describe_cache`): one batch."""
        return int(self.config.units_per_batch)

    def describe_units(self, ctx: "Context", units: list[int]) -> list[Description]:
        """All three steps for ``units`` (one chunk); the describe cache calls this chunk by
        chunk, so a killed run resumes after the chunks it stored."""
        from dndbench.describers.dnd.batching import describe_units

        return describe_units(ctx, self.config, units)


def check_config(c: DnDConfig) -> None:
    """Raise ConfigError for options out of range (choices are checked by the config itself)."""
    problems = [f"{name} must be >= 1 (got {getattr(c, name)})"
                for name in ("k", "n", "q", "beta", "top_window", "crop_size",
                             "max_crops_per_image") if getattr(c, name) < 1]
    if "{concept}" not in c.prompt_template:
        problems.append(f"prompt_template must contain {{concept}} (got {c.prompt_template!r})")
    if c.units_per_batch < 0:
        problems.append("units_per_batch must be >= 0")
    if problems:
        raise ConfigError("describer 'dnd': " + "; ".join(problems))
