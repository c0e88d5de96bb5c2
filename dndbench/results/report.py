"""``report.html``: the page a researcher reads to judge the methods of a run (or of a merge).

It opens with the leaderboards (every metric, 95 % CIs, significance against the best method,
chance levels, per-unit costs, roles; each table sortable by clicking its headers), the metrics'
agreement and four figures (the leaderboard chart, per-unit score distributions, metric against
metric, quality against cost), then one card per unit: its top probe images, the same images
under the unit's heatmap, attention crops, and every setting's labels 1–3 with its per-unit
scores and ✓ / ✗ against the ground truth where there is one; DnD's captions, candidates with
their step-3 scores and generated images, Network Dissection's IoU and mask.  Cards can be
filtered (layer, setting, failures, disagreement, text), sorted (unit, a metric, disagreement
between methods, failures) and paged; nothing is capped.

The page is built with jinja2 templates (``templates/``, every string autoescaped) and a little
plain JavaScript; figures are inlined, unit pictures are small JPEGs in ``report_files/`` beside
the page (:mod:`dndbench.results.report_media`).  Without JavaScript every card is shown.

* :func:`write_run_report` — a run directory's page (``python -m dndbench``, cached runs and
  ``published`` runs too; without a probe the cards show labels and scores only);
* :func:`write_merged_report` — one page for many run directories
  (``python -m dndbench leaderboard DIR... --out PREFIX --html``), with the pictures the run
  directories have, copied into ``PREFIX_files/``.
"""
from __future__ import annotations

import base64
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from dndbench.cache import atomic_path

if TYPE_CHECKING:
    import pandas as pd

    from dndbench.context import Context
    from dndbench.registry import ComponentConfig
    from dndbench.results.report_media import UnitMedia

log = logging.getLogger("dndbench")

TEMPLATES = Path(__file__).parent / "templates"
REPORT = "report.html"
PAGE_SIZE = 50


@dataclass
class Standings:
    """What the page shows of a leaderboard: the table
    (:func:`dndbench.results.leaderboard.leaderboard`), its pairwise comparisons
    (:func:`~dndbench.results.leaderboard.pairs_table`) and the metrics' agreement
    (:func:`~dndbench.results.leaderboard.metric_agreement`)."""

    table: "pd.DataFrame"
    pairs: "pd.DataFrame | None" = None
    agreement: "pd.DataFrame | None" = None


def leaderboard_chart(table: "pd.DataFrame", path: Path) -> Path:
    """Write the leaderboard chart (each setting's mean and 95 % CI per metric) as a PNG."""
    from dndbench.results.report_plots import leaderboard_chart as chart

    with atomic_path(path) as tmp:
        tmp.write_bytes(chart(table))
    return path


# -- rendering -----------------------------------------------------------------------------------
def _fmt(value: Any, spec: str = ".3f") -> str:
    """A number for the page; an em dash for None / NaN."""
    if value is None:
        return "—"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "—" if number != number else format(number, spec)


def environment() -> Any:
    """The jinja2 environment of the report templates (autoescape on for everything)."""
    import jinja2

    from dndbench.results.report_cards import cost_header

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    env.globals["cost_header"] = cost_header
    env.filters["pct"] = lambda v: _fmt(None if v is None else 100 * float(v), ".0f") + (
        "" if v is None else " %")
    env.filters["sortval"] = lambda v: "" if v is None else repr(float(v))
    return env


def static_files() -> dict[str, Any]:
    """The page's stylesheet and script (trusted files of the package, inlined verbatim)."""
    from markupsafe import Markup

    return {"css": Markup((TEMPLATES / "report.css").read_text(encoding="utf-8")),
            "js": Markup((TEMPLATES / "report.js").read_text(encoding="utf-8"))}


def _data_uri(png: bytes | None) -> str:
    return "" if png is None else "data:image/png;base64," + base64.b64encode(png).decode()


def figures(table: "pd.DataFrame | None", scores: "pd.DataFrame") -> list[dict[str, str]]:
    """The page's figures as inline PNGs, with their titles (those that have data)."""
    from dndbench.results import report_plots as plots

    made: list[tuple[str, str, Callable[[], bytes | None]]] = []
    if table is not None and len(table):
        made.append(("Leaderboard", "Each setting's mean with its 95 % bootstrap CI.",
                     lambda: plots.leaderboard_chart(table, dpi=plots.DPI)))
    if len(scores):
        made.append(("Per-unit scores", "Every unit's score per setting (box: quartiles).",
                     lambda: plots.score_distributions(scores)))
        made.append(("Metric against metric", "Each point is one unit described by one "
                     "setting.", lambda: plots.metric_pairs(scores)))
    if table is not None and len(table):
        made.append(("Quality against cost", "Each setting's mean against its describer "
                     "seconds per unit (the shared probe pass excluded).",
                     lambda: plots.quality_vs_cost(table)))
    out = []
    for title, caption, make in made:
        uri = _data_uri(make())
        if uri:
            out.append({"title": title, "caption": caption, "src": uri})
    return out


def render(descriptions: "pd.DataFrame", scores: "pd.DataFrame", standings: Standings | None,
           media: Sequence["UnitMedia"], title: str, meta: dict[str, Any],
           links: Sequence[str] = ()) -> str:
    """The report page as a string."""
    from dndbench.results.report_cards import agreement_matrices, boards, cards, overviews

    by_unit = {(m.model, m.layer, int(m.unit)): m for m in media}
    unit_cards = cards(descriptions, scores, by_unit)
    table = standings.table if standings is not None and len(standings.table) else None
    board_list = boards(table, standings.pairs) if table is not None and standings else []
    agreement = (agreement_matrices(standings.agreement)
                 if board_list and standings and standings.agreement is not None else [])
    settings = list(dict.fromkeys(str(s) for s in descriptions.get("setting", [])))
    metrics = list(dict.fromkeys(str(m) for m in scores.get("metric", [])))
    layers = list(dict.fromkeys(c.where for c in unit_cards))
    return environment().get_template("report.html.j2").render(
        static=static_files(), title=title, meta=meta, links=list(links), boards=board_list,
        overviews=overviews(board_list), agreement=agreement,
        figures=figures(table, scores), cards=unit_cards, settings=settings, metrics=metrics,
        layers=layers, page_size=PAGE_SIZE, has_images=any(m.top for m in media))


def _write_html(path: Path, page: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def _meta(descriptions: "pd.DataFrame", **extra: Any) -> dict[str, Any]:
    from dndbench.results.records import package_versions

    units = descriptions[["model", "layer", "unit"]].drop_duplicates() if len(descriptions) else []
    return {"written": time.strftime("%Y-%m-%d %H:%M"), "units": len(units),
            "settings": int(descriptions["setting"].nunique()) if len(descriptions) else 0,
            "version": package_versions().get("dndbench", "?"), **extra}


# -- a run ---------------------------------------------------------------------------------------
def write_run_report(run_dir: Path, descriptions: "pd.DataFrame", scores: "pd.DataFrame",
                     standings: Standings | None, contexts: Sequence["Context"] = (),
                     configs: dict[str, "ComponentConfig"] | None = None,
                     images: bool = True) -> Path:
    """Write ``run_dir/report.html`` (and its pictures under ``run_dir/report_files``).

    ``contexts`` are the run's layers (for pictures and ground truth); ``images=False`` when no
    describer used the probe (a ``published`` run): the cards then show labels and scores only.
    ``configs`` maps setting names to describer configs (DnD's prompts, for its images).
    """
    from dndbench.results.report_media import read_media, write_media

    run_dir = Path(run_dir)
    t = time.perf_counter()
    media: list[UnitMedia] = []
    if contexts:
        try:
            media = write_media(contexts, descriptions, configs or {}, run_dir, images=images)
        except Exception as exc:  # the results are written: a picture must not lose the page
            log.warning("report: unit pictures left out (%s: %s)", type(exc).__name__, exc)
            media = write_media(contexts, descriptions, configs or {}, run_dir, images=False)
    else:
        media = read_media(run_dir)
    model = str(descriptions["model"].iloc[0]) if len(descriptions) else "run"
    layers = list(dict.fromkeys(descriptions["layer"].astype(str))) if len(descriptions) else []
    probe = str(descriptions["probe"].iloc[0]) if len(descriptions) else ""
    title = f"{model}.{layers[0]}" if len(layers) == 1 else f"{model} ({', '.join(layers)})"
    meta = _meta(descriptions, run=run_dir.name, probe=probe,
                 images="yes" if any(m.top for m in media) else "no probe images in this run")
    links = [n for n in ("leaderboard.md", "leaderboard.csv", "pairs.csv",
                         "metric_agreement.csv", "descriptions.csv", "scores.csv", "costs.csv",
                         "summary.json", "run.json") if (run_dir / n).is_file()]
    path = _write_html(run_dir / REPORT, render(descriptions, scores, standings, media, title,
                                                meta, links))
    log.info("report: %s (%.1f s)", path, time.perf_counter() - t)
    return path


# -- a merge -------------------------------------------------------------------------------------
def load_descriptions(dirs: Sequence[Path]) -> "pd.DataFrame":
    """The descriptions tables of many runs (later runs of the same setting and unit win)."""
    import pandas as pd

    from dndbench.spreadsheet import read_descriptions

    frames = [read_descriptions(d / "descriptions.csv").assign(run=str(d))
              for d in dirs if (d / "descriptions.csv").is_file()]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=["setting", "describer", "model", "layer", "unit", "label"])
    merged = pd.concat(frames, ignore_index=True)
    return merged.drop_duplicates(subset=["setting", "model", "layer", "unit"], keep="last")


def merged_media(dirs: Sequence[Path], files: Path, html_dir: Path) -> list["UnitMedia"]:
    """Every run's unit pictures, copied under ``files`` and relative to ``html_dir``; a unit
    seen by several runs gets the first run's strips and every run's masks and DnD images."""
    from dndbench.results.report_media import read_media

    merged: dict[tuple[str, str, int], UnitMedia] = {}
    for n, run_dir in enumerate(dirs):
        for item in read_media(run_dir):
            moved = _copy_media(item, run_dir, files / f"run{n}", html_dir)
            key = (moved.model, moved.layer, int(moved.unit))
            if key not in merged:
                merged[key] = moved
                continue
            first = merged[key]
            for name in ("truth", "top", "heat", "crops", "crops_from"):
                if not getattr(first, name):
                    setattr(first, name, getattr(moved, name))
            first.masks = {**moved.masks, **first.masks}
            first.generated = {**moved.generated, **first.generated}
    return list(merged.values())


def _copy_media(item: "UnitMedia", run_dir: Path, target: Path, html_dir: Path) -> "UnitMedia":
    def move(relative: str) -> str:
        source = run_dir / relative
        if not relative or not source.is_file():
            return ""
        dest = target / relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        return dest.relative_to(html_dir).as_posix()

    return replace(item, top=move(item.top), heat=move(item.heat), crops=move(item.crops),
                   masks={s: p for s, p in ((s, move(p)) for s, p in item.masks.items()) if p},
                   generated={s: {c: p for c, p in ((c, move(p)) for c, p in g.items()) if p}
                              for s, g in item.generated.items()})


def write_merged_report(dirs: Sequence[Path], scores: "pd.DataFrame", standings: Standings,
                        out: Path) -> Path:
    """Write ``out`` (``PREFIX.html``) for the run directories ``dirs`` (their merged ``scores``
    and ``standings``); their pictures are copied to ``PREFIX_files/``."""
    out = Path(out)
    dirs = list(dict.fromkeys(Path(d) for d in dirs))
    descriptions = load_descriptions(dirs)
    files = out.parent / f"{out.stem}_files"
    if files.is_dir():
        shutil.rmtree(files)
    media = merged_media(dirs, files, out.parent)
    models = list(dict.fromkeys(descriptions["model"].astype(str))) if len(descriptions) else []
    title = f"{', '.join(models) or 'merged runs'} — {len(dirs)} run(s)"
    meta = _meta(descriptions, runs=len(dirs),
                 images="yes" if any(m.top for m in media) else "none of the runs has pictures")
    return _write_html(out, render(descriptions, scores, standings, media, title, meta))
