"""The spreadsheet rule of the tables a run writes: text cells that a spreadsheet would
evaluate are neutralised, reversibly.

A text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return (what
Excel, LibreOffice and Google Sheets run as a formula: "CSV injection") is written with a
leading apostrophe (``=HYPERLINK(...)`` -> ``'=HYPERLINK(...)``); so the rule can be undone, a
text that already starts with an apostrophe gets one more.  Cells that are numbers (``-0.5``,
``+1``) are left alone.  :func:`read_descriptions` undoes the rule, or reads the parquet copy a
run writes beside its ``descriptions.csv``, which keeps the exact text.  Setting labels are
keys that ``leaderboard`` reads back from ``scores.csv``, so they are not neutralised: a
``describer.label_as`` that would start a formula is refused before the job runs.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

#: first characters that make a spreadsheet evaluate a cell (CSV / formula injection)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: what neutralises such a cell (and escapes a cell that starts with it)
ESCAPE = "'"
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def neutralise_cell(value: Any) -> Any:
    """A text cell a spreadsheet would evaluate, behind an apostrophe (see the module
    docstring); numbers, other texts and non-texts unchanged."""
    if not isinstance(value, str) or not value:
        return value
    if value[0] == ESCAPE or (value[0] in FORMULA_START and not _NUMBER.match(value)):
        return ESCAPE + value
    return value


def restore_cell(value: Any) -> Any:
    """The inverse of :func:`neutralise_cell`."""
    return value[1:] if isinstance(value, str) and value.startswith(ESCAPE) else value


def spreadsheet_safe(frame: "pd.DataFrame") -> "pd.DataFrame":
    """A copy of ``frame`` with every text cell neutralised (:func:`neutralise_cell`)."""
    out = frame.copy()
    for column in text_columns(out):
        out[column] = out[column].map(neutralise_cell)
    return out


def text_columns(frame: "pd.DataFrame") -> list[Any]:
    """The columns that may hold text (object or string dtype)."""
    from pandas.api.types import is_object_dtype, is_string_dtype

    return [c for c in frame.columns
            if is_object_dtype(frame[c].dtype) or is_string_dtype(frame[c].dtype)]


def read_descriptions(path: Path | str) -> "pd.DataFrame":
    """A run's descriptions table with its exact text: ``descriptions.parquet`` beside the
    given CSV when present, else the CSV with the spreadsheet rule undone."""
    import pandas as pd

    path = Path(path)
    parquet = path.with_suffix(".parquet")
    if parquet.is_file():
        return pd.read_parquet(parquet)
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    for column in text_columns(frame):
        frame[column] = frame[column].map(restore_cell)
    return frame
