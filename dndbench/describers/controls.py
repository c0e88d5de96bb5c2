"""Controls and references: the rows that show a metric's floor and ceiling in every table.

* ``constant`` (control) labels every unit with one word, by default "depiction" (the constant
  label that scored above every method on MILANNOTATIONS in the DnD paper, Bai et al. 2024).
* ``shuffled`` (control) takes another setting's descriptions and gives each unit another unit's
  description: a seeded random permutation of the described units with no fixed point, so the
  labels are as fluent and as specific as the source's but about the wrong unit.  The source is a
  describer (``describer.source=dnd``, the default: the paper's method, run with its default
  options through the run cache, so it is not described twice) or a run's descriptions table
  (``describer.source=file:PATH``; ``describer.setting`` picks one setting of several).
* ``oracle`` (reference) answers with the ground truth the model records: the planted concept of
  a planted unit, the class name of a final-layer unit.  The default suite includes it only
  where such ground truth exists.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dndbench.describers.base import DESCRIBERS, Describer, DescriberConfig, Description
from dndbench.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pandas as pd

    from dndbench.context import Context

log = logging.getLogger(__name__)

FILE_PREFIX = "file:"


@dataclass
class ConstantConfig(DescriberConfig):
    """``label``: the one description given to every unit."""

    label: str = "depiction"


@DESCRIBERS.register("constant")
class Constant(Describer[ConstantConfig]):
    """Control: the same label (default "depiction") for every unit."""

    Config = ConstantConfig
    needs_weights = False
    needs_probe = False
    role = "control"

    def describe(self, ctx: "Context") -> list[Description]:
        label = self.config.label.strip()
        if not label:
            raise ConfigError("describer.label must be a non-empty text for describer=constant")
        return [Description(unit=u, label=label) for u in ctx.units]


@dataclass
class ShuffledConfig(DescriberConfig):
    """``source``: a describer name (run with its default options) or ``file:PATH`` of a
    descriptions.csv; ``setting``: which setting of that file (needed when it holds several);
    ``seed``: the permutation's seed."""

    source: str = "dnd"
    setting: str = ""
    seed: int = 0


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded random permutation of ``range(n)`` that moves every index (for ``n >= 2``);
    uniform over such permutations (rejection sampling: about e draws on average)."""
    rng = np.random.default_rng(seed)
    identity = np.arange(n)
    while True:
        perm = rng.permutation(n)
        if n < 2 or not np.any(perm == identity):
            return perm


def _text(value: Any) -> str:
    import pandas as pd

    return "" if value is None or pd.isna(value) else str(value).strip()


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_descriptions_file(path: Path, ctx: "Context", setting: str = "") -> "pd.DataFrame":
    """The rows of a dndbench descriptions.csv for ``ctx``'s model and layer (and one setting),
    with their exact text (:func:`dndbench.spreadsheet.read_descriptions`)."""
    from dndbench.spreadsheet import read_descriptions

    try:
        df = read_descriptions(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read descriptions {path}: {exc}") from exc
    missing = [c for c in ("unit", "label") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: a descriptions table needs column(s) {missing}; it has "
                        f"{list(df.columns)}")
    for column, wanted in (("model", ctx.model.config.name), ("layer", ctx.layer)):
        if column in df.columns:
            values = df[column].astype(str).str.strip()
            if not (values == wanted).any():
                raise DataError(f"{path} has no rows for {column} {wanted!r}; it has "
                                f"{', '.join(sorted(values.unique()))}")
            df = df[values == wanted]
    if "setting" in df.columns:
        settings = sorted(df["setting"].astype(str).unique())
        if setting:
            if setting not in settings:
                raise ConfigError(f"{path} has no setting {setting!r}; it has {', '.join(settings)}")
            df = df[df["setting"].astype(str) == setting]
        elif len(settings) > 1:
            raise ConfigError(f"{path} holds several settings ({', '.join(settings)}); pick one "
                              f"with describer.setting=<setting>")
    elif setting:
        raise ConfigError(f"{path} has no setting column; leave describer.setting empty")
    return df


@DESCRIBERS.register("shuffled")
class Shuffled(Describer[ShuffledConfig]):
    """Control: another setting's descriptions, permuted across the units (seeded)."""

    Config = ShuffledConfig
    role = "control"

    def __init__(self, config: ShuffledConfig) -> None:
        super().__init__(config)
        source = config.source.strip()
        self.path: Path | None = None
        self.source: Describer[Any] | None = None
        if source.startswith(FILE_PREFIX):
            self.path = Path(source[len(FILE_PREFIX):])
            if not self.path.is_file():
                raise ConfigError(f"describer.source={source!r}: no such file {self.path}")
            self.needs_weights = self.needs_probe = False
        else:
            if not source:
                raise ConfigError("describer.source is empty; name a describer or file:PATH")
            if source == "shuffled":
                raise ConfigError("describer.source=shuffled would shuffle itself; name another "
                                  "describer")
            if config.setting:
                raise ConfigError("describer.setting only applies to describer.source=file:PATH")
            self.source = DESCRIBERS.create(source)
            self.needs_weights = self.source.needs_weights
            self.needs_probe = self.source.needs_probe

    def applies_to(self, ctx: "Context") -> bool:
        return self.source is None or self.source.applies_to(ctx)

    def cache_key_parts(self, ctx: "Context") -> tuple[Any, ...]:
        from dndbench.describers.describe_cache import descriptions_key

        if self.path is not None:
            source: Any = ("file", _file_digest(self.path))
        else:
            assert self.source is not None
            source = ("describer", descriptions_key(self.source, ctx))
        return (ctx.model.config.name, ctx.layer, ctx.units, source)

    def source_table(self, ctx: "Context") -> "pd.DataFrame":
        """The source's descriptions of ``ctx``'s units (from the run cache for a describer)."""
        from dndbench.describers.describe_cache import describe_cached

        if self.path is not None:
            return read_descriptions_file(self.path, ctx, self.config.setting)
        assert self.source is not None
        return describe_cached(self.source, ctx)[0]

    def describe(self, ctx: "Context") -> list[Description]:
        table = self.source_table(ctx)
        rows: dict[int, Any] = {}
        for row in table.itertuples(index=False):
            unit, label = int(row.unit), _text(row.label)
            if label and unit in ctx.units and unit not in rows:
                rows[unit] = row
        units = sorted(rows)
        if not units:
            raise DataError(f"describer=shuffled: the source {self.config.source!r} describes "
                            f"none of the {len(ctx.units)} units")
        if len(units) < 2:
            log.warning("shuffled: only one unit is described, so it keeps its own description")
        perm = derangement(len(units), self.config.seed)
        out = []
        for unit, index in zip(units, perm):
            row = rows[units[int(index)]]
            alternatives = [t for t in (_text(getattr(row, c, None)) for c in ("label_2", "label_3"))
                            if t]
            out.append(Description(unit=unit, label=_text(row.label), alternatives=alternatives))
        return out


def ground_truth(ctx: "Context") -> dict[int, str]:
    """What the model records as the truth about ``ctx``'s units: planted concepts and, in the
    final layer, class names (unit i = class i)."""
    truth: dict[int, str] = {}
    if ctx.is_final_layer:
        names = ctx.model.class_names() or []
        truth.update({u: names[u] for u in ctx.units if 0 <= u < len(names)})
    planted = ctx.model.planted_concepts(ctx.layer)
    truth.update({u: planted[u] for u in ctx.units if u in planted})
    return truth


@dataclass
class OracleConfig(DescriberConfig):
    """The oracle has no options: it answers with the model's recorded ground truth."""


@DESCRIBERS.register("oracle")
class Oracle(Describer[OracleConfig]):
    """Reference: the ground truth (planted concept, or class name of a final-layer unit)."""

    Config = OracleConfig
    needs_probe = False
    role = "reference"

    def applies_to(self, ctx: "Context") -> bool:
        return bool(ground_truth(ctx))

    def describe(self, ctx: "Context") -> list[Description]:
        truth = ground_truth(ctx)
        if not truth:
            raise ConfigError(f"describer=oracle: model {ctx.model.config.name!r} records no ground "
                              f"truth (planted concepts or class names) for the chosen units of "
                              f"layer {ctx.layer!r}")
        if len(truth) < len(ctx.units):
            log.warning("oracle: %d of %d units have no ground truth and are left out",
                        len(ctx.units) - len(truth), len(ctx.units))
        return [Description(unit=u, label=truth[u]) for u in ctx.units if u in truth]
