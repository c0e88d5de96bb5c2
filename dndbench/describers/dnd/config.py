"""The options of Describe-and-Dissect (:class:`DnDConfig`) and their choices.

Kept apart from the package's ``__init__`` (which registers the describer) so the step modules
(:mod:`~dndbench.describers.dnd.batching`, ...) can name the config type.
"""
from __future__ import annotations

from dataclasses import dataclass

from dndbench.describers.base import DescriberConfig
from dndbench.describers.dnd.candidates import (
    ANSWER_RULES,
    MERGE_REQUEST,
    SIMPLIFY_REQUEST,
    SUMMARY_REQUEST,
)
from dndbench.registry import Choice


class DnDPooling(Choice):
    """How a unit's activation map becomes one activation (DnD uses mean or max)."""

    mean = "mean"
    max = "max"


class HeatmapMode(Choice):
    """How an activation map becomes an 8-bit heatmap before Otsu thresholding: ``minmax``
    (normalise to [0, 255]) or ``raw`` (the released code's ``x * 255`` cast to uint8, which
    wraps around for activations above 1)."""

    minmax = "minmax"
    raw = "raw"


class Scoring(Choice):
    """Step 3's candidate scores (:mod:`dndbench.describers.dnd.selection`)."""

    mean = "mean"
    topk_squared = "topk_squared"
    image_products = "image_products"
    topk_compare = "topk_compare"


#: units per chunk: step memory is bounded by the chunk, not by the layer's width
DEFAULT_UNITS_PER_BATCH = 32


@dataclass
class DnDConfig(DescriberConfig):
    """Options of ``describer=dnd`` (see :mod:`dndbench.describers.dnd`)."""

    k: int = 10  #: top images per unit (before and after cropping)
    pooling: DnDPooling = DnDPooling.mean  #: how a unit's map becomes one activation
    crops: bool = True  #: step 1 attention cropping (skipped for layers without maps)
    crop_size: int = 375  #: images are resized to this side before cropping
    heatmap: HeatmapMode = HeatmapMode.minmax  #: ``minmax`` or the code's ``raw`` conversion
    max_crops_per_image: int = 4
    crop_max_iou: float = 0.5  #: a crop's IoU with every kept crop is <= this
    crop_max_full_iou: float = 0.8  #: a crop's IoU with the whole image is < this
    simplify: bool = True  #: LLM simplification of each caption before summarising
    n: int = 5  #: LLM summaries (candidate concepts) per unit
    q: int = 10  #: synthetic images per candidate
    prompt_template: str = "One realistic image of {concept}"
    downscale: bool = False  #: the code's 32x32 downscale of synthetic images
    scoring: Scoring = Scoring.topk_compare  #: mean, topk_squared, image_products, topk_compare
    beta: int = 5  #: best ranks averaged by topk_squared
    top_window: int = 10  #: global top window for image_products
    seed: int = 0  #: seeds the caption shuffles and the text-to-image backend
    #: units described together (0 = all at once; 1 = one at a time); memory grows with it
    units_per_batch: int = DEFAULT_UNITS_PER_BATCH
    #: the LLM requests (``dndbench.describers.dnd.candidates``); captions follow each one
    simplify_prompt: str = SIMPLIFY_REQUEST  #: real simplify request (no length limit)
    summary_prompt: str = SUMMARY_REQUEST  #: summarise request (shots and final)
    merge_prompt: str = MERGE_REQUEST  #: re-ask for an answer that listed several labels
    answer_rules: str = ANSWER_RULES  #: added to the final request of each conversation
