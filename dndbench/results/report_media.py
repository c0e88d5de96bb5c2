"""The pictures of a run's report: small JPEG strips per unit, written to ``report_files/``.

For every unit of every layer (with a probe at hand): its top-activating probe images, the same
images with the unit's activation map over them (heatmap), attention crops (DnD's own when a DnD
setting stored them, else cut the way DnD's step 1 does), Network Dissection's mask (the map
above the unit's threshold, computed as Network Dissection computes it: the image fed whole)
for each netdissect setting, and a few of the images DnD generated
per candidate (read from the call cache; nothing is generated for the report).  Each picture is
the region of the image the network saw (:mod:`dndbench.geometry`), so maps line up with pixels.

``media.json`` beside the strips lists them per unit (paths relative to the run directory) with
the unit's ground truth, so a merged report (``leaderboard --html``) can show them too.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from dndbench.cache import atomic_path

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

    from dndbench.context import Context
    from dndbench.registry import ComponentConfig

log = logging.getLogger("dndbench")

MEDIA_DIR = "report_files"
MANIFEST = "media.json"
#: thumbnails: side of a probe image / crop / mask, and of a generated image (pixels)
THUMB = 96
GENERATED_THUMB = 64
TOP_IMAGES = 8
MAX_CROPS = 8
GENERATED_PER_CANDIDATE = 3
JPEG_QUALITY = 72
#: units whose maps are computed in one pass (bounds memory on wide layers)
UNITS_PER_PASS = 16


@dataclass
class UnitMedia:
    """The pictures of one unit (paths relative to the run directory) and its ground truth."""

    model: str
    layer: str
    unit: int
    truth: str = ""
    top: str = ""
    heat: str = ""
    crops: str = ""
    #: where the crops come from: a DnD setting's name, or ``""`` (cut like DnD's step 1)
    crops_from: str = ""
    #: setting -> strip of the top images masked at Network Dissection's threshold
    masks: dict[str, str] = field(default_factory=dict)
    #: setting -> candidate -> strip of generated images
    generated: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UnitMedia":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def ground_truth(ctx: "Context") -> dict[int, str]:
    """The units' known concepts (the ``oracle``'s: planted concepts, class names at the final
    layer); none when the model cannot say."""
    from dndbench.describers.controls import ground_truth as recorded
    from dndbench.errors import DndbenchError

    try:
        return {int(u): str(t) for u, t in recorded(ctx).items()}
    except DndbenchError as exc:
        log.warning("report: ground truth of %s unavailable (%s)", ctx.layer, exc)
        return {}


# -- drawing -------------------------------------------------------------------------------------
def strip(images: Sequence["Image.Image"], size: int = THUMB) -> "Image.Image | None":
    """Images side by side, each ``size`` x ``size`` (None when there are none)."""
    from PIL import Image

    if not images:
        return None
    out = Image.new("RGB", (size * len(images), size), "white")
    for i, image in enumerate(images):
        out.paste(image.convert("RGB").resize((size, size)), (i * size, 0))
    return out


def save_jpeg(image: "Image.Image | None", path: Path) -> bool:
    """Write ``image`` as a JPEG (atomically); False when there is no image."""
    if image is None:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        image.save(tmp, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return True


def frame(ctx: "Context", index: int, size: int = THUMB) -> "Image.Image":
    """Probe image ``index`` as the network saw it, ``size`` x ``size``."""
    from dndbench.describers.dnd.cropping import seen_region
    from dndbench.geometry import crop_region

    image = ctx.probe.image(int(index)).convert("RGB")
    return crop_region(image, seen_region(image, ctx.model.preprocessing()), (size, size))


def upsampled(activation: np.ndarray, size: int) -> np.ndarray:
    """A 2-D map resized (bilinear) to ``size`` x ``size``, as floats."""
    from PIL import Image

    image = Image.fromarray(np.asarray(activation, np.float32), mode="F")
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))


def heat_overlay(picture: "Image.Image", activation: np.ndarray) -> "Image.Image":
    """The picture under the map: min-max normalised, cold regions darkened and a jet-coloured
    layer over it (half opaque), so the unit's hot region stands out."""
    from matplotlib import colormaps
    from PIL import Image

    size = picture.size[0]
    heat = upsampled(activation, size)
    lo, hi = float(heat.min()), float(heat.max())
    norm = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
    colour = colormaps["jet"](norm)[..., :3]
    base = np.asarray(picture.convert("RGB"), np.float64) / 255.0
    base = base * (0.35 + 0.65 * norm[..., None])
    mixed = 0.5 * base + 0.5 * colour
    return Image.fromarray(np.clip(mixed * 255, 0, 255).astype(np.uint8))


def mask_overlay(picture: "Image.Image", activation: np.ndarray, threshold: float) -> "Image.Image":
    """The picture with everything outside ``map > threshold`` dimmed and the mask's edge cyan."""
    from PIL import Image
    from scipy import ndimage

    size = picture.size[0]
    mask = upsampled(activation, size) > threshold
    base = np.asarray(picture.convert("RGB"), np.float64)
    out = np.where(mask[..., None], base, base * 0.3)
    edge = mask & ~ndimage.binary_erosion(mask)
    out[edge] = (0, 230, 230)
    return Image.fromarray(out.astype(np.uint8))


# -- a layer's pictures --------------------------------------------------------------------------
def _json(value: Any) -> Any:
    if not isinstance(value, str) or not value:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return None


def _rows(descriptions: "pd.DataFrame", describer: str, unit: int) -> list[dict[str, Any]]:
    rows = descriptions[(descriptions.describer == describer) & (descriptions.unit == unit)]
    return rows.to_dict("records")


def dnd_crops(ctx: "Context", descriptions: "pd.DataFrame", unit: int
              ) -> tuple[list["Image.Image"], str]:
    """The attention crops among a DnD setting's top images for ``unit`` (first setting that
    stored any) and that setting's name."""
    from dndbench.describers.dnd.cropping import crop

    for row in _rows(descriptions, "dnd", unit):
        top = _json(row.get("top_images"))
        if not isinstance(top, dict):
            continue
        boxes = [(int(i), tuple(b)) for i, b in top.get("images", []) if b][:MAX_CROPS]
        if boxes:
            size = int(top.get("size", 375))
            pre = ctx.model.preprocessing()
            return [crop(ctx.probe.image(i).convert("RGB"), box, size, pre)
                    for i, box in boxes], str(row["setting"])
    return [], ""


def step1_crops(ctx: "Context", top: Sequence[int], maps: np.ndarray) -> list["Image.Image"]:
    """Crops cut as DnD's step 1 cuts them (default options), from the top images' maps."""
    from dndbench.describers.dnd.config import DnDConfig
    from dndbench.describers.dnd.cropping import crop, crop_boxes

    c = DnDConfig()
    out: list["Image.Image"] = []
    pre = ctx.model.preprocessing()
    for index, amap in zip(top, maps):
        if amap.size <= 1:
            return []
        for box in crop_boxes(amap, c.crop_size, str(c.heatmap), c.max_crops_per_image,
                              c.crop_max_iou, c.crop_max_full_iou):
            out.append(crop(ctx.probe.image(int(index)).convert("RGB"), box, c.crop_size, pre))
            if len(out) >= MAX_CROPS:
                return out
    return out


def generated_images(ctx: "Context", config: "ComponentConfig", candidates: Iterable[str]
                     ) -> dict[str, list["Image.Image"]]:
    """A few of the images DnD generated per candidate, from the call cache only."""
    from dndbench.backends.base import png_image

    try:
        backend = ctx.backend("text2image")
    except Exception as exc:  # no text2image configured, or it cannot be built here
        log.info("report: no generated images (%s)", exc)
        return {}
    if getattr(backend, "call_cache", None) is None:
        return {}
    template = str(getattr(config, "prompt_template", "{concept}"))
    seed = int(getattr(config, "seed", 0))
    n = min(int(getattr(config, "q", GENERATED_PER_CANDIDATE)), GENERATED_PER_CANDIDATE)
    keys = {c: [backend.key("generate", (template.replace("{concept}", c), seed, i))
                for i in range(n)] for c in candidates}
    found = backend.call_cache.get_many([k for ks in keys.values() for k in ks])
    return {c: [png_image(found[k]) for k in ks if k in found] for c, ks in keys.items()}


def layer_media(ctx: "Context", descriptions: "pd.DataFrame", configs: dict[str, "ComponentConfig"],
                run_dir: Path) -> list[UnitMedia]:
    """Write the strips of one layer's units under ``run_dir/report_files`` and list them."""
    if "layer" in descriptions.columns:
        descriptions = descriptions[descriptions.layer.astype(str) == ctx.layer]
    truth = ground_truth(ctx)
    pooled = ctx.activations.pooled(ctx.layer).mean
    folder = Path(MEDIA_DIR) / _slug(ctx.layer)
    whole = _fed_whole(ctx) if (descriptions.describer == "netdissect").any() else None
    out = []
    units = list(ctx.units)
    for start in range(0, len(units), UNITS_PER_PASS):
        chunk = units[start:start + UNITS_PER_PASS]
        tops = {u: [int(i) for i in np.argsort(-pooled[:, u], kind="stable")[:TOP_IMAGES]]
                for u in chunk}
        union = sorted({i for top in tops.values() for i in top})
        maps = ctx.activations.maps(ctx.layer, chunk, union)
        row_of = {index: r for r, index in enumerate(union)}
        frames = {i: frame(ctx, i) for i in union}
        if whole is None or whole is ctx:
            whole_maps, whole_frames = maps, frames
        else:  # Network Dissection's maps: the image fed whole (see _fed_whole)
            whole_maps = whole.activations.maps(ctx.layer, chunk, union)
            whole_frames = {i: frame(whole, i) for i in union}
        for col, unit in enumerate(chunk):
            unit_maps = np.stack([maps[row_of[i], col] for i in tops[unit]])
            media = UnitMedia(ctx.model.config.name, ctx.layer, unit, truth.get(unit, ""))
            write = _writer(run_dir, folder, unit)
            media.top = write("top", strip([frames[i] for i in tops[unit]]))
            if unit_maps[0].size > 1:
                media.heat = write("heat", strip([heat_overlay(frames[i], m)
                                                  for i, m in zip(tops[unit], unit_maps)]))
            crops, media.crops_from = dnd_crops(ctx, descriptions, unit)
            if not crops:
                crops = step1_crops(ctx, tops[unit], unit_maps)
            media.crops = write("crops", strip(crops))
            _netdissect_masks(media, descriptions, whole_frames, tops[unit],
                              np.stack([whole_maps[row_of[i], col] for i in tops[unit]]), write)
            _dnd_generated(ctx, media, descriptions, configs, write)
            out.append(media)
    return out


def _fed_whole(ctx: "Context") -> "Context":
    """The context Network Dissection computes its maps in: the model fed each image whole at
    the probe's resolution (NetDissect-Lite's way), so its thresholds apply to those maps."""
    from dndbench.describers.netdissect import NetDissect

    return NetDissect.fed_whole(ctx)


def _netdissect_masks(media: UnitMedia, descriptions: "pd.DataFrame",
                      frames: dict[int, "Image.Image"], top: list[int], maps: np.ndarray,
                      write: Any) -> None:
    for i, row in enumerate(_rows(descriptions, "netdissect", media.unit)):
        threshold = row.get("threshold")
        if threshold is None or not np.isfinite(float(threshold)) or maps[0].size <= 1:
            continue
        pictures = [mask_overlay(frames[j], m, float(threshold)) for j, m in zip(top, maps)]
        path = write(f"mask{i}", strip(pictures))
        if path:
            media.masks[str(row["setting"])] = path


def _dnd_generated(ctx: "Context", media: UnitMedia, descriptions: "pd.DataFrame",
                   configs: dict[str, "ComponentConfig"], write: Any) -> None:
    for i, row in enumerate(_rows(descriptions, "dnd", media.unit)):
        config = configs.get(str(row["setting"]))
        ranked = _json(row.get("candidate_scores"))
        if config is None or not isinstance(ranked, list):
            continue
        images = generated_images(ctx, config, [str(c) for c, _ in ranked])
        paths = {}
        for j, (concept, pictures) in enumerate(images.items()):
            path = write(f"gen{i}_{j}", strip(pictures, GENERATED_THUMB))
            if path:
                paths[concept] = path
        if paths:
            media.generated[str(row["setting"])] = paths


def _writer(run_dir: Path, folder: Path, unit: int) -> Any:
    def write(name: str, image: "Image.Image | None") -> str:
        relative = folder / f"u{unit}_{name}.jpg"
        return relative.as_posix() if save_jpeg(image, run_dir / relative) else ""

    return write


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text) or "layer"


# -- the manifest --------------------------------------------------------------------------------
def write_media(contexts: Sequence["Context"], descriptions: "pd.DataFrame",
                configs: dict[str, "ComponentConfig"], run_dir: Path, images: bool = True
                ) -> list[UnitMedia]:
    """Every layer's unit pictures (``images=False``: ground truth only, no probe at hand) and
    ``report_files/media.json`` listing them."""
    media: list[UnitMedia] = []
    for ctx in contexts:
        if images:
            media += layer_media(ctx, descriptions, configs, run_dir)
        else:
            truth = ground_truth(ctx)
            media += [UnitMedia(ctx.model.config.name, ctx.layer, u, truth.get(u, ""))
                      for u in ctx.units]
    path = run_dir / MEDIA_DIR / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps([m.to_dict() for m in media], indent=1))
    return media


def read_media(run_dir: Path) -> list[UnitMedia]:
    """The unit pictures a run directory lists (none when it has no ``media.json``)."""
    path = Path(run_dir) / MEDIA_DIR / MANIFEST
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except ValueError:
        log.warning("report: %s is not valid JSON; its pictures are left out", path)
        return []
    return [UnitMedia.from_dict(d) for d in data if isinstance(d, dict)]
