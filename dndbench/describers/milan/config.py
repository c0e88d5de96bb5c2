"""The options of MILAN (:class:`MilanConfig`) and their choices.

Kept apart from the package's ``__init__`` (which registers the describer) so the step modules
(:mod:`~dndbench.describers.milan.decoding`, ...) can name them.
"""
from __future__ import annotations

from dataclasses import dataclass

from dndbench.describers.base import DescriberConfig
from dndbench.registry import Choice


class Strategy(Choice):
    """How descriptions are decoded: ``greedy``, ``beam`` search, or beam search ``rerank``-ed by
    weighted PMI (MILAN's)."""

    greedy = "greedy"
    beam = "beam"
    rerank = "rerank"


class CheckpointFormat(Choice):
    """What a ``checkpoint`` file is: a ``dndbench`` MILAN file, a ``released`` MILAN checkpoint,
    or ``auto`` (told apart by the file's content)."""

    auto = "auto"
    dndbench = "dndbench"
    released = "released"


class SizePreset(Choice):
    """Network sizes of the toy MILAN: the smaller CPU preset ``toy``
    (:data:`~dndbench.describers.milan.training.TOY_SIZES`) or the ``paper``'s."""

    toy = "toy"
    paper = "paper"


@dataclass
class MilanConfig(DescriberConfig):
    """Exemplars: ``k`` top images, masks at the ``quantile`` of activations.
    Decoding: ``strategy`` (greedy, beam, rerank), ``beam_size``, ``max_length`` tokens,
    ``temperature`` = λ of the PMI re-ranking.  Weights: ``checkpoint`` (path; empty = the
    toy MILAN) and ``checkpoint_format`` (auto, dndbench, released).  The toy MILAN:
    ``annotation_seed`` (the annotated ``toynet``: standard training, the ``milan`` planted
    catalogue, disjoint from the test network's; never the described network),
    ``annotation_probe_seed`` / ``annotation_probe_size``, ``sizes`` (``toy``: the
    smaller CPU preset :data:`~dndbench.describers.milan.training.TOY_SIZES`; ``paper``: embedding
    128, hidden 512, LM 2 x 512, dropout 0.5), ``epochs``, ``train_seed``, ``hold_out``
    (fraction of units held out for the reported validation; the saved model is the
    validated one)."""

    k: int = 15
    quantile: float = 0.99
    strategy: Strategy = Strategy.rerank
    beam_size: int = 50
    max_length: int = 15
    temperature: float = 0.2
    checkpoint: str = ""
    checkpoint_format: CheckpointFormat = CheckpointFormat.auto
    annotation_seed: int = 1
    annotation_probe_seed: int = 3000
    annotation_probe_size: int = 800
    sizes: SizePreset = SizePreset.toy
    epochs: int = 40
    train_seed: int = 0
    hold_out: float = 0.1
