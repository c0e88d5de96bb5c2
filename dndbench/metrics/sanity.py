"""``python -m dndbench check-metrics``: sanity tests of every registered metric on the toy world.

After NeuronEval (Oikarinen, Yan & Weng, ICML 2025): a metric should score the true description
of a unit above a description that misses part of the truth (*missing-label* test) and above one
that adds an unrelated concept to it (*extra-label* test); we add a *constant-label* test (the
generic word "depiction" for every unit).  The units are the toy network's planted units (truth:
the planted concept) and its output units (truth: the class name).  Per metric and figure, a
test passes when the truth's mean is higher and a paired one-sided Wilcoxon signed-rank test over
the units gives p < alpha.  Variants per truth (see ``docs/metrics/sanity_checks.md``):

* missing -- a compositional truth ("red circle") loses its last part, a polysemantic one
  ("A or B") its last alternative; a single concept becomes a sibling of the same category
  ("yellow" -> "green");
* extra -- ``truth + " and " + c`` with ``c`` a concept of a category the truth does not use;
* constant -- "depiction".

A metric that does not apply on the toy world, or raises, gets one line in the table instead of
stopping the command.  Metric classes may define ``sanity_options(workdir, truths)`` (extra
options for this check, e.g. a synthetic annotations file), ``reference_figures`` (figures that do
not depend on the description) and ``lower_is_better`` (figures where smaller is better).
"""
from __future__ import annotations

import argparse
import ast
import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dndbench.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from dndbench.cache import Cache
    from dndbench.context import Context

log = logging.getLogger("dndbench")

TESTS = ("missing", "extra", "constant")
CONSTANT = "depiction"
ALPHA = 0.05
#: the toy world's offline backends (the default job's choices)
TOY_BACKENDS = {"captioner": "toy", "llm": "keyword", "text2image": "toy", "vlm": "toy",
                "embedder": "minilm"}


# -- description variants ---------------------------------------------------------------------
def _concept_category(name: str) -> str | None:
    from dndbench.toyworld.world import all_concepts

    return next((c.category for c in all_concepts() if c.name == name), None)


def variants(truth: str, rng: "np.random.Generator") -> dict[str, str]:
    """The four descriptions of a unit whose truth is ``truth``: ``truth``, ``missing``,
    ``extra`` and ``constant``."""
    from dndbench.toyworld.synonyms import concept_parts
    from dndbench.toyworld.world import CATEGORIES

    alternatives = concept_parts(truth)
    parts = [p for alt in alternatives for p in alt]
    if len(alternatives) > 1:
        missing = " or ".join(" ".join(alt) for alt in alternatives[:-1])
    elif len(parts) > 1:
        missing = " ".join(parts[:-1])
    else:
        category = _concept_category(truth)
        pool = ([n for n in CATEGORIES[category] if n != truth] if category else
                [n for names in CATEGORIES.values() for n in names if n != truth])
        missing = pool[int(rng.integers(len(pool)))]
    used = {_concept_category(p) for p in parts}
    others = [n for cat, names in CATEGORIES.items() if cat not in used for n in names]
    extra = f"{truth} and {others[int(rng.integers(len(others)))]}"
    return {"truth": truth, "missing": missing, "extra": extra, "constant": CONSTANT}


# -- the toy contexts -------------------------------------------------------------------------
@dataclass
class ToyCase:
    """One toy context and the truth of each of its units."""

    ctx: "Context"
    truths: dict[int, str]


def toy_cases(cache: "Cache", *, probe_size: int = 500, device: str = "cpu", seed: int = 0,
              model_options: dict[str, Any] | None = None) -> list[ToyCase]:
    """The toy network's planted units (one case per layer) and its output units."""
    from dndbench.context import Context
    from dndbench.models.base import MODELS
    from dndbench.probes.base import PROBES
    from dndbench.registry import registry_for

    model = MODELS.create("toynet", **(model_options or {}))
    model.cache = cache
    probe = PROBES.create("toyworld", size=probe_size)
    probe.cache = cache
    backends = {kind: registry_for(kind).config(name) for kind, name in TOY_BACKENDS.items()}
    layers = [n for n, _ in model.network(pretrained=False).named_children()]
    truths_by_layer = {layer: model.planted_concepts(layer) for layer in layers}
    names = model.class_names() or []
    truths_by_layer[model.final_layer] = dict(enumerate(names))
    return [ToyCase(Context(model=model, probe=probe, layer=layer, units=sorted(truths), cache=cache,
                            device=device, seed=seed, progress=False, backends=dict(backends)),
                    truths)
            for layer, truths in truths_by_layer.items() if truths]


def description_frame(labels: dict[int, str]) -> "pd.DataFrame":
    """A describer's table with one description per unit."""
    import pandas as pd

    return pd.DataFrame({"unit": list(labels), "label": list(labels.values()),
                         "label_2": "", "label_3": "", "score": 0.0})


# -- one metric -------------------------------------------------------------------------------
@dataclass
class SanityRow:
    """The outcome for one metric figure (or one line for a metric that could not be tested)."""

    metric: str
    figure: str = ""
    status: str = "tested"
    n: int = 0
    truth: float = float("nan")
    means: dict[str, float] = field(default_factory=dict)
    p_values: dict[str, float] = field(default_factory=dict)
    passed: dict[str, bool] = field(default_factory=dict)


def one_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


def paired_test(truth: "np.ndarray", other: "np.ndarray", alpha: float) -> tuple[float, bool]:
    """One-sided Wilcoxon signed-rank p-value of truth > other, and whether the test passes."""
    import numpy as np
    from scipy.stats import wilcoxon

    diff = truth - other
    if diff.size == 0 or not np.any(diff != 0):
        return 1.0, False
    p = float(wilcoxon(diff, alternative="greater").pvalue)
    return p, bool(diff.mean() > 0 and p < alpha)


def check_metric(name: str, cases: list[ToyCase], workdir: Path, *, options: dict[str, Any] | None = None,
                 alpha: float = ALPHA, seed: int = 0) -> list[SanityRow]:
    """Run the three tests on one registered metric; never raises (errors become a row)."""
    import numpy as np
    import pandas as pd

    from dndbench.metrics.base import METRICS

    try:
        cls = METRICS.get(name)
        opts = dict(options or {})
        hook = getattr(cls, "sanity_options", None)
        if callable(hook):
            truths = {case.ctx.layer: case.truths for case in cases}
            opts = {**hook(workdir / name, truths), **opts}
        metric = METRICS.create(name, **opts)
        applicable = [case for case in cases if metric.applies_to(case.ctx)]
        if not applicable:
            return [SanityRow(name, status="not applicable on the toy world")]
        values: dict[str, list[pd.DataFrame]] = {kind: [] for kind in ("truth", *TESTS)}
        for case in applicable:
            per_unit = {u: variants(t, np.random.default_rng([seed, i]))
                        for i, (u, t) in enumerate(sorted(case.truths.items()))
                        if u in case.ctx.units}
            for kind in values:
                scores = metric.score(description_frame({u: v[kind] for u, v in per_unit.items()}),
                                      case.ctx)
                values[kind].append(scores[["unit", "metric", "value"]].assign(layer=case.ctx.layer))
        tables = {k: pd.concat(v, ignore_index=True) for k, v in values.items()}
    except Exception as exc:  # a broken metric is reported, not fatal
        log.debug("metric %s failed its sanity check", name, exc_info=True)
        return [SanityRow(name, status=f"error: {one_line(exc)}")]
    reference = set(getattr(metric, "reference_figures", ()))
    lower = set(getattr(metric, "lower_is_better", ()))
    rows = []
    for figure in sorted(set(tables["truth"]["metric"]) - reference):
        truth = _values(tables["truth"], figure)
        row = SanityRow(name, figure, n=len(truth), truth=float(truth.mean()))
        for test in TESTS:
            other = _values(tables[test], figure)
            common = truth.index.intersection(other.index)
            a, b = truth.loc[common].to_numpy(), other.loc[common].to_numpy()
            if figure in lower:
                a, b = -a, -b
            row.means[test] = float(other.loc[common].mean()) if len(common) else float("nan")
            row.p_values[test], row.passed[test] = paired_test(a, b, alpha)
        rows.append(row)
    if not rows:
        return [SanityRow(name, status="no figures scored on the toy world")]
    return rows


def _values(table: "pd.DataFrame", figure: str) -> "pd.Series":
    rows = table[table["metric"] == figure].dropna(subset=["value"])
    return rows.set_index(["layer", "unit"])["value"].astype(float)


# -- the command ------------------------------------------------------------------------------
def run_checks(metrics: list[str] | None = None, *, cache: "Cache | None" = None,
               probe_size: int = 500, model_options: dict[str, Any] | None = None,
               metric_options: dict[str, dict[str, Any]] | None = None, alpha: float = ALPHA,
               seed: int = 0, device: str = "cpu") -> list[SanityRow]:
    """Sanity rows of ``metrics`` (default: every registered metric) on the toy world."""
    from dndbench.cache import Cache
    from dndbench.metrics.base import METRICS

    names = metrics or METRICS.names()
    for name in names:
        METRICS.entry(name)  # unknown names fail here, with suggestions
    cases = toy_cases(cache or Cache(), probe_size=probe_size, device=device, seed=seed,
                      model_options=model_options)
    rows: list[SanityRow] = []
    with tempfile.TemporaryDirectory(prefix="dndbench-sanity-") as tmp:
        for name in names:
            log.info("sanity-checking metric %s", name)
            rows.extend(check_metric(name, cases, Path(tmp), options=(metric_options or {}).get(name),
                                     alpha=alpha, seed=seed))
    return rows


def to_table(rows: list[SanityRow], alpha: float = ALPHA) -> str:
    """A Markdown table: per metric figure, the truth's mean and each test's variant mean, p and verdict."""
    head = ["metric", "figure", "n", "truth"] + [f"{t} (mean, p)" for t in TESTS] + ["verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        if r.status != "tested":
            lines.append(f"| {r.metric} | — | 0 | — | " + " | ".join(["—"] * len(TESTS))
                         + f" | {r.status} |")
            continue
        cells = [f"{'PASS' if r.passed[t] else 'FAIL'} {r.means[t]:.3f}, p={r.p_values[t]:.2g}"
                 for t in TESTS]
        failed = [t for t in TESTS if not r.passed[t]]
        verdict = "passes all" if not failed else "fails " + ", ".join(failed)
        lines.append(f"| {r.metric} | {r.figure} | {r.n} | {r.truth:.3f} | " + " | ".join(cells)
                     + f" | {verdict} |")
    lines.append("")
    lines.append(f"PASS: the true description scores higher than the variant (mean over units) "
                 f"and a paired one-sided Wilcoxon signed-rank test gives p < {alpha:g}.")
    return "\n".join(lines)


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_settings(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["planted_concept.embedder=mpnet"]`` -> ``{"planted_concept": {"embedder": "mpnet"}}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        metric, dot, option = key.partition(".")
        if not (sep and dot and metric and option):
            raise ConfigError(f"check-metrics --set {item!r}: expected METRIC.OPTION=VALUE")
        out.setdefault(metric, {})[option] = _value(value)
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m dndbench check-metrics``."""
    from dndbench.cache import Cache

    parser = argparse.ArgumentParser(
        prog="dndbench check-metrics",
        description="Missing-label, extra-label and constant-label sanity tests of every "
                    "registered metric on the toy world (NeuronEval, Oikarinen et al. 2025).")
    parser.add_argument("--metrics", default="", help="comma-separated metric names (default: all)")
    parser.add_argument("--probe-size", type=int, default=500, help="toy probe images (default 500)")
    parser.add_argument("--toynet-train-images", type=int, default=None,
                        help="train a smaller toy network (default: the standard one)")
    parser.add_argument("--toynet-epochs", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="METRIC.OPTION=VALUE",
                        help="a metric option, e.g. final_layer_bertscore.path=/models/roberta-large")
    parser.add_argument("--alpha", type=float, default=ALPHA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", default="", help="default: $DNDBENCH_CACHE or ~/.cache/dndbench")
    parser.add_argument("--json", default="", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model_options = {k: v for k, v in (("train_images", args.toynet_train_images),
                                       ("epochs", args.toynet_epochs)) if v is not None}
    rows = run_checks([m.strip() for m in args.metrics.split(",") if m.strip()] or None,
                      cache=Cache(args.cache_dir or None), probe_size=args.probe_size,
                      model_options=model_options, metric_options=parse_settings(args.set),
                      alpha=args.alpha, seed=args.seed, device=args.device)
    print(to_table(rows, args.alpha))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
        print(f"written: {path}")
    return 0
