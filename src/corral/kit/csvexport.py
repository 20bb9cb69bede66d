"""CSV export that spreadsheets cannot turn into formulas (OWASP CSV injection)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

# A spreadsheet reads a cell as a formula when it starts with one of these; it skips leading blanks and line
# breaks first (" =1+1", "\n=1+1"). A leading tab or carriage return is neutralised whatever follows.
_FORMULA_START = ("=", "+", "-", "@")
_CONTROL_START = ("\t", "\r")


def safe_cell(value: object) -> str:
    text = "" if value is None else str(value)
    if text.startswith(_CONTROL_START) or text.lstrip().startswith(_FORMULA_START):
        return "'" + text
    return text


def to_csv(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([safe_cell(cell) for cell in row])
    return buffer.getvalue()
