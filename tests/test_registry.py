"""The generic registry: registration, lookup with suggestions, typed configs, origins."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from dndbench.catalog import KINDS
from dndbench.errors import ConfigError, UnknownComponentError
from dndbench.registry import ComponentConfig, Registry, registration_origin, registries


class Widget:
    @dataclass
    class Config(ComponentConfig):
        size: int = 3

    def __init__(self, config: "Widget.Config") -> None:
        self.config = config


def make_registry() -> Registry[Widget]:
    reg: Registry[Widget] = Registry("widget")
    reg.register("small_widget")(Widget)
    return reg


def test_register_create_and_config_overrides() -> None:
    reg = make_registry()
    obj = reg.create("small_widget", size=5)
    assert isinstance(obj, Widget) and obj.config.size == 5 and obj.config.name == "small_widget"
    assert reg.names() == ["small_widget"]


def test_unknown_name_suggests_close_matches() -> None:
    reg = make_registry()
    with pytest.raises(UnknownComponentError) as err:
        reg.get("smal_widget")
    message = str(err.value)
    assert "Did you mean 'small_widget'" in message and "Available: small_widget" in message
    assert "\n" not in message


def test_unknown_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no option"):
        make_registry().config("small_widget", colour="red")


def test_class_without_config_is_rejected() -> None:
    class Bare:
        pass

    with pytest.raises(TypeError, match="Config"):
        make_registry().register("bare")(Bare)  # type: ignore[arg-type]


def test_origin_is_recorded() -> None:
    reg = make_registry()

    class Other(Widget):
        pass

    with registration_origin("plugin file x.py"):
        reg.register("other")(Other)
    assert reg.entry("other").origin == "plugin file x.py"
    assert reg.entry("small_widget").origin == "builtin"


def test_same_name_twice_is_an_error() -> None:
    reg = make_registry()

    class Clash(Widget):
        pass

    with pytest.raises(ConfigError, match="registered twice"):
        reg.register("small_widget")(Clash)


def builtin_components() -> list[tuple[str, str]]:
    """(kind, name) of every component the package registers (not test modules' fakes)."""
    return [(kind, e.name) for kind, registry in registries().items() for e in registry.entries()
            if e.cls.__module__.startswith("dndbench.")]


@pytest.mark.parametrize("kind", list(KINDS))
def test_builtin_registries_load(kind: str) -> None:
    assert registries()[kind].names(), f"no built-in {kind}"


@pytest.mark.parametrize("kind, name", builtin_components(),
                         ids=[f"{k}-{n}" for k, n in builtin_components()])
def test_every_builtin_config_has_defaults(kind: str, name: str) -> None:
    registry = registries()[kind]
    config = registry.config(name)
    assert config.name == name and isinstance(config, registry.entry(name).config_class)
    assert registry.entry(name).origin == "builtin"
