"""Toy-world backends: every DnD / CLIP-Dissect model role, offline, on the toy world.

* ``captioner=toy`` (:class:`ToyCaptioner`): a slot model — one classifier head per caption
  slot (whether the view shows an object; main shape, colour, texture, outline, size; scene;
  a second object and its shape and colour) on a small ResNet, written out in the canonical
  form ("a large red outlined circle on grass and a small blue star as a second object"; "a
  patch of grass" for a view without an object).  Deterministic.
* ``vlm=toy`` (:class:`ToyCLIP`): a CLIP-like dual encoder trained contrastively on toy images,
  their captions and the bare concept words.  Words outside the toy vocabulary (concept names
  plus a few function words, see :mod:`dndbench.toyworld.captions`) map to one ``<unk>`` token;
  a text made only of unknown words embeds near the ``<unk>`` text, which was trained to match
  no image.
* ``text2image=toy`` (:class:`ToyRenderer`): finds the toy concepts a prompt names (by their
  names, synonyms and plurals, :func:`prompt_concepts`: "stripes", "a big hollow disc", "zigzag",
  "two objects"), fixes them and draws the rest of the scene at random; unknown words are
  ignored and a prompt that names no concept gets fully random scenes (so "One realistic image
  of {c}" works for any c).
  ``text2image.style=heldout`` draws the same concepts outside the training / probe
  distribution (other object scales, positions, rotations; more pixel noise), for metrics
  that must not score with the generator a describer optimised against.

Captioner and CLIP share one network (:mod:`dndbench.toyworld.backend_network`), installed on
first use into ``<cache>/toy_backends/<key>/`` from the weights shipped in the package when
``key`` is the default config's (:mod:`dndbench.toyworld.weights`), else trained there (about
a few minutes on CPU; or ahead of time with ``python -m dndbench.toyworld.train_toy_backends``).
This module imports no torch at import time.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dndbench.backends.base import (
    CAPTIONERS,
    TEXT2IMAGE,
    VLMS,
    BackendConfig,
    Captioner,
    TextToImage,
    VisionLanguageModel,
)
from dndbench.cache import Cache, stable_hash
from dndbench.errors import DataError
from dndbench.registry import Choice
from dndbench.toyworld.train_toy_backends import BackendTrainConfig

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from dndbench.toyworld.world import SceneSpec

log = logging.getLogger(__name__)

#: loaded networks shared by every instance of a process: (weights folder, device) -> model
_LOADED: dict[tuple[str, str], Any] = {}


@dataclass
class ToyModelConfig(BackendConfig):
    """Options of the trained toy backends: ``seed``, ``train_images``, ``epochs`` and
    ``test_images`` (the held-out images its training report measures) select (and, on first
    use, train) the weights."""

    cache_tag = "ToyModelConfig"  # its name when configs were hashed by class name

    batch_size: int = 128
    # the training defaults, so the default backends are the shipped ones
    seed: int = BackendTrainConfig.seed
    train_images: int = BackendTrainConfig.train_images
    epochs: int = BackendTrainConfig.epochs
    test_images: int = BackendTrainConfig.test_images


class _ToyTrained:
    """Shared by the toy captioner and toy CLIP: locating, training and loading the network."""

    config: ToyModelConfig
    cache_dir: Path
    device: str

    def train_config(self) -> BackendTrainConfig:
        c = self.config
        return BackendTrainConfig(seed=c.seed, train_images=c.train_images, epochs=c.epochs,
                                  test_images=c.test_images)

    def weights_dir(self) -> Path:
        from dndbench.toyworld.train_toy_backends import out_dir

        return out_dir(self.train_config(), self.cache_dir)

    @property
    def model_id(self) -> str:
        return f"toy_backends/{self.weights_dir().name}"

    def ensure_trained(self) -> Path:
        """The weights folder, training into it first (under a lock) if it is not complete."""
        folder = self.weights_dir()
        if (folder / "meta.json").exists():
            return folder
        with Cache(self.cache_dir).lock(folder):
            if not (folder / "meta.json").exists():
                from dndbench.toyworld import weights
                from dndbench.toyworld.train_toy_backends import train

                if weights.install("toy_backends", folder.name, folder):  # the shipped weights
                    return folder
                log.warning("training the toy captioner + CLIP (first use, a few minutes on "
                            "CPU) into %s", folder)
                train(self.train_config(), folder, progress=False)
        return folder

    def model(self) -> Any:
        """The trained network on this backend's device (loaded once per process)."""
        folder = self.ensure_trained()
        key = (str(folder), self.device)
        if key not in _LOADED:
            _LOADED[key] = _load(folder, self.device)
        return _LOADED[key]


def _load(folder: Path, device: str) -> Any:
    import torch

    from dndbench.toyworld.backend_network import ToyDual

    try:
        config = json.loads((folder / "meta.json").read_text())["config"]
        model = ToyDual(tuple(config["widths"]), config["dim"])
        model.load_state_dict(torch.load(folder / "weights.pt", map_location="cpu",
                                         weights_only=True))
    except Exception as exc:  # a truncated or foreign file
        raise DataError(f"cannot load the toy backends from {folder} ({exc}); "
                        f"delete the folder to retrain") from exc
    return model.to(device).eval()


@CAPTIONERS.register("toy")
class ToyCaptioner(_ToyTrained, Captioner[ToyModelConfig]):
    """Toy-world slot captioner: "a red striped star on grass" (offline, trained on first use)."""

    Config = ToyModelConfig

    def _caption_batch(self, images: list["Image.Image"]) -> list[str]:
        import torch

        from dndbench.toyworld.backend_network import image_batch
        from dndbench.toyworld.train_toy_backends import predicted_captions

        model = self.model()
        with torch.no_grad():
            _, logits = model.encode_image(image_batch(images).to(self.device))
        return predicted_captions({k: v.cpu().numpy() for k, v in logits.items()})


@VLMS.register("toy")
class ToyCLIP(_ToyTrained, VisionLanguageModel[ToyModelConfig]):
    """Toy-world CLIP-like dual encoder (offline, trained on first use); unknown words -> <unk>."""

    Config = ToyModelConfig

    def _encode_images(self, images: list["Image.Image"]) -> "np.ndarray":
        import torch

        from dndbench.toyworld.backend_network import image_batch

        model = self.model()
        with torch.no_grad():
            emb, _ = model.encode_image(image_batch(images).to(self.device))
        return emb.cpu().numpy()

    def _encode_texts(self, texts: list[str]) -> "np.ndarray":
        from dndbench.toyworld.train_toy_backends import encode_texts

        return encode_texts(self.model(), texts, self.device)


class RenderStyle(Choice):
    """``default``: the training / probe distribution; ``heldout``: the same concepts drawn
    outside it (see :func:`~dndbench.toyworld.render.heldout_spec`)."""

    default = "default"
    heldout = "heldout"


@dataclass
class ToyRendererConfig(BackendConfig):
    """``size``: side of the rendered images in pixels; ``style``: a :class:`RenderStyle`."""

    size: int = 64
    style: RenderStyle = RenderStyle.default


@TEXT2IMAGE.register("toy")
class ToyRenderer(TextToImage[ToyRendererConfig]):
    """Toy-world renderer: the prompt's toy concepts fixed, the rest of the scene random."""

    Config = ToyRendererConfig
    #: 2: each PNG carries its scene spec in a text chunk (for the oracle backends, see
    #: :mod:`dndbench.toyworld.image_specs`); the pixels are those of version 1.
    #: 3: prompts are read with synonyms and the open-vocabulary concepts (world v2)
    version = "3"

    @property
    def model_id(self) -> str:
        from dndbench.toyworld.world import GENERATOR_VERSION

        return f"toyworld-renderer/{GENERATOR_VERSION}"

    def params(self) -> dict[str, Any]:
        """The config minus device/batch size; ``style`` only when it is not the default, so
        default-style images keep the call-cache keys they had before styles existed."""
        out = super().params()
        if out.get("style") == "default":
            out.pop("style")
        return out

    def _generate_items(self, items: list[tuple[str, int, int]]) -> list[bytes]:
        from dndbench.toyworld.image_specs import tagged_png
        from dndbench.toyworld.render import render_image

        out = []
        for prompt, seed, i in items:
            spec = styled_prompt_spec(prompt, seed, i, self.config.style)
            out.append(tagged_png(render_image(spec, self.config.size), spec))
        return out


def render_prompt(prompt: str, seed: int, index: int, size: int = 64,
                  style: str = "default") -> "Image.Image":
    """Image ``index`` for ``prompt`` under ``seed``: a random scene showing the prompt's toy
    concepts (see :func:`prompt_concepts`), drawn in ``style``; tagged
    with its spec (:func:`dndbench.toyworld.image_specs.tag`)."""
    from dndbench.toyworld.image_specs import tag
    from dndbench.toyworld.render import render_image

    spec = styled_prompt_spec(prompt, seed, index, style)
    return tag(render_image(spec, size), spec)


def styled_prompt_spec(prompt: str, seed: int, index: int, style: str = "default") -> "SceneSpec":
    """The scene spec of image ``index`` of ``prompt`` under ``seed`` in ``style``."""
    spec = prompt_spec(prompt, seed, index)
    if style == "heldout":
        import numpy as np

        from dndbench.toyworld.render import heldout_spec

        rng = np.random.default_rng(int(stable_hash("toy-text2image-heldout", prompt, seed,
                                                    index), 16))
        spec = heldout_spec(spec, rng)
    elif style != "default":
        raise ValueError(f"unknown render style {style!r}")
    return spec


def prompt_spec(prompt: str, seed: int, index: int) -> "SceneSpec":
    """The scene spec of image ``index`` of ``prompt`` under ``seed``; depends on nothing else."""
    import numpy as np

    from dndbench.toyworld.world import sample_scene

    rng = np.random.default_rng(int(stable_hash("toy-text2image", prompt, seed, index), 16))
    return sample_scene(rng, **prompt_concepts(prompt))


def prompt_concepts(prompt: str) -> dict[str, Any]:
    """What a prompt fixes, as :func:`~dndbench.toyworld.world.sample_scene` arguments: per
    category the concept it names first (names, synonyms and plurals; ``zigzag`` is a texture),
    and ``outlined``, ``large`` and ``distractor`` (a second object) set when it names
    "outlined", "large object" or "two objects" (or one of their synonyms,
    :data:`~dndbench.toyworld.world.OPEN_CONCEPTS`).  An outlined object is plain, so a named
    texture other than plain loses to the outline."""
    from dndbench.toyworld.synonyms import concept_synonyms, names_concept, normalise_text
    from dndbench.toyworld.synonyms import open_synonyms as open_forms
    from dndbench.toyworld.world import CATEGORIES, EXTRA_TEXTURES

    text = f" {normalise_text(prompt)} "
    out: dict[str, Any] = {}
    for category, names in CATEGORIES.items():
        options = names + (EXTRA_TEXTURES if category == "texture" else ())
        best: tuple[int, int, str] | None = None
        for name in options:
            forms = open_forms(name) if name in EXTRA_TEXTURES else concept_synonyms(name)
            for form in forms:
                match = re.search(r"\b" + r"\s+".join(map(re.escape, normalise_text(form).split()))
                                  + r"\b", text)
                if match and (best is None or (match.start(), -len(form)) < best[:2]):
                    best = (match.start(), -len(form), name)
        if best is not None:
            out[category] = best[2]
    for key, concept in (("outlined", "outlined"), ("large", "large object"),
                         ("distractor", "two objects")):
        if names_concept(prompt, concept):
            out[key] = True
    if out.get("outlined"):
        out.pop("texture", None)
    return out

