"""The Broden probe set (``probe=broden``): NetDissect's densely labelled image collection.

Reads the folder layout of NetDissect-Lite's ``broden1_224`` / ``broden1_227``:

* ``index.csv`` — one row per image: ``image,split,ih,iw,sh,sw,<category>...``.  Cells of pixel
  categories (color, object, part, material) hold ``;``-separated label PNG paths (relative to
  ``images/``) whose pixel label is ``R + 256 * G``; cells of image-level categories (scene,
  texture) hold ``;``-separated integer label numbers.  An empty cell: category not annotated.
* ``label.csv`` — ``number,name,category,frequency,coverage,syns``; ``category`` lists the
  categories a label occurs in with counts (``object(123);part(4)``).
* ``c_<category>.csv`` — ``code,number,name,frequency,coverage``: the labels of one category with
  their coverage in it.  A label's category here is its *primary* category, as NetDissect-Lite
  assigns it: of the exposed categories whose ``c_`` file lists it, the one where its coverage
  is highest (ties: the later category).  Without ``c_`` files (or for a label none lists), the
  most frequent category of its ``label.csv`` cell.
* ``images/`` — the images and label PNGs.

Label numbers are global, so they are used directly as :class:`Concept` ids.
"""
from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from dndbench.errors import ConfigError, DataError
from dndbench.probes.base import PROBES, Annotation, Concept, ProbeConfig, ProbeSet

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

INDEX_FIXED_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")
IMAGE_LEVEL_CATEGORIES = frozenset({"scene", "texture"})
DOWNLOAD_HINT = "download it with `python -m dndbench.probes.broden_download --dest {parent}`"
_CATEGORY_RE = re.compile(r"^\s*([A-Za-z_]+)\s*(?:\((\d+)\))?\s*$")


@dataclass(frozen=True)
class BrodenRow:
    """One ``index.csv`` row: the image path, the label resolution and the raw category cells."""

    image: str
    split: str
    sh: int
    sw: int
    cells: dict[str, str]


def parse_category_field(text: str) -> str | None:
    """The most frequent category of a ``label.csv`` category cell (``object(9);part(2)``)."""
    best, best_count = None, -1
    for part in filter(None, (p.strip() for p in text.split(";"))):
        match = _CATEGORY_RE.match(part)
        if not match:
            continue
        count = int(match.group(2) or 0)
        if count > best_count:
            best, best_count = match.group(1), count
    return best


def decode_label_png(rgb: "np.ndarray") -> "np.ndarray":
    """Label numbers of a Broden label PNG array (H, W, 3+): ``R + 256 * G`` as int32."""
    import numpy as np

    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        return rgb.astype(np.int32)
    return rgb[..., 0].astype(np.int32) + 256 * rgb[..., 1].astype(np.int32)


@dataclass
class BrodenConfig(ProbeConfig):
    """``root``: the unzipped ``broden1_224`` folder; ``categories``: concept categories to
    expose (None = all in ``label.csv``); ``index_split``: keep only rows whose ``split``
    column has this value (``train``/``val``; not the describe/score ``split`` every probe has);
    ``max_images``: keep only the first N images."""

    root: str = "data/broden1_224"
    categories: list[str] | None = None
    index_split: str | None = None
    max_images: int | None = None


@PROBES.register("broden")
class BrodenProbe(ProbeSet[BrodenConfig]):
    """Broden (NetDissect): ~63k images with pixel- and image-level concept labels."""

    Config = BrodenConfig

    def __init__(self, config: BrodenConfig) -> None:
        super().__init__(config)
        if config.max_images is not None and config.max_images < 1:
            raise ConfigError(f"probe broden: max_images must be >= 1, got {config.max_images}")

    # -- files -----------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(self.config.root).expanduser()

    def _require(self, name: str) -> Path:
        path = self.root / name
        if not path.is_file():
            where = "folder" if not self.root.is_dir() else f"file {name} in"
            raise DataError(f"Broden {where} {self.root} not found; "
                            + DOWNLOAD_HINT.format(parent=self.root.parent))
        return path

    def _read_csv(self, name: str) -> tuple[list[str], list[dict[str, str]]]:
        path = self._require(name)
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                rows = list(reader)
                return list(reader.fieldnames or []), rows
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"cannot read Broden {path}: {exc}") from None

    # -- parsed tables (lazy) --------------------------------------------------------------------
    @cached_property
    def _labels(self) -> dict[int, Concept]:
        """Every label of ``label.csv`` with a category, keyed by label number."""
        fields, rows = self._read_csv("label.csv")
        missing = {"number", "name", "category"} - set(fields)
        if missing:
            raise DataError(f"Broden {self.root / 'label.csv'} lacks column(s) {sorted(missing)}")
        labels: dict[int, Concept] = {}
        for row in rows:
            try:
                number = int(row["number"])
            except (TypeError, ValueError):
                raise DataError(f"Broden label.csv: bad label number {row['number']!r}") from None
            category = self._primary_category(number) or \
                parse_category_field(row.get("category") or "")
            if number > 0 and category:
                labels[number] = Concept(number, row["name"], category)
        return labels

    def _primary_category(self, number: int) -> str | None:
        """The exposed category where label ``number`` has the highest ``c_`` file coverage
        (ties: the later category, as NetDissect-Lite's ``max((coverage, index))``)."""
        best: tuple[float, int] | None = None
        for position, category in enumerate(self.categories):
            coverage = self._coverage.get(category, {}).get(number)
            if coverage is not None and (best is None or (coverage, position) > best):
                best = (coverage, position)
        return None if best is None else self.categories[best[1]]

    @cached_property
    def _coverage(self) -> dict[str, dict[int, float]]:
        """Per category with a ``c_<category>.csv``: label number -> coverage."""
        out: dict[str, dict[int, float]] = {}
        for category in self.all_categories:
            if not (self.root / f"c_{category}.csv").is_file():
                continue
            fields, rows = self._read_csv(f"c_{category}.csv")
            if not {"number", "coverage"} <= set(fields):
                raise DataError(f"Broden {self.root / f'c_{category}.csv'} lacks the columns "
                                f"number and coverage")
            try:
                out[category] = {int(r["number"]): float(r["coverage"] or 0) for r in rows}
            except (TypeError, ValueError):
                raise DataError(f"Broden c_{category}.csv: bad number or coverage") from None
        return out

    @cached_property
    def all_categories(self) -> list[str]:
        """Concept categories present in ``index.csv`` (its columns after the fixed ones)."""
        return self._index[0]

    @cached_property
    def _index(self) -> tuple[list[str], list[BrodenRow]]:
        fields, rows = self._read_csv("index.csv")
        missing = set(INDEX_FIXED_COLUMNS) - set(fields)
        if missing:
            raise DataError(f"Broden {self.root / 'index.csv'} lacks column(s) {sorted(missing)}")
        categories = [f for f in fields if f not in INDEX_FIXED_COLUMNS]
        parsed: list[BrodenRow] = []
        for line, row in enumerate(rows, start=2):
            if self.config.index_split is not None and row["split"] != self.config.index_split:
                continue
            try:
                sh, sw = int(row["sh"]), int(row["sw"])
            except (TypeError, ValueError):
                raise DataError(f"Broden index.csv line {line}: bad sh/sw "
                                f"{row['sh']!r}/{row['sw']!r}") from None
            cells = {c: (row.get(c) or "").strip() for c in categories}
            parsed.append(BrodenRow(row["image"], row["split"], sh, sw,
                                    {c: v for c, v in cells.items() if v}))
            if self.config.max_images is not None and len(parsed) >= self.config.max_images:
                break
        if not parsed:
            raise DataError(f"Broden {self.root / 'index.csv'} lists no images"
                            + (f" of split {self.config.index_split!r}"
                               if self.config.index_split else ""))
        return categories, parsed

    @cached_property
    def categories(self) -> list[str]:
        """The categories this probe exposes (config order, or ``index.csv`` column order)."""
        available = self.all_categories
        if self.config.categories is None:
            return list(available)
        unknown = [c for c in self.config.categories if c not in available]
        if unknown:
            raise ConfigError(f"probe broden: unknown categor(ies) {unknown}; "
                              f"index.csv has {available}")
        return list(self.config.categories)

    # -- ProbeSet API ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._index[1])

    def row(self, index: int) -> BrodenRow:
        """The ``index.csv`` row of image ``index``."""
        return self._index[1][index]

    def image(self, index: int) -> "Image.Image":
        from PIL import Image

        path = self.root / "images" / self.row(index).image
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"Broden image {path} is missing or corrupt: {exc}") from None

    def fingerprint(self) -> str:
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:
        digest = hashlib.sha256()
        names = ["index.csv", "label.csv"] + [f"c_{c}.csv" for c in self.all_categories
                                               if (self.root / f"c_{c}.csv").is_file()]
        for name in names:
            with open(self._require(name), "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        options = (str(self.root.resolve()), self.config.categories, self.config.index_split,
                   self.config.max_images)
        digest.update(repr(options).encode())
        return digest.hexdigest()[:16]

    def concepts(self) -> list[Concept]:
        wanted = set(self.categories)
        return [c for _, c in sorted(self._labels.items()) if c.category in wanted]

    def annotation(self, index: int) -> Annotation:
        row = self.row(index)
        ann = Annotation(shape=(row.sh, row.sw))
        for category in self.categories:
            cell = row.cells.get(category)
            if not cell:
                continue
            if category in IMAGE_LEVEL_CATEGORIES or not _looks_like_paths(cell):
                ann.image_level[category] = self._parse_ids(cell, row)
            else:
                ann.pixel[category] = self._load_layers(cell, row)
        return ann

    # -- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _parse_ids(cell: str, row: BrodenRow) -> list[int]:
        try:
            return [int(x) for x in cell.split(";") if x.strip()]
        except ValueError:
            raise DataError(f"Broden index.csv row {row.image}: bad label list {cell!r}") from None

    def _load_layers(self, cell: str, row: BrodenRow) -> "np.ndarray":
        import numpy as np
        from PIL import Image

        layers = []
        for rel in filter(None, (p.strip() for p in cell.split(";"))):
            path = self.root / "images" / rel
            try:
                with Image.open(path) as im:
                    im = im.convert("RGB")
                    if im.size != (row.sw, row.sh):
                        im = im.resize((row.sw, row.sh), Image.Resampling.NEAREST)
                    layers.append(decode_label_png(np.asarray(im)))
            except (OSError, ValueError, SyntaxError) as exc:
                raise DataError(f"Broden label image {path} is missing or corrupt: {exc}") from None
        return np.stack(layers)


def _looks_like_paths(cell: str) -> bool:
    """True when a cell lists files rather than integer label numbers."""
    first = cell.split(";", 1)[0].strip()
    return not first.isdigit()
