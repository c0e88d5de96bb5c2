"""Concatenations of probe sets, e.g. the DnD paper's probing set ImageNet-val ∪ Broden.

Index ``i`` of a union is image ``i - offset[k]`` of part ``k``: the parts follow one another in
order.  Unions carry images only (no concept annotations), as in DnD.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence, TypeVar

from dndbench.cache import Cache, stable_hash
from dndbench.errors import ConfigError, DataError
from dndbench.probes.base import PROBES, ProbeConfig, ProbeSet

if TYPE_CHECKING:
    from PIL import Image


C = TypeVar("C", bound=ProbeConfig)


class UnionProbe(ProbeSet[C]):
    """The images of several probe sets, one after another (images only).

    Either pass ``parts`` explicitly, or subclass and override :meth:`build_parts` (parts are then
    built lazily, on first use).  Setting ``cache`` also sets it on every part.
    """

    def __init__(self, config: C, parts: Sequence[ProbeSet[Any]] | None = None) -> None:
        self._parts: list[ProbeSet[Any]] | None = list(parts) if parts is not None else None
        super().__init__(config)  # sets ``cache`` through the property below

    # -- parts -----------------------------------------------------------------------------------
    def build_parts(self) -> list[ProbeSet[Any]]:
        """The probe sets to concatenate (subclasses build them from their config)."""
        raise ConfigError(f"probe {self.config.name!r}: a UnionProbe needs its parts")

    @property
    def parts(self) -> list[ProbeSet[Any]]:
        """The concatenated probe sets, in order."""
        if self._parts is None:
            parts = self.build_parts()
            for part in parts:
                part.cache = self._cache
            self._parts = parts
        return self._parts

    @property
    def cache(self) -> Cache:
        return self._cache

    @cache.setter
    def cache(self, value: Cache) -> None:
        self._cache = value
        for part in self._parts or []:
            part.cache = value

    @property
    def offsets(self) -> list[int]:
        """Index of each part's first image in the union (``offsets[0] == 0``)."""
        starts, total = [], 0
        for part in self.parts:
            starts.append(total)
            total += len(part)
        return starts

    def locate(self, index: int) -> tuple[int, int]:
        """``(part number, index within that part)`` of union image ``index``."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"probe index {index} out of range (size {len(self)})")
        offsets = self.offsets
        k = bisect.bisect_right(offsets, index) - 1
        return k, index - offsets[k]

    # -- ProbeSet API ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return sum(len(part) for part in self.parts)

    def image(self, index: int) -> "Image.Image":
        """Image ``index`` of the union (RGB)."""
        k, local = self.locate(index)
        return self.parts[k].image(local)

    def fingerprint(self) -> str:
        """Hash of the parts' names, fingerprints and sizes, in order."""
        return stable_hash("union/v1", [(p.config.name, p.fingerprint(), len(p)) for p in self.parts])


@dataclass
class ImageNetBrodenConfig(ProbeConfig):
    """Where the two parts of the ``imagenet_broden`` probe set are."""

    #: ImageNet validation folder (flat or one subfolder per class)
    imagenet_root: str = ""
    #: Broden dataset folder (``broden1_224``); "" = the broden probe's default folder
    broden_root: str = ""


@PROBES.register("imagenet_broden")
class ImageNetBrodenProbe(UnionProbe[ImageNetBrodenConfig]):
    """DnD's default probing set: ImageNet-val images followed by Broden images (images only)."""

    Config = ImageNetBrodenConfig

    def build_parts(self) -> list[ProbeSet[Any]]:
        """``imagenet_val`` at ``imagenet_root`` then ``broden`` at ``broden_root`` (the Broden
        probe's own default folder when ``broden_root`` is empty)."""
        if not self.config.imagenet_root:
            raise DataError(f"probe {self.config.name!r} needs its ImageNet images: "
                            f"set probe.imagenet_root=/path/to/imagenet/val")
        broden: dict[str, Any] = {"root": self.config.broden_root} if self.config.broden_root else {}
        return [PROBES.create("imagenet_val", root=self.config.imagenet_root),
                PROBES.create("broden", **broden)]
