"""Secrets are never written: a key planted through every route (the environment, a server URL
with credentials, ``+llm.api_key=``, Hydra's ``env_set``, an ordinary option's value) appears in
no file of the run, sweep, cache or log folders, and the routes that would write it fail first."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI

#: a describer that asks the run's LLM about each unit, and a metric that needs no model
PLUGIN = textwrap.dedent('''
    from dataclasses import dataclass

    import pandas as pd

    from dndbench.describers.base import DESCRIBERS, Describer, DescriberConfig, Description
    from dndbench.metrics.base import METRICS, Metric


    @DESCRIBERS.register("ask_llm")
    class AskLLM(Describer):
        """Labels each unit with the LLM's answer."""

        needs_weights = False
        needs_probe = False
        in_default_suite = False
        uses_backends = ("llm",)

        @dataclass
        class Config(DescriberConfig):
            pass

        def describe(self, ctx):
            chats = [[{"role": "user", "content": f"unit {u}"}] for u in ctx.units]
            return [Description(unit=u, label=a)
                    for u, a in zip(ctx.units, ctx.backend("llm").chat(chats))]


    @METRICS.register("label_length")
    class LabelLength(Metric):
        """The length of each label."""

        def score(self, descriptions, ctx):
            return pd.DataFrame({"unit": descriptions["unit"], "metric": "label_length",
                                 "value": descriptions["label"].str.len().astype(float)})
''')
JOB = ["describer=ask_llm", "llm=openai", "metric=label_length", "neurons.units=[0,1]",
       "llm.max_retries=0"]
ENV_KEY = "sk-planted-env-key-4f1e9a"
URL_PASSWORD = "planted-url-password-77c1"
CLI_PASSWORD = "planted-cli-password-91d2"
OPTION_KEY = "sk-planted-option-key-0b3c"
ENV_SET_KEY = "sk-planted-env-set-key-5e6f"
ALL = (ENV_KEY, URL_PASSWORD, CLI_PASSWORD, OPTION_KEY, ENV_SET_KEY)


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    return subprocess.run([sys.executable, "-m", "dndbench", *args], cwd=cwd,
                          env={**full, **env}, capture_output=True, text=True, timeout=600)


def leaks(root: Path) -> list[str]:
    """``file: secret`` for every planted secret found in any file under ``root``."""
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {s}" for s in ALL if s.encode() in data]
    return found


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "ask_llm.py").write_text(PLUGIN)
    return tmp_path


def test_secrets_from_the_environment_are_used_and_never_written(folder: Path) -> None:
    with FakeOpenAI() as server:
        url = server.base_url.replace("http://", f"http://planted-user:{URL_PASSWORD}@")
        env = {"DNDBENCH_CACHE": str(folder / "cache"), "OPENAI_API_KEY": ENV_KEY,
               "OPENAI_BASE_URL": url}
        single = run([*JOB, f"hydra.run.dir={folder / 'run'}"], folder, env)
        sweep = run(["-m", *JOB[:-2], "neurons.units=[0],[1]", "llm.max_retries=0",
                     f"hydra.sweep.dir={folder / 'sweep'}"], folder, env)
    for out in (single, sweep):
        assert out.returncode == 0, out.stderr[-3000:]
        assert not [s for s in ALL if s in out.stdout + out.stderr]
    assert len(server.requests) == 2  # the sweep's answers came from the call cache
    assert server.requests[0]["auth"]  # the key (or the URL's credentials) was sent
    labels = (folder / "run" / "descriptions.csv").read_text()
    assert "echo: unit 0" in labels
    assert (folder / "run" / ".hydra" / "config.yaml").is_file()
    assert (folder / "sweep" / "multirun.yaml").is_file()
    assert (folder / "cache" / "calls" / "calls.sqlite").is_file()
    assert not leaks(folder), leaks(folder)


@pytest.mark.parametrize("args, env, message", [
    (["llm.base_url=http://planted-user:" + CLI_PASSWORD + "@127.0.0.1:9/v1"], {},
     "credentials.*OPENAI_BASE_URL"),
    (["+llm.api_key=" + OPTION_KEY], {}, "OPENAI_API_KEY"),
    (["+hydra.job.env_set.OPENAI_API_KEY=" + ENV_SET_KEY], {}, "environment"),
    (["describer.label_as=" + ENV_KEY], {"OPENAI_API_KEY": ENV_KEY}, r"\$OPENAI_API_KEY"),
], ids=["url-credentials", "api-key-option", "hydra-env-set", "secret-as-a-value"])
def test_a_secret_on_the_command_line_is_refused_before_anything_is_written(
        folder: Path, args: list[str], env: dict[str, str], message: str) -> None:
    import re

    out = run([*JOB, *args, f"hydra.run.dir={folder / 'run'}"], folder,
              {"DNDBENCH_CACHE": str(folder / "cache"), "OPENAI_API_KEY": "sk-not-planted",
               **env})
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.startswith("error: ") and re.search(message, out.stderr), out.stderr
    assert not [s for s in ALL if s in out.stdout + out.stderr]
    assert not (folder / "run").exists()
    assert not leaks(folder), leaks(folder)


def test_log_lines_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The job's log handlers drop URL credentials and the environment's secret values."""
    import logging

    from dndbench.redact import RedactingFilter

    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    record = logging.LogRecord("httpx", logging.INFO, __file__, 1,
                               "HTTP Request: POST %s key=%s", (
                                   f"https://u:{URL_PASSWORD}@host/v1", ENV_KEY), None)
    RedactingFilter().filter(record)
    assert record.getMessage() == "HTTP Request: POST https://host/v1 key=***"
