"""Tracks: a real model brings the paper's probe and backends, the toy model the toy world's;
explicit toy components on a real model warn; missing data folders are one-line errors naming
the option and the variable; presets compose; a ``--config-dir`` overlay runs (offline)."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

import dndbench.testing.kit  # noqa: F401  (registers the kit_words embedder)
from dndbench.cli import main, precheck, setup
from dndbench.config import (
    DATA_VARIABLES,
    TRACK_DEFAULTS,
    check_data,
    csv_units,
    to_run_spec,
    track_of,
)
from dndbench.errors import ConfigError
from dndbench.registry import registries
from dndbench.results.reference import ALL_LAYERS, published_rows, render

PRESETS_DIR = Path(__file__).resolve().parents[1] / "dndbench" / "conf" / "experiment"
PRESETS = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
SLOTS = ("probe", "captioner", "llm", "text2image", "vlm")


@pytest.fixture(autouse=True)
def _no_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """No data folder is known unless a test sets one; configs registered once."""
    for var in DATA_VARIABLES.values():
        monkeypatch.delenv(var, raising=False)
    setup([])


def compose_spec(overrides: list[str]):
    with initialize_config_module("dndbench.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return to_run_spec(cfg, overrides)


def chosen(spec) -> dict[str, str]:
    return {"probe": spec.probe.name, **{k: v.name for k, v in spec.backends.items()}}


@pytest.mark.parametrize("model, track", [("toynet", "toy"), ("resnet50", "real"),
                                          ("resnet152", "real"), ("vit_b_16", "real"),
                                          ("resnet18_places365", "real")])
def test_each_model_brings_its_tracks_probe_and_backends(model: str, track: str) -> None:
    spec = compose_spec([f"model={model}", "describer=dnd"])
    assert spec.track == track == track_of(registries()["model"].entry(model).cls)
    assert {k: v for k, v in chosen(spec).items() if k in SLOTS} == TRACK_DEFAULTS[track]
    assert not [w for w in spec.warnings if "toy-world" in w]


def test_real_defaults_are_the_papers() -> None:
    spec = compose_spec(["model=resnet50", "describer=dnd", "llm.max_calls=7"])
    assert chosen(spec) == {"probe": "imagenet_broden", "captioner": "blip", "llm": "openai",
                                 "text2image": "sd14", "vlm": "clip_vitb16"}
    # options of the track's backend are reachable without naming it
    assert spec.backends["llm"].max_calls == 7
    assert spec.backends["llm"].model == "gpt-4-0125-preview"


def test_default_job_is_still_the_toy_world() -> None:
    spec = compose_spec([])
    assert spec.track == "toy" and spec.warnings == [] and spec.missing_data == []
    assert chosen(spec)["probe"] == "toyworld" and chosen(spec)["llm"] == "proposer"
    check_data(spec)  # nothing to find: the toy world is generated


@pytest.mark.parametrize("override", ["captioner=toy", "llm=keyword", "probe=toyworld"])
def test_an_explicit_toy_component_on_a_real_model_warns(override: str) -> None:
    spec = compose_spec(["model=resnet50", "describer=dnd", override])
    group, name = override.split("=")
    assert chosen(spec)[group] == name
    warned = [w for w in spec.warnings if "toy-world" in w]
    assert len(warned) == 1 and override in warned[0] and "\n" not in warned[0]


def test_the_warning_reaches_the_run_log(tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = main(["model=resnet50", "captioner=toy", "describer=constant",
                 "metric=final_layer_similarity", "metric.embedder=kit_words",
                 "neurons.units=[0,1]", f"hydra.run.dir={run}"])
    assert code == 0
    log = (run / "dndbench.log").read_text()
    assert "captioner=toy is a toy-world component" in log


def test_real_clip_dissect_uses_the_20k_concept_set(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    spec = compose_spec(["model=resnet50", "describer=clip_dissect"])
    assert any("describer.concept_set" in m and "DNDBENCH_PUBLISHED" in m
               for m in spec.missing_data)
    monkeypatch.setenv("DNDBENCH_PUBLISHED", str(tmp_path))
    spec = compose_spec(["model=resnet50", "describer=clip_dissect"])
    assert spec.describers[0].concept_set == str(tmp_path / "20k.txt")
    assert spec.model.class_strings == str(tmp_path / "imagenet_labels.txt")
    toy = compose_spec(["model=toynet", "describer=clip_dissect"])
    assert toy.describers[0].concept_set == "toy"
    explicit = compose_spec(["model=resnet50", "describer=clip_dissect",
                             "describer.concept_set=toy"])
    assert explicit.describers[0].concept_set == "toy"
    assert any("describer.concept_set=toy" in w for w in explicit.warnings)


def test_class_strings_name_the_final_layer(tmp_path: Path) -> None:
    from dndbench.models.base import MODELS

    labels = tmp_path / "imagenet_labels.txt"
    labels.write_text("".join(f"class {i}, synonym {i}\n" for i in range(1000)))
    model = MODELS.create("resnet50", weights="none", class_strings=str(labels))
    assert model.class_names()[3] == "class 3, synonym 3"
    plain = MODELS.create("resnet50", weights="none")
    assert plain.class_names()[0] == "tench"
    assert model.weights_fingerprint() == plain.weights_fingerprint()  # activations are shared


@pytest.mark.parametrize("argv, option, variable", [
    (["model=resnet50", "describer=dnd"], "probe.imagenet_root", "DNDBENCH_IMAGENET"),
    (["model=resnet50", "describer=dnd", "data.imagenet=/no/such/folder"], "data.imagenet",
     "DNDBENCH_IMAGENET"),
    (["model=resnet50", "describer=netdissect", "probe=broden"], "probe.root", "DNDBENCH_BRODEN"),
])
def test_a_missing_data_folder_is_one_line_and_exit_2(argv: list[str], option: str, variable: str,
                                                       capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no data/broden1_224 here
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert option in err and variable in err


def test_data_folders_come_from_the_environment(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "val").mkdir()
    (tmp_path / "broden").mkdir()
    monkeypatch.setenv("DNDBENCH_IMAGENET", str(tmp_path / "val"))
    monkeypatch.setenv("DNDBENCH_BRODEN", str(tmp_path / "broden"))
    spec = compose_spec(["model=resnet50", "describer=dnd"])
    assert spec.probe.imagenet_root == str(tmp_path / "val")
    assert spec.probe.broden_root == str(tmp_path / "broden")
    check_data(spec)
    explicit = compose_spec(["model=resnet50", "describer=dnd", f"probe.imagenet_root={tmp_path}"])
    assert explicit.probe.imagenet_root == str(tmp_path)  # an option given wins


def test_describers_without_the_probe_need_no_probe_data() -> None:
    spec = compose_spec(["model=resnet50", "describer=constant"])
    check_data(spec)


# -- presets ---------------------------------------------------------------------------------
def test_the_promised_presets_exist() -> None:
    assert set(PRESETS) >= {"dnd_rn50_fc", "hidden_rn50", "milannotations_rn152",
                            "scoring_ablation", "beta_q_sweep"}


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_composes(name: str) -> None:
    from omegaconf import OmegaConf

    with initialize_config_module("dndbench.conf", version_base="1.3"):
        with_hydra = compose("config", overrides=[f"+experiment={name}"], return_hydra_config=True)
    spec = compose_spec([f"+experiment={name}"])
    assert spec.track == "real" and spec.model.name.startswith("resnet")
    ref = spec.options.reference_figures
    if ref is not None:
        rows = published_rows(ref)  # every published value is a number
        assert all(isinstance(v, float) for row in rows.values() for v in row.values())
        assert ref.source and "Published figures" in render(ref, None)
    for key in with_hydra.hydra.sweeper.params or {}:  # every swept key exists in the job
        assert OmegaConf.select(with_hydra, key, default="__missing__") != "__missing__", key


@pytest.mark.parametrize("name", PRESETS)
def test_presets_resolve_against_the_released_data(name: str, published: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DNDBENCH_PUBLISHED", str(published))
    spec = compose_spec([f"+experiment={name}"])
    assert not [m for m in spec.missing_data if "DNDBENCH_PUBLISHED" in m]
    units = spec.neurons.units
    if name in ("milannotations_rn152", "scoring_ablation"):
        assert isinstance(units, list) and len(units) == 50  # the released units of layer 1


def test_csv_units_reads_a_column(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("Layer,Unit\n1,10\n1,13\n2,5\n")
    assert csv_units(str(table), "Unit") == [10, 13, 5]
    assert csv_units(str(table), "Unit", "Layer", 2) == [5]
    assert csv_units(str(tmp_path / "absent.csv"), "Unit") == f"file:{tmp_path / 'absent.csv'}"
    with pytest.raises(ConfigError, match="no column 'unit'"):
        csv_units(str(table), "unit")


def test_reference_figures_sit_beside_ours() -> None:
    import pandas as pd

    from dndbench.results import statistics
    from dndbench.results.reference import ReferenceFigures

    assert ALL_LAYERS == statistics.ALL_LAYERS
    ref = ReferenceFigures(source="paper", metric="m", rows={"DnD": {"layer1": 0.7, ALL_LAYERS: 0.8}})
    ours = pd.DataFrame({"metric": ["m", "m", "other"], "setting": ["dnd", "dnd", "dnd"],
                         "layer": ["layer1", "layer2", "layer1"], "mean": [0.5, 0.6, 9.0]})
    text = render(ref, ours)
    assert "| setting | layer1 | layer2 | all layers |" in text
    assert "| DnD (published) | 0.7000 | — | 0.8000 |" in text
    assert "| dnd (this run) | 0.5000 | 0.6000 | — |" in text
    with pytest.raises(ConfigError, match="rows.DnD.layer1"):
        published_rows(ReferenceFigures(rows={"DnD": {"layer1": "high"}}))


def test_a_preset_prints_its_published_figures(tmp_path: Path, published: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The MILANNOTATIONS preset end to end (one job), with a bag-of-words embedder offline."""
    monkeypatch.setenv("DNDBENCH_PUBLISHED", str(published))
    run = tmp_path / "run"
    code = main(["+experiment=milannotations_rn152", "metric.embedder=kit_words",
                 "metric.reliability_threshold=0", f"hydra.run.dir={run}"])
    assert code == 0, capsys.readouterr().err[-2000:]
    out = capsys.readouterr().out
    assert "Published figures" in out and "| DnD (published) | 0.7454 |" in out
    ours = r"\| published\S*\(path=resnet152_imagenet_layer1\.csv[^)]*\) \(this run\) \| 0\.\d{4} \|"
    assert re.search(ours, out), out[-1500:]
    assert (run / "reference.md").read_text().strip() in out


# -- a user's overlay ------------------------------------------------------------------------
OVERLAY = {
    "describer/depiction_control.yaml": """
        defaults:
          - constant
          - _self_
        label: depiction
    """,
    "experiment/my_study.yaml": """
        # @package _global_
        defaults:
          - override /describer: depiction_control
        neurons:
          units: [0, 2]
    """,
}


@pytest.fixture
def overlay(tmp_path: Path) -> Path:
    root = tmp_path / "my_conf"
    for rel, text in OVERLAY.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return root


def test_config_dir_overlay_passes_the_precheck(overlay: Path) -> None:
    precheck(["--config-dir", str(overlay), "describer=depiction_control"])
    precheck(["--config-dir", str(overlay), "+experiment=my_study"])
    with pytest.raises(ConfigError, match="Did you mean 'depiction_control'|describer"):
        precheck(["--config-dir", str(overlay), "describer=depiction_contrl"])


def test_config_dir_overlay_runs(overlay: Path, tmp_path: Path) -> None:
    import pandas as pd

    run = tmp_path / "run"
    code = main(["--config-dir", str(overlay), "+experiment=my_study",
                 "metric=final_layer_similarity", "metric.embedder=kit_words",
                 f"hydra.run.dir={run}"])
    assert code == 0
    descriptions = pd.read_csv(run / "descriptions.csv")
    assert set(descriptions.label) == {"depiction"} and sorted(descriptions.unit) == [0, 2]


# -- DnD's prompts -----------------------------------------------------------------------------
def test_prompts_keep_the_reference_semantics() -> None:
    from dndbench.describers.dnd import candidates as cand

    simplify = cand.simplify_conversation("a dog on a beach")
    assert "1 to 5 words" in simplify[0]["content"]  # the demonstration has the limit ...
    assert "5 words" not in simplify[-1]["content"]  # ... the real request does not
    assert simplify[-1]["content"].endswith("\nDescription: a dog on a beach")
    summary = cand.summary_conversation(["x", "y"])
    assert "most, not necessarily all" in summary[0]["content"]
    first_shot = cand.SUMMARY_SHOTS[0][0]
    assert any("windmill" in c for c in first_shot)  # the outlier caption ...
    assert not any("windmill" in c and ("fabric" in c or "cloth" in c) for c in first_shot)
    assert cand.SUMMARY_SHOTS[0][1] == "multicolored textiles"  # ... and "most" still wins
    assert summary[-1]["content"].endswith("\nDescriptions: x, y")


def test_prompts_are_options_that_reach_the_llm(tmp_path: Path) -> None:
    from test_dnd import dnd, fake_context

    seen: list[str] = []
    ctx = fake_context(tmp_path, layer="fc", units=[0, 1])
    llm = ctx.backend("llm")
    chat = llm.chat

    def recording(conversations):
        seen.extend(c[-1]["content"] for c in conversations)
        return chat(conversations)

    llm.chat = recording
    out = dnd(simplify_prompt="SIMPLIFY THIS.", summary_prompt="SUM UP.", answer_rules="RULES.",
              n=2, q=2).describe(ctx)
    assert out and any(s.startswith("SIMPLIFY THIS.\nDescription: ") for s in seen)
    assert any(s.startswith("SUM UP. RULES. Do not just repeat") for s in seen)
    spec = compose_spec(["describer=dnd", "describer.summary_prompt=Name the shared concept."])
    assert spec.describers[0].summary_prompt == "Name the shared concept."
