"""CSV export that spreadsheets cannot turn into formulas (OWASP CSV injection)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable, Sequence

from starlette.responses import StreamingResponse

# Rows read and written at a time by a streamed export.
EXPORT_BATCH = 1000

# A spreadsheet reads a cell as a formula when it starts with one of these; it skips leading blanks and line
# breaks first (" =1+1", "\n=1+1"). A leading tab or carriage return is neutralised whatever follows.
_FORMULA_START = ("=", "+", "-", "@")
_CONTROL_START = ("\t", "\r")


def safe_cell(value: object) -> str:
    text = "" if value is None else str(value)
    if text.startswith(_CONTROL_START) or text.lstrip().startswith(_FORMULA_START):
        return "'" + text
    return text


def csv_lines(rows: Iterable[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for row in rows:
        writer.writerow([safe_cell(cell) for cell in row])
    return buffer.getvalue()


def to_csv(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    return csv_lines([header]) + csv_lines(rows)


def csv_response(chunks: AsyncIterator[str], filename: str) -> StreamingResponse:
    """A CSV download sent as it is produced (a million rows in the memory of one batch)."""
    return StreamingResponse(
        chunks,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
