"""Bad inputs: every mistake in the user's input or environment ends in exactly one ``error:``
line that says what was wrong, exit status 2, no traceback and no result files (the run
directory is not left behind).

Each case runs the command line in a fresh folder with its own cache: in this process
(:func:`dndbench.cli.main`, output captured at the file descriptors; an exception escaping
``main`` fails the case) or, for the cases marked ``subprocess``, as ``python -m dndbench``,
the most faithful check that nothing prints a traceback.  Most cases fail in validation,
before any model loads; the few that fail while the job runs use a cheap configuration.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: files a run directory holds only when a job produced results
RESULT_FILES = ("descriptions.csv", "descriptions.parquet", "scores.csv", "costs.csv",
                "summary.json", "run.json", "leaderboard.md", "leaderboard.csv")
#: a cheap job for the cases that get past validation (no embedder, no training)
CHEAP = {"describer": "constant", "metric": "final_layer_similarity", "neurons.units": "[0,1]"}
#: the metric of the cases that choose a describer but no metric (nothing trains)
METRIC = "metric=final_layer_similarity"
#: the smallest toy world, should a case get as far as training
SMALL = {"model.train_images": "64", "model.epochs": "1", "probe.size": "16",
         "captioner.train_images": "64", "captioner.epochs": "1"}
#: environment variables a case must not inherit
CLEARED = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DNDBENCH_IMAGENET", "DNDBENCH_BRODEN",
           "DNDBENCH_PUBLISHED", "DNDBENCH_PLUGINS", "HYDRA_FULL_ERROR")

BROKEN_PLUGIN = b"raise RuntimeError('this plugin is broken')\n"
UNDECODABLE = b"\xff\xfe\x00\x81 not text \xc3\x28\n"


@dataclass(frozen=True)
class Bad:
    """One bad input: the command line (``{tmp}`` is the case's folder), a regex the error line
    must match, files to create first (name -> bytes) and extra environment variables."""

    id: str
    args: tuple[str, ...]
    expect: str
    files: dict[str, bytes] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    skip: str = ""  # "cuda": skipped where CUDA is available; "root": skipped as root
    subprocess: bool = False  # run as ``python -m dndbench`` instead of in this process


def bad(id: str, args: str, expect: str, **kw: object) -> Bad:
    return Bad(id, tuple(args.split()), expect, **kw)  # type: ignore[arg-type]


OTHER_UNITS = b"Neuron ID,label\n50,cat\n51,dog\n"
WRONG_COLUMNS = b"unit,text\n0,cat\n"

CASES = [
    # -- unknown names, in every config group: close matches and the choices ------------------
    bad("unknown-describer", "describer=dnx",
        r"unknown describer 'dnx'.*'dnd'.*Available: .*netdissect", subprocess=True),
    bad("formula-label", "describer=constant describer.label_as=@SUM",
        r"label_as='@SUM' starts with '@'.*start the label with a letter"),
    bad("unknown-model", "model=toynte", r"unknown model 'toynte'.*'toynet'.*Available:"),
    bad("unknown-probe", "probe=toywrld", r"unknown probe 'toywrld'.*'toyworld'"),
    bad("unknown-metric", "metric=final_layer_simlarity", r"unknown metric.*'final_layer_similarity'"),
    bad("unknown-captioner", "captioner=blipp", r"unknown captioner 'blipp'.*'blip'.*Available:"),
    bad("unknown-llm", "llm=opnai", r"unknown llm 'opnai'.*'openai'.*Available:"),
    bad("unknown-text2image", "text2image=sd_trbo", r"unknown text2image.*'sd_turbo'"),
    bad("unknown-vlm", "vlm=clip_vitb61", r"unknown vlm.*'clip_vitb16'"),
    bad("unknown-embedder", "metric=final_layer_similarity metric.embedder=minilmm",
        r"embedder.*'minilmm'.*'minilm'"),
    bad("unknown-neurons", "neurons=plantd",
        r"unknown neurons 'plantd'.*'planted'.*Available: final_layer, hidden, planted"),
    bad("unknown-experiment", "+experiment=dnd_rn50", r"unknown experiment.*'dnd_rn50_fc'.*Available:"),
    bad("unknown-in-sweep", "-m describer=netdissect,dnx", r"unknown describer 'dnx'.*'dnd'"),
    bad("unknown-metric-embedder", "metric=planted_concept metric.embedder=mpnett",
        r"embedder.*'mpnett'.*'mpnet'"),
    # -- unknown keys, also through +key= ----------------------------------------------------
    bad("unknown-key", "describer=netdissect describer.no_such_key=1", r"no_such_key.*quantile"),
    bad("unknown-key-plus", "describer=netdissect +describer.quantil=0.01",
        r"describer.*'quantil'.*Did you mean 'quantile'"),
    bad("unknown-key-plus-llm", "llm=openai +llm.temprature=0.5", r"llm.*'temprature'.*'temperature'"),
    bad("unknown-top-level", "batchsize=8", r"'batchsize'.*'batch_size'"),
    bad("unknown-top-level-plus", "+batchsize=8", r"'batchsize'.*'batch_size'"),
    bad("unknown-neurons-key", "neurons.unit=[0]", r"'unit'.*'units'"),
    bad("unknown-model-key", "model.train_imgs=5", r"'train_imgs'.*'train_images'"),
    bad("unknown-data-key", "data.imagenett=x", r"'imagenett'.*'imagenet'"),
    bad("option-of-the-suite", "describer=all describer.quantile=0.01",
        r"describer=all runs every default describer.*describer=<name>"),
    bad("option-of-the-suite-plus", "describer=all +describer.quantile=0.01",
        r"describer=all runs every default describer.*describer=<name>"),
    # -- secrets come from the environment only ----------------------------------------------
    bad("api-key-override", "+llm.api_key=sk-test-123", r"OPENAI_API_KEY"),
    bad("api-key-override-openai", "llm=openai +llm.api_key=sk-test-123", r"OPENAI_API_KEY"),
    bad("api-key-env-set", "+hydra.job.env_set.OPENAI_API_KEY=sk-test-123", r"environment"),
    bad("url-credentials", "llm=openai llm.base_url=https://user:pw@example.com/v1",
        r"credentials.*OPENAI_BASE_URL"),
    bad("missing-api-key", "describer=dnd llm=openai", r"OPENAI_API_KEY", subprocess=True),
    bad("base-url-not-http", "describer=dnd llm=openai llm.base_url=example.com/v1",
        r"base_url.*http"),
    # -- values of the wrong type or out of range: never clamped or ignored ----------------------
    bad("int-type", "batch_size=many", r"batch_size.*'many'.*[Ii]nteger", subprocess=True),
    bad("batch-size-zero", "batch_size=0", r"batch_size=0.*at least 1"),
    bad("batch-size-backend", "captioner.batch_size=-3", r"captioner\.batch_size=-3.*at least 1"),
    bad("workers-negative", "num_workers=-1", r"num_workers=-1.*at least 0"),
    bad("seed-type", "seed=abc", r"seed.*'abc'"),
    bad("bool-type", "progress=maybe", r"progress.*'maybe'.*[Bb]ool"),
    bad("device-unavailable", "device=cuda", r"device=cuda.*CUDA.*device=cpu", skip="cuda"),
    bad("device-invalid", "device=tpu", r"device=tpu.*auto, cpu, cuda"),
    bad("device-component", "captioner.device=cuda:3", r"captioner\.device=cuda:3.*CUDA",
        skip="cuda"),
    bad("float-type", "describer=netdissect describer.quantile=abc", r"quantile.*'abc'"),
    bad("quantile-range", "describer=netdissect describer.quantile=2", r"quantile.*\(0, 1\)"),
    bad("choice", "describer=dnd describer.scoring=xyz",
        r"scoring.*'xyz'.*mean, topk_squared, image_products, topk_compare"),
    bad("choice-published-format", "describer=published describer.path=x.csv describer.format=dndd",
        r"format.*'dndd'.*dnd, clip_dissect"),
    bad("probe-size-zero", "probe.size=0", r"size >= 1"),
    bad("max-calls-negative", "llm=openai llm.max_calls=-1", r"llm\.max_calls=-1.*at least 0"),
    bad("concurrency-zero", "llm=openai llm.max_concurrency=0", r"llm\.max_concurrency=0.*at least 1"),
    # -- the neuron selection ----------------------------------------------------------------
    bad("units-out-of-range", "neurons.units=[0,999]", r"unit 999 is out of range"),
    bad("units-garbage", "neurons.units=bogus", r"not understood.*first:K"),
    bad("units-first-bad", "neurons.units=first:x", r"first:<integer>"),
    bad("units-too-many", "neurons.units=first:500", r"first:500.*has \d+ units"),
    bad("units-empty", "neurons.units=[]", r"empty"),
    bad("layer-unknown", "neurons.layer=layer9", r"no layer 'layer9'.*layer4"),
    bad("units-file-missing", "neurons.units=file:{tmp}/nope.txt", r"no such file"),
    bad("units-file-undecodable", "neurons.units=file:{tmp}/units.txt", r"units\.txt.*UTF-8",
        files={"units.txt": UNDECODABLE}),
    bad("units-file-words", "neurons.units=file:{tmp}/units.txt", r"integer unit ids",
        files={"units.txt": b"cat dog\n"}),
    # -- files the job reads -------------------------------------------------------------------
    bad("published-no-path", "describer=published", r"needs `path`"),
    bad("published-missing", "describer=published describer.path={tmp}/nope.csv", r"does not exist"),
    bad("published-undecodable", "describer=published describer.path={tmp}/bad.csv",
        r"cannot read.*bad\.csv", files={"bad.csv": UNDECODABLE}),
    bad("published-columns", "describer=published describer.path={tmp}/bad.csv",
        r"needs column.*format", files={"bad.csv": WRONG_COLUMNS}),
    bad("describes-none", "describer=published describer.path={tmp}/other.csv",
        r"described none of the \d+ requested units", files={"other.csv": OTHER_UNITS}, subprocess=True),
    bad("shuffled-missing-source", "describer=shuffled describer.source=file:{tmp}/nope.csv",
        r"nope\.csv"),
    bad("plugin-broken", "plugins_dir={tmp}/plugins", r"failed to import.*broken",
        files={"plugins/broken.py": BROKEN_PLUGIN}, subprocess=True),
    bad("plugins-dir-missing", "plugins_dir={tmp}/nope", r"plugins_dir.*no such folder"),
    bad("config-dir-missing", "--config-dir {tmp}/nope", r"no such folder"),
    bad("missing-data", "+experiment=dnd_rn50_fc", r"set data\.\w+=.* or export DNDBENCH_\w+"),
    # -- run directory and cache -------------------------------------------------------------------
    bad("cache-dir-is-file", "cache_dir={tmp}/afile", r"cache_dir.*afile.*not a folder",
        files={"afile": b"x"}),
    bad("cache-dir-under-file", "cache_dir={tmp}/afile/cache", r"cache_dir.*afile.*not a folder",
        files={"afile": b"x"}),
    bad("cache-dir-unwritable", "cache_dir=/proc/dndbench-cache", r"cache_dir.*cannot create"),
    bad("cache-env-unwritable", "", r"DNDBENCH_CACHE.*cannot create",
        env={"DNDBENCH_CACHE": "/proc/dndbench-cache"}, subprocess=True),
    bad("run-dir-is-file", "hydra.run.dir={tmp}/afile", r"hydra\.run\.dir.*not a folder",
        files={"afile": b"x"}),
    bad("run-dir-under-file", "hydra.run.dir={tmp}/afile/run", r"hydra\.run\.dir.*not a folder",
        files={"afile": b"x"}),
    bad("run-dir-unwritable", "hydra.run.dir=/proc/dndbench-run", r"hydra\.run\.dir.*cannot create",
        subprocess=True),
    bad("sweep-dir-unwritable", "-m hydra.sweep.dir=/proc/dndbench-sweep describer=constant,oracle",
        r"hydra\.sweep\.dir.*cannot create"),
    bad("run-dir-read-only", "hydra.run.dir={tmp}/ro/run", r"hydra\.run\.dir.*cannot create",
        files={"ro/.keep": b""}, skip="root"),
    # -- the command line itself -------------------------------------------------------------
    bad("override-syntax", "describer=[", r"cannot parse override 'describer=\['"),
    bad("ambiguous-sweep", "describer=netdissect describer.quantile=0.01,0.02", r"Ambiguous value.*-m"),
    bad("sweep-bad-value", "-m describer=netdissect describer.quantile=0.01,oops", r"quantile.*'oops'"),
    bad("bad-flag", "--no-such-flag", r"unrecognized arguments: --no-such-flag", subprocess=True),
    bad("bad-cfg-choice", "--cfg jobb", r"--cfg.*'jobb'"),
]


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _argv(case: Bad, tmp: Path) -> list[str]:
    args = [a.replace("{tmp}", str(tmp)) for a in case.args]
    given = {a.lstrip("+~").split("=", 1)[0] for a in args}
    preset = any(a.startswith("+experiment=") for a in args)
    if "describer" not in given and not preset:
        args += [f"{k}={v}" for k, v in CHEAP.items() if k not in given]
    elif "metric" not in given and not preset:
        args.append(METRIC)
    if not ({"model", "probe", "captioner"} & given or preset):
        args += [f"{k}={v}" for k, v in SMALL.items() if k not in given]
    if "hydra.run.dir" not in given:
        args.append(f"hydra.run.dir={tmp / 'run'}")
    if "-m" in args and "hydra.sweep.dir" not in given:
        args.append(f"hydra.sweep.dir={tmp / 'sweep'}")
    return args


def _run(case: Bad, tmp: Path, monkeypatch: pytest.MonkeyPatch,
         capfd: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of the case's command line."""
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    env = {"DNDBENCH_CACHE": str(tmp / "cache"), **case.env}
    if case.subprocess:
        out = subprocess.run([sys.executable, "-m", "dndbench", *_argv(case, tmp)], cwd=tmp,
                             env={**os.environ, **env}, capture_output=True, text=True,
                             timeout=300)
        return out.returncode, out.stdout, out.stderr
    from dndbench.cli import main

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp)
    capfd.readouterr()
    code = main(_argv(case, tmp))
    captured = capfd.readouterr()
    return code, captured.out, captured.err


def _results_left(tmp: Path) -> list[str]:
    left = [str(p) for name in RESULT_FILES for p in tmp.rglob(name)]
    for folder in ("run", "sweep"):
        if (tmp / folder).is_dir():
            left.append(f"{tmp / folder} (the run directory was left behind)")
    return left


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_error_line(case: Bad, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capfd: pytest.CaptureFixture[str]) -> None:
    if case.skip == "cuda" and _cuda_available():
        pytest.skip("this machine has CUDA")
    if case.skip == "root" and os.geteuid() == 0:
        pytest.skip("root may write anywhere")
    for name, data in case.files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    if (tmp_path / "ro").is_dir():
        (tmp_path / "ro").chmod(0o555)
    code, stdout, stderr = _run(case, tmp_path, monkeypatch, capfd)
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr + stdout, stderr[-2000:]
    assert code == 2, (code, stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-2000:]
    assert "$VALUE" not in lines[0] and "$KEY" not in lines[0]
    assert re.search(case.expect.replace("{tmp}", re.escape(str(tmp_path))), lines[0]), lines[0]
    assert not _results_left(tmp_path), _results_left(tmp_path)


def test_connection_error_names_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that cannot be reached is named (without credentials) in the one-line error."""
    import socket

    from dndbench.backends.openai_llm import OpenAIConfig, OpenAILLM
    from dndbench.errors import BackendError

    with socket.socket() as sock:  # a free port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-key")
    llm = OpenAILLM(OpenAIConfig(name="openai", base_url=f"http://127.0.0.1:{port}/v1",
                                 max_retries=0, timeout_s=5))
    with pytest.raises(BackendError) as err:
        llm.chat([[{"role": "user", "content": "hello"}]])
    message = str(err.value)
    assert f"http://127.0.0.1:{port}/v1" in message and "\n" not in message
    assert "sk-test-not-a-key" not in message
