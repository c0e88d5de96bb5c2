"""``python -m dndbench backend-ladder``: every describer at several backend strengths.

A benchmark whose ranking follows its backends measures the backends, not the describers.  The
ladder runs the same job (the default job, or the one the given overrides describe) once per
*strength* — by default the toy world's

* ``oracle``: ``captioner=oracle vlm=oracle`` (references that read the ground truth,
  :mod:`dndbench.toyworld.oracle_backends`),
* ``trained``: ``captioner=toy vlm=toy`` (the toy track's defaults),
* ``weak``: ``captioner=toy_weak vlm=toy_weak`` (the trained ones with half of their outputs
  corrupted, :mod:`dndbench.toyworld.weak_backends`)

— each into ``OUT/<strength>/`` (one ordinary run folder; all strengths share the cache, so the
describers that use none of the changed backends are described once), then prints each
strength's leaderboard, one table of every setting's mean per metric at each strength, and
Kendall's τ between the describers' rankings at every pair of strengths (per metric, on the
settings ranked at both; τ = 1: the backends do not change the ranking).  ``OUT/ladder.md``
and ``OUT/ladder.json`` keep the same.

Settings are matched across strengths by their label without the backends suffix
(``dnd[captioner=oracle, vlm=oracle]`` is ``dnd`` at the oracle strength).  The metrics see the
strength's backends too: ``simulation`` predicts activations with the run's ``vlm``, so at the
oracle strength its simulator is the oracle; the ground-truth metrics (``planted_concept``,
``final_layer_similarity``) use no captioner or VLM.

    python -m dndbench backend-ladder --out ladder/ neurons=planted
    python -m dndbench backend-ladder --strength strong="captioner=oracle" --strength default=""
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dndbench.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

#: the default rungs, strongest first: name -> overrides
STRENGTHS: dict[str, list[str]] = {
    "oracle": ["captioner=oracle", "vlm=oracle"],
    "trained": ["captioner=toy", "vlm=toy"],
    "weak": ["captioner=toy_weak", "vlm=toy_weak"],
}
#: the groups a ranking is compared within
BY = ["model", "layer", "neuron_set", "probe", "metric"]
_SUFFIX = re.compile(r"\[(?:captioner|llm|text2image|vlm|embedder)=.*\]$")


def base_setting(label: str) -> str:
    """A setting label without its backends suffix (``dnd[vlm=oracle]`` -> ``dnd``)."""
    return _SUFFIX.sub("", str(label))


def parse_strengths(items: list[str] | None) -> dict[str, list[str]]:
    """``NAME=OVERRIDES`` items (overrides split like a shell line) -> ``{name: overrides}``;
    none given: :data:`STRENGTHS`."""
    if not items:
        return {name: list(overrides) for name, overrides in STRENGTHS.items()}
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, rest = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(f"--strength {item!r}: write NAME=OVERRIDES, e.g. "
                              f"oracle=\"captioner=oracle vlm=oracle\" (NAME: letters, digits, _.-)")
        if name in out:
            raise ConfigError(f"--strength {name!r} is given twice")
        out[name] = shlex.split(rest)
    if len(out) < 2:
        raise ConfigError("a ladder needs at least two strengths (--strength NAME=OVERRIDES ...)")
    return out


def run_strengths(strengths: dict[str, list[str]], overrides: list[str], out: Path,
                  runner: Any = None) -> dict[str, Path]:
    """Run the job once per strength into ``out/<name>``; return the run folders.  ``runner``
    (default :func:`dndbench.cli.main`) takes an argument list and returns an exit status."""
    if runner is None:
        from dndbench.cli import main as runner
    folders = {}
    for name, extra in strengths.items():
        folder = out / name
        argv = [*extra, *overrides, f"hydra.run.dir={folder}"]
        print(f"== strength {name}: python -m dndbench {' '.join(argv)}", flush=True)
        started = time.perf_counter()
        status = runner(argv)
        if status:
            raise ConfigError(f"strength {name!r}: the job failed (exit status {status}); "
                              f"its command was python -m dndbench {shlex.join(argv)}")
        print(f"== strength {name}: done in {time.perf_counter() - started:.1f}s", flush=True)
        folders[name] = folder
    return folders


def means_table(folders: dict[str, Path]) -> "pd.DataFrame":
    """One row per (strength, group, setting): the setting's mean over the units it scored (the
    strength's leaderboard means, without its pairwise tests), ``n``, ``role`` and ``base``, the
    label without the backends suffix."""
    import pandas as pd

    from dndbench.results.leaderboard import load_scores, matched_groups

    rows = []
    for name, folder in folders.items():
        for key, group, _ in matched_groups(load_scores([folder])):
            roles = (group["role"].fillna("method").groupby(group["setting"]).first()
                     if "role" in group else None)
            for setting, values in group.groupby("setting", sort=True)["value"]:
                values = values.astype(float).dropna()
                rows.append({**key, "strength": name, "setting": str(setting),
                             "base": base_setting(str(setting)),
                             "role": str(roles[setting]) if roles is not None else "method",
                             "mean": float(values.mean()) if len(values) else float("nan"),
                             "n": int(len(values))})
    if not rows:
        raise ConfigError("the ladder's runs scored nothing: no metric applies to their units")
    return pd.DataFrame(rows)


def agreement(means: "pd.DataFrame") -> "pd.DataFrame":
    """Kendall's τ between the strengths' rankings of the settings, per group and metric."""
    from dndbench.results.statistics import kendall_agreement

    table = kendall_agreement(means, BY, metric="strength", setting="base", value="mean")
    return table.rename(columns={"metric_a": "strength_a", "metric_b": "strength_b"})


def _fmt(value: Any, spec: str = ".3f") -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "—" if number != number else format(number, spec)


def markdown(means: "pd.DataFrame", taus: "pd.DataFrame", strengths: dict[str, list[str]]) -> str:
    """The ladder's tables: means per strength (rank in brackets), then Kendall's τ."""
    from dndbench.results.leaderboard import md_cell
    from dndbench.results.statistics import tied_ranks

    names = list(strengths)
    lines = ["## Backend-strength ladder", ""]
    lines += [f"* **{name}**: `{' '.join(strengths[name]) or '(the defaults)'}`" for name in names]
    lines.append("")
    for key, group in means.groupby(BY, sort=True, dropna=False):
        model, layer, _, probe, metric = key
        lines += [f"### {md_cell(metric)} — {md_cell(model)}.{md_cell(layer)} (probe "
                  f"{md_cell(probe)})", "",
                  "| setting | role | " + " | ".join(md_cell(n) for n in names) + " |",
                  "|---|---|" + "---:|" * len(names)]
        ranks = {}
        for n in names:
            mine = group[group.strength == n]
            ranks[n] = dict(zip(mine.base, tied_ranks(mine["mean"])))
        first = group[group.strength == names[0]] if (group.strength == names[0]).any() else group
        order = list(dict.fromkeys([*first.sort_values("mean", ascending=False).base,
                                    *group.base]))
        for base in order:
            rows = group[group.base == base]
            role = str(rows["role"].iloc[0]) if "role" in rows else "method"
            cells = []
            for n in names:
                mine = rows[rows.strength == n]
                cells.append(f"{_fmt(mine['mean'].iloc[0])} ({ranks[n][base]})" if len(mine)
                             else "—")
            lines.append(f"| {md_cell(base)} | {md_cell(role)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["### Kendall's τ between the strengths' rankings", "",
              "| metric | model.layer | strength a | strength b | settings | τ | p |",
              "|---|---|---|---|---:|---:|---:|"]
    for row in taus.to_dict("records"):
        lines.append(f"| {md_cell(row['metric'])} | {md_cell(row['model'])}."
                     f"{md_cell(row['layer'])} | {md_cell(row['strength_a'])} | "
                     f"{md_cell(row['strength_b'])} | {row['n_settings']} | "
                     f"{_fmt(row['tau'], '.2f')} | {_fmt(row['p'], '.3g')} |")
    lines += ["", "Ranks in brackets (1 = highest mean at that strength; equal means share a "
              "rank); τ = 1: both strengths rank the settings identically.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m dndbench backend-ladder [--out DIR] [--strength NAME=OVERRIDES ...]
    [overrides ...]``."""
    from dndbench.results.records import write_text

    parser = argparse.ArgumentParser(
        prog="python -m dndbench backend-ladder",
        description="Run every describer at several backend strengths (oracle, trained, weak) "
                    "and compare their rankings (Kendall's tau).")
    parser.add_argument("overrides", nargs="*", help="overrides of the job (neurons=planted, ...)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: outputs/ladder-<date>-<time>)")
    parser.add_argument("--strength", action="append", default=None, metavar="NAME=OVERRIDES",
                        help="a rung of the ladder (repeat; default: "
                             + "; ".join(f"{k}={' '.join(v)}" for k, v in STRENGTHS.items()) + ")")
    args = parser.parse_args(argv)
    strengths = parse_strengths(args.strength)
    for item in args.overrides:
        if item.startswith("hydra.run.dir=") or item in ("-m", "--multirun"):
            raise ConfigError(f"backend-ladder: {item!r} is set by the ladder (use --out)")
    out = args.out or Path("outputs") / time.strftime("ladder-%Y-%m-%d-%H-%M-%S")
    folders = run_strengths(strengths, list(args.overrides), out)
    means = means_table(folders)
    taus = agreement(means)
    text = markdown(means, taus, strengths)
    for name, folder in folders.items():
        board = folder / "leaderboard.md"
        if board.is_file():
            print(f"\n## Leaderboard at strength {name}\n")
            print(board.read_text())
    print(text)
    write_text(out / "ladder.md", text + "\n")
    record = {"strengths": strengths, "runs": {k: str(v) for k, v in folders.items()},
              "means": json.loads(means[[*BY, "strength", "setting", "base", "mean", "n"]]
                                  .to_json(orient="records")),
              "kendall_tau": json.loads(taus.to_json(orient="records"))}
    write_text(out / "ladder.json", json.dumps(record, indent=2))
    print(f"wrote {out / 'ladder.md'} and {out / 'ladder.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
