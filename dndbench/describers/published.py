"""Describer ``published``: per-unit descriptions that other authors released, read from a CSV.

Formats (``docs/describers/published.md`` lists the released files and their layouts):

* ``dnd`` -- ``Neuron ID,label`` or ``Neuron ID,Label 1,Label 2,Label 3``; one layer per file.
* ``clip_dissect`` -- ``layer,unit,description[,similarity]``.
* ``milan`` -- ``layer,unit,description``.
* ``netdissect`` -- a NetDissect tally: ``unit`` (1-based), ``category``, ``label``, ``score`` (IoU).
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from dndbench.describers.base import DESCRIBERS, Describer, DescriberConfig, Description
from dndbench.errors import ConfigError, DataError
from dndbench.registry import Choice

if TYPE_CHECKING:
    import pandas as pd

    from dndbench.context import Context

log = logging.getLogger(__name__)

#: columns of the table :func:`read_published` returns
COLUMNS = ["unit", "label", "label_2", "label_3", "score", "category"]
_SCENE_SUFFIX = re.compile(r"-s$")


class PublishedFormat(Choice):
    """The layouts of released description files (see the module docstring)."""

    dnd = "dnd"
    clip_dissect = "clip_dissect"
    milan = "milan"
    netdissect = "netdissect"


def clean_broden_label(label: str) -> str:
    """A Broden label name as the cleaned Broden concept list released with CLIP-Dissect
    (Oikarinen & Weng, 2023) and used by DnD spells it: the scene suffix ``-s`` dropped and
    ``_`` -> space; the colour suffix ``-c`` and inner hyphens stay (``mountain_snowy-s`` ->
    ``mountain snowy``, ``wine_cellar-bottle_storage-s`` -> ``wine cellar-bottle storage``,
    ``blue-c`` -> ``blue-c``).  The one cleaner of the project: Network Dissection's labels,
    released NetDissect tallies and CLIP-Dissect's Broden concept set all use it
    (``docs/real_track.md``)."""
    return _SCENE_SUFFIX.sub("", label.strip()).replace("_", " ").strip()


def _text(value: Any) -> str:
    """A cell as stripped text; empty for NaN / None."""
    import pandas as pd

    return "" if value is None or pd.isna(value) else str(value).strip()


def _require(df: "pd.DataFrame", columns: list[str], path: Path, fmt: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: format {fmt!r} needs column(s) {missing}, the file has "
                        f"{list(df.columns)}; check the `format` option")


def _select_layer(df: "pd.DataFrame", layer: str, path: Path) -> "pd.DataFrame":
    if not layer:
        raise ConfigError(f"{path} holds several layers; say which with the `layer` option")
    rows = df[df["layer"].astype(str).str.strip() == layer]
    if rows.empty:
        layers = sorted(df["layer"].astype(str).str.strip().unique())
        raise DataError(f"{path} has no rows for layer {layer!r}; its layers are {', '.join(layers)}")
    return rows


def _read_dnd(df: "pd.DataFrame", path: Path, layer: str) -> "pd.DataFrame":
    first = "label" if "label" in df.columns else "Label 1"
    _require(df, ["Neuron ID", first], path, "dnd")
    return df.assign(unit=df["Neuron ID"], label=df[first],
                     label_2=df.get("Label 2"), label_3=df.get("Label 3"))


def _read_clip_dissect(df: "pd.DataFrame", path: Path, layer: str) -> "pd.DataFrame":
    _require(df, ["layer", "unit", "description"], path, "clip_dissect")
    df = _select_layer(df, layer, path)
    return df.assign(label=df["description"], score=df.get("similarity"))


def _read_milan(df: "pd.DataFrame", path: Path, layer: str) -> "pd.DataFrame":
    _require(df, ["layer", "unit", "description"], path, "milan")
    df = _select_layer(df, layer, path)
    return df.assign(label=df["description"])


def _read_netdissect(df: "pd.DataFrame", path: Path, layer: str) -> "pd.DataFrame":
    _require(df, ["unit", "label", "score", "category"], path, "netdissect")
    return df.assign(unit=df["unit"].astype(int) - 1)  # tally units are 1-based


_READERS: dict[str, Callable[["pd.DataFrame", Path, str], "pd.DataFrame"]] = {
    "dnd": _read_dnd,
    "clip_dissect": _read_clip_dissect,
    "milan": _read_milan,
    "netdissect": _read_netdissect,
}
FORMATS = tuple(_READERS)


def check_format(fmt: str) -> None:
    """Raise ConfigError unless ``fmt`` is a known format."""
    if fmt not in _READERS:
        raise ConfigError(f"unknown published format {fmt!r}; valid formats are {', '.join(FORMATS)}")


def read_published(path: Path | str, fmt: str, layer: str = "", clean_labels: bool = True) -> "pd.DataFrame":
    """Released descriptions as a table with :data:`COLUMNS` (0-based units, one row per unit).

    ``layer`` picks the rows of files that hold several layers; rows without a label are dropped
    and a unit listed twice keeps its first row.
    """
    import pandas as pd

    check_format(fmt)
    path = Path(path)
    try:
        raw = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read published descriptions {path}: {exc}") from exc
    df = _READERS[fmt](raw, path, layer)
    try:
        units = pd.to_numeric(df["unit"], errors="raise").astype(int)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: unit ids must be integers ({exc})") from exc
    out = pd.DataFrame({c: df[c] if c in df.columns else None for c in COLUMNS}).assign(unit=units)
    for col in ("label", "label_2", "label_3", "category"):
        out[col] = out[col].map(_text)
    if clean_labels and fmt == "netdissect":
        out["label"] = out["label"].map(clean_broden_label)
    out["score"] = pd.to_numeric(out["score"], errors="coerce").astype(float)
    out = out[out["label"] != ""].drop_duplicates("unit", keep="first")
    return out.reset_index(drop=True)


def file_digest(path: Path | str) -> str:
    """SHA-256 of a file's bytes (part of cache keys, so an edited file is re-read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class PublishedConfig(DescriberConfig):
    """``path``: the CSV; ``format``: its layout; ``layer``: the rows to read from a file of
    several layers (default: the run's layer); ``clean_labels``: Broden names as the authors'
    cleaned concept list spells them (:func:`clean_broden_label`).
    Settings are named after the method whose file they read: ``published[dnd](path=...)``."""

    label_options: ClassVar[tuple[str, ...]] = ("format",)

    path: str = ""
    format: PublishedFormat = PublishedFormat.dnd
    layer: str = ""
    clean_labels: bool = True


@DESCRIBERS.register("published")
class PublishedDescriber(Describer[PublishedConfig]):
    """Descriptions released by a paper's authors (DnD, CLIP-Dissect, MILAN, NetDissect CSVs)."""

    Config = PublishedConfig

    needs_weights = False
    needs_probe = False
    in_default_suite = False

    def __init__(self, config: PublishedConfig) -> None:
        super().__init__(config)
        if not config.path:
            raise ConfigError("describer 'published' needs `path`: the CSV of released descriptions "
                              "(e.g. describer.path=.../resnet50_imagenet_broden_fc.csv)")
        #: units of the run that the file does not describe (set by :meth:`describe`)
        self.missing_units: list[int] = []

    @property
    def path(self) -> Path:
        path = Path(self.config.path).expanduser()
        if not path.is_file():
            raise ConfigError(f"describer 'published': file {str(path)!r} does not exist")
        return path

    def describe(self, ctx: "Context") -> list[Description]:
        """One description per unit of ``ctx.units`` found in the file; absent units are reported."""
        table = read_published(self.path, self.config.format, self.config.layer or ctx.layer,
                               self.config.clean_labels)
        rows = {int(r["unit"]): r for r in table.to_dict("records")}
        self._report_missing([u for u in ctx.units if u not in rows], ctx)
        return [self._description(rows[u]) for u in ctx.units if u in rows]

    def _description(self, row: dict[str, Any]) -> Description:
        extras = {"category": row["category"]} if row["category"] else {}
        return Description(unit=int(row["unit"]), label=row["label"],
                           alternatives=[a for a in (row["label_2"], row["label_3"]) if a],
                           score=float(row["score"]), extras=extras)

    def _report_missing(self, missing: list[int], ctx: "Context") -> None:
        self.missing_units = missing
        if not missing:
            return
        ctx.count("published_missing_units", len(missing))
        head = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        log.warning("published descriptions %s lack %d of %d requested units of layer %r: %s",
                    self.path, len(missing), len(ctx.units), self.config.layer or ctx.layer, head)

    def cache_key_parts(self, ctx: "Context") -> tuple[Any, ...]:
        return (*super().cache_key_parts(ctx), file_digest(self.path))
