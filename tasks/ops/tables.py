"""Query results as text for other tools: markdown (for people), CSV, or JSON (one object per row)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

from tasks.ops.report import markdown_table

FORMATS = ("markdown", "csv", "json")


def _plain(value) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def render_rows(columns: Sequence[str], rows: Sequence[Sequence], fmt: str = "markdown") -> str:
    """The rows in `fmt`; in JSON, times are ISO 8601 and decimals their text."""
    if fmt == "markdown":
        return markdown_table(columns, rows)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        return buffer.getvalue().rstrip("\n")
    if fmt == "json":
        return json.dumps([dict(zip(columns, row)) for row in rows], indent=2, default=_plain)
    raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
