"""Control and reference describers on the kit's tiny model: ``constant``, ``shuffled``,
``oracle``, and their place in the default suite."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dndbench.config import default_describers
from dndbench.describers.base import DESCRIBERS
from dndbench.describers.controls import Constant, Oracle, Shuffled, derangement, ground_truth
from dndbench.describers.describe_cache import descriptions_key
from dndbench.errors import ConfigError, DataError
from dndbench.testing.kit import TINY_COLOURS, TinyModel, check_describer, tiny_context

CLASSES = list(TINY_COLOURS)


class PlantedTiny(TinyModel):
    """The tiny model with two planted units in ``layer1`` (ground truth by fiat)."""

    def planted_concepts(self, layer: str) -> dict[int, str]:
        return {3: "red", 7: "blue square"} if layer == "layer1" else {}


def labels(describer, ctx) -> dict[int, str]:
    return {d.unit: d.label for d in describer.describe(ctx)}


@pytest.mark.parametrize("label", ["depiction", "shape"])
def test_constant_labels_every_unit_with_its_label(tmp_path: Path, label: str) -> None:
    ctx = tiny_context(tmp_path)
    describer = DESCRIBERS.create("constant", **({} if label == "depiction" else {"label": label}))
    frame = check_describer(describer, ctx)
    assert frame.label.tolist() == [label] * len(ctx.units)
    assert frame.unit.tolist() == ctx.units


def test_constant_rejects_an_empty_label(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="non-empty"):
        Constant(Constant.Config(name="constant", label=" ")).describe(tiny_context(tmp_path))


@pytest.mark.parametrize("n", [2, 3, 5, 12, 100])
def test_derangement_is_a_seeded_permutation_without_fixed_points(n: int) -> None:
    perm = derangement(n, seed=4)
    assert sorted(perm.tolist()) == list(range(n))
    assert not np.any(perm == np.arange(n))
    assert np.array_equal(perm, derangement(n, seed=4))


def test_shuffled_permutes_the_source_labels_across_units(tmp_path: Path) -> None:
    ctx = tiny_context(tmp_path)  # fc: the oracle's labels are the 4 class names
    source = labels(DESCRIBERS.create("oracle"), ctx)
    shuffled = DESCRIBERS.create("shuffled", source="oracle", seed=0)
    out = labels(shuffled, ctx)
    assert sorted(out.values()) == sorted(source.values())  # the same labels...
    assert all(out[u] != source[u] for u in ctx.units)  # ...each on another unit
    assert out == labels(DESCRIBERS.create("shuffled", source="oracle", seed=0), ctx)
    by_seed = {tuple(labels(DESCRIBERS.create("shuffled", source="oracle", seed=s), ctx).values())
               for s in range(6)}
    assert len(by_seed) > 1  # the seed chooses the permutation
    check_describer(shuffled, ctx)


def test_shuffled_reuses_the_source_run_from_the_cache(tmp_path: Path) -> None:
    ctx = tiny_context(tmp_path)
    shuffled = Shuffled(Shuffled.Config(name="shuffled", source="oracle"))
    assert shuffled.role == "control" and not shuffled.needs_probe and shuffled.needs_weights
    shuffled.describe(ctx)
    assert shuffled.source is not None
    key = descriptions_key(shuffled.source, ctx)
    assert ctx.cache.path("descriptions", key, ".parquet").is_file()


def test_shuffled_reads_one_setting_of_a_descriptions_file(tmp_path: Path) -> None:
    ctx = tiny_context(tmp_path)
    rows = [{"setting": s, "describer": s, "model": "tiny", "layer": layer, "unit": u,
             "label": f"{s}-{layer}-{u}", "role": "method"}
            for s in ("a", "b") for layer in ("fc", "layer1") for u in ctx.units]
    path = tmp_path / "descriptions.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    with pytest.raises(ConfigError, match="several settings"):
        DESCRIBERS.create("shuffled", source=f"file:{path}").describe(ctx)
    out = labels(DESCRIBERS.create("shuffled", source=f"file:{path}", setting="b"), ctx)
    assert sorted(out.values()) == sorted(f"b-fc-{u}" for u in ctx.units)
    assert all(out[u] != f"b-fc-{u}" for u in ctx.units)
    with pytest.raises(ConfigError, match="no setting 'c'"):
        DESCRIBERS.create("shuffled", source=f"file:{path}", setting="c").describe(ctx)
    other = tiny_context(tmp_path / "other", layer="conv1")
    with pytest.raises(DataError, match="no rows for layer 'conv1'"):
        DESCRIBERS.create("shuffled", source=f"file:{path}", setting="b").describe(other)


@pytest.mark.parametrize("options, pattern", [
    ({"source": "file:/no/such/descriptions.csv"}, "no such file"),
    ({"source": "shuffled"}, "itself"),
    ({"source": "dnnd"}, "Did you mean 'dnd'"),
    ({"source": "oracle", "setting": "x"}, "only applies"),
])
def test_shuffled_source_mistakes_are_config_errors(options: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        DESCRIBERS.create("shuffled", **options)


def test_oracle_gives_the_class_names_of_final_layer_units(tmp_path: Path) -> None:
    ctx = tiny_context(tmp_path)
    oracle = DESCRIBERS.create("oracle")
    assert oracle.role == "reference" and oracle.applies_to(ctx)
    frame = check_describer(oracle, ctx)
    assert frame.label.tolist() == CLASSES


def test_oracle_gives_planted_concepts_and_leaves_out_units_without_truth(tmp_path: Path) -> None:
    ctx = tiny_context(tmp_path, layer="layer1", units=[1, 3, 7])
    ctx.model = PlantedTiny(TinyModel.Config(name="tiny"))
    assert ground_truth(ctx) == {3: "red", 7: "blue square"}
    assert labels(Oracle(Oracle.Config(name="oracle")), ctx) == {3: "red", 7: "blue square"}


def test_oracle_errors_where_the_model_has_no_ground_truth(tmp_path: Path) -> None:
    ctx = tiny_context(tmp_path, layer="conv1")
    oracle = DESCRIBERS.create("oracle")
    assert not oracle.applies_to(ctx)
    with pytest.raises(ConfigError, match="no ground truth"):
        oracle.describe(ctx)
    assert not DESCRIBERS.create("shuffled", source="oracle").applies_to(ctx)


def test_default_suite_has_controls_after_methods_and_shuffles_a_method() -> None:
    suite = default_describers()
    roles = [DESCRIBERS.get(c.name).role for c in suite]
    assert {"constant", "shuffled", "oracle"} <= {c.name for c in suite}
    assert roles == sorted(roles, key=["method", "control", "reference"].index)
    shuffled = next(c for c in suite if c.name == "shuffled")
    source = shuffled.source  # type: ignore[attr-defined]
    assert source in {c.name for c in suite} and DESCRIBERS.get(source).role == "method"
    assert next(c for c in suite if c.name == "constant").label == "depiction"  # type: ignore[attr-defined]
