"""The CLI's rough edges: ``options KIND NAME`` shows a component's options with their docs and
defaults, ``list`` prints whole one-line summaries, plugins join the default suite only when they
ask to, no top-level ``embedder`` option, and ``progress=false`` reaches first-use training."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from dndbench.describers.base import Describer, DescriberConfig, Description
from dndbench.describers.dnd import DnDDescriber
from dndbench.errors import ConfigError
from dndbench.options import describe, main, options
from dndbench.registry import Registry, first_sentence, registries


@pytest.mark.parametrize("kind, name, option, default, doc", [
    ("describer", "dnd", "k", "10", "top images per unit"),            # `#:` comment on its line
    ("describer", "dnd", "simplify_prompt", "'Give only", "real simplify request"),
    ("describer", "netdissect", "maps", "'memmap'", "one network pass"),  # class docstring
    ("captioner", "blip", "device", "'auto'", "cuda when available"),   # a base class's docstring
    ("describer", "constant", "label", "'depiction'", "every unit"),
])
def test_options_show_type_default_and_doc(kind: str, name: str, option: str, default: str,
                                           doc: str) -> None:
    entry = registries()[kind].entry(name)
    found = {o.name: o for o in options(entry.config_class)}
    assert found[option].default.startswith(default) and doc in found[option].doc
    text = describe(kind, name)
    assert f"{kind}.{option}={found[option].default}" in text and entry.summary in text


def test_choices_are_listed_as_the_type() -> None:
    from dndbench.describers.dnd.config import DnDConfig

    scoring = {o.name: o for o in options(DnDConfig)}["scoring"]
    assert scoring.type == "mean | topk_squared | image_products | topk_compare"


def test_options_by_name_alone_and_ambiguous_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["netdissect"]) == 0
    assert "describer.quantile=0.005" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="captioner and a text2image"):
        main(["toy"])


def test_the_cli_lists_the_options_subcommand(tmp_path: Path) -> None:
    from dndbench.cli import main as cli

    assert cli(["options", "describer", "nosuch"]) == 2  # an unknown name is one error line
    assert cli(["options", "metric", "planted_concept"]) == 0


@pytest.mark.parametrize("doc, first", [
    ("Network Dissection: label = the Broden concept whose masks best overlap (IoU) the unit's\n"
     "    top-0.5 % activation region.\n\n    More text.", "Network Dissection: label = the Broden "
     "concept whose masks best overlap (IoU) the unit's top-0.5 % activation region."),
    ("A baseline, e.g. a constant. Then more.", "A baseline, e.g. a constant."),
    ("No full stop at all", "No full stop at all"),
    ("Version 1.5 of it. Second.", "Version 1.5 of it."),
])
def test_summaries_are_whole_first_sentences(doc: str, first: str) -> None:
    assert first_sentence(doc) == first


def test_every_listed_summary_is_one_whole_sentence() -> None:
    for registry in registries().values():
        for entry in registry.entries():
            assert "\n" not in entry.summary
            paragraph = " ".join((entry.cls.__doc__ or "").strip().split("\n\n")[0].split())
            assert paragraph.startswith(entry.summary), entry.name


class _Asks(Describer):
    """A plugin describer that asks to join the default suite."""

    in_default_suite = True

    @dataclass
    class Config(DescriberConfig):
        pass

    def describe(self, ctx):
        return [Description(unit=u, label="x") for u in ctx.units]


class _Silent(Describer):
    """A plugin describer that says nothing (the base class's default is True)."""

    Config = _Asks.Config

    def describe(self, ctx):
        return []


class _InheritsDnD(DnDDescriber):
    """A plugin variant of a built-in that is in the default suite."""


@pytest.mark.parametrize("cls, origin, joins", [
    (_Asks, "plugin file /p.py", True),
    (_Silent, "plugin file /p.py", False),
    (_InheritsDnD, "entry point x:y (package p)", False),
    (DnDDescriber, "builtin", True),
])
def test_plugins_join_the_default_suite_only_when_they_ask(cls: type, origin: str,
                                                          joins: bool) -> None:
    registry: Registry = Registry("describer")
    registry.register("x", origin=origin)(cls)
    assert registry.entry("x").in_default_suite is joins


def test_no_top_level_embedder_option() -> None:
    from hydra import compose, initialize_config_module

    from dndbench.cli import setup
    from dndbench.config import RunConfig, to_run_spec

    setup([])
    with initialize_config_module("dndbench.conf", version_base="1.3"):
        cfg = compose("config")
    spec = to_run_spec(cfg, [])
    assert "embedder" not in cfg and "embedder" not in spec.backends
    assert "embedder" not in RunConfig.__dataclass_fields__


def test_progress_false_reaches_first_use_training(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from dndbench.cache import Cache
    from dndbench.toyworld import train_toynet
    from dndbench.toyworld.target_model import ToyNetConfig, ToyNetModel

    seen = []

    def fake_train(config, folder, progress=True, **_):
        seen.append(progress)
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "meta.json").write_text("{}")

    monkeypatch.setattr(train_toynet, "train", fake_train)
    model = ToyNetModel(ToyNetConfig(name="toynet", seed=12345))
    model.cache = Cache(tmp_path)
    model.progress = False
    model.ensure_trained()
    assert seen == [False]
