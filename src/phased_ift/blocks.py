"""The report's vocabulary, below the steps that write report sections: blocks and number formats.

Owns the block tuples every report section is made of (("h1"|"h2"|"p"|"pre", text), ("list", items),
("table", headers, rows) with rows of str cells, ("img", file name in report/, alt text); `report.render` turns
them into markdown and HTML), `table` (a table block with its numbers formatted) and how every number and interval
of report.md/html is written (`fmt_num`, `fmt_ci`). A benchmark's report section (`evals.Benchmark.blocks`) and
the report's own sections (`report.render`) both write in it.
"""

from __future__ import annotations

import math
from typing import Any


def fmt_ci(ci: list | None) -> str:
    """An interval as "[lo, hi]" with 3 decimals, "[n/a]" when there is none."""
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "[n/a]"


def fmt_num(x: Any, nd: int = 3) -> str:
    """A table cell: "n/a" for None/NaN, floats with `nd` decimals (significant digits when tiny), else str."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{nd}g}" if x != 0 and abs(x) < 10 ** -nd else f"{x:.{nd}f}"
    return str(x)


def table(headers: list[str], rows: list[list[Any]]) -> tuple:
    """A ("table", headers, rows) block; cells that are not str go through `fmt_num`."""
    return ("table", headers, [[fmt_num(v) if not isinstance(v, str) else v for v in r] for r in rows])
