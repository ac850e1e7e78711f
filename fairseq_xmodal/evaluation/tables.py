"""The one writer of result tables, for xmodal-report and xmodal-sweep-table: CSV through pandas, and markdown.

CSV: `DataFrame.to_csv` over object columns (an int column with gaps stays `3`, not `3.0`; None is an empty cell, a NaN
`nan`).
Markdown is written here rather than with `DataFrame.to_markdown`: tabulate pads every cell to its column's width,
which makes a 20-column table unreadable in a terminal and changes the table's lines (`| job | status | ...`) that
scripts and the tests grep for; an unpadded pipe table is a dozen lines.
"""
import io
from typing import Any, Callable, Collection, Dict, List

import pandas as pd

Row = Dict[str, Any]


def _frame(rows: List[Row], columns: List[str], cell: Callable[[Any], Any]) -> pd.DataFrame:
    return pd.DataFrame([[cell(r.get(c)) for c in columns] for r in rows], columns=columns, dtype=object)


def csv_text(rows: List[Row], columns: List[str], cell: Callable[[Any], Any] = lambda v: v) -> str:
    """rows -> CSV with these columns (a row's other keys are left out, a missing one is an empty cell)."""
    out = io.StringIO()
    frame = _frame(rows, columns, lambda v: "" if v is None else cell(v))
    frame.to_csv(out, index=False, lineterminator="\n", na_rep="nan")
    return out.getvalue()


def markdown(rows: List[Row], columns: List[str], cell: Callable[[Any], str] = str,
             right: Collection[str] = ()) -> str:
    """rows -> a pipe table; `cell` formats a value (None is always an empty cell), `right` columns align right."""
    def text(v: Any) -> str:
        return ("" if v is None else cell(v)).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---:" if c in right else "---" for c in columns) + "|"]
    lines += ["| " + " | ".join(text(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
