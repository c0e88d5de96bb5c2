"""Concept sets: the candidate words a concept-set describer (CLIP-Dissect) chooses labels from.

A concept set is named by a string:

* ``toy`` — the toy world's concept names (shapes, colours, textures, scenes);
* ``imagenet`` — the target model's class names (``TargetModel.class_names()``);
* ``probe`` / ``broden`` — the probe set's annotated concepts, with readable Broden names
  (``blue-c`` -> ``blue``); ``broden`` additionally requires a probe that has annotations;
* anything else — a text file with one concept per line (e.g. CLIP-Dissect's ``20k.txt``,
  ``broden_labels_clean.txt``, ``imagenet_labels.txt``).

Blank lines are dropped, surrounding whitespace is stripped and duplicates keep their first place.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from dndbench.errors import ConfigError, DataError

if TYPE_CHECKING:
    from dndbench.models.base import TargetModel
    from dndbench.probes.base import ProbeSet

#: names that are not file paths
NAMED_SETS = ("toy", "imagenet", "probe", "broden")


def unique_concepts(names: Iterable[str]) -> list[str]:
    """Stripped, non-empty names without duplicates, in first-seen order."""
    out = dict.fromkeys(n.strip() for n in names)
    out.pop("", None)
    return list(out)


def read_concept_file(path: Path | str) -> list[str]:
    """One concept per line of a UTF-8 text file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"concept set file {str(path)!r} does not exist; give a path to a file "
                          f"with one concept per line or one of {', '.join(NAMED_SETS)}")
    concepts = unique_concepts(path.read_text(encoding="utf-8").splitlines())
    if not concepts:
        raise DataError(f"concept set file {str(path)!r} holds no concepts")
    return concepts


def toy_concepts() -> list[str]:
    """The toy world's concept names."""
    from dndbench.toyworld.world import all_concepts

    return [c.name for c in all_concepts()]


def model_class_concepts(model: "TargetModel") -> list[str]:
    """The target model's class names."""
    names = model.class_names()
    if not names:
        raise ConfigError(f"concept set 'imagenet' uses the model's class names, but model "
                          f"{model.config.name!r} has none; give a concept file instead")
    return unique_concepts(names)


def probe_concepts(probe: "ProbeSet") -> list[str]:
    """The probe's annotated concept names, cleaned as the authors' Broden concept list spells
    them (:func:`~dndbench.describers.published.clean_broden_label`)."""
    from dndbench.describers.published import clean_broden_label

    concepts = probe.concepts()
    if not concepts:
        raise ConfigError(f"concept sets 'probe' / 'broden' use the probe's annotated concepts, "
                          f"but probe {probe.config.name!r} has none (use probe=broden or a file)")
    return unique_concepts(clean_broden_label(c.name) for c in concepts)


def load_concept_set(spec: str, model: "TargetModel | None" = None,
                     probe: "ProbeSet | None" = None) -> list[str]:
    """The concept list named by ``spec`` (see the module docstring)."""
    if spec == "toy":
        return toy_concepts()
    if spec == "imagenet":
        if model is None:
            raise ConfigError("concept set 'imagenet' needs the target model")
        return model_class_concepts(model)
    if spec in ("probe", "broden"):
        if probe is None:
            raise ConfigError(f"concept set {spec!r} needs the probe set")
        return probe_concepts(probe)
    return read_concept_file(spec)
