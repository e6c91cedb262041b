"""The results report as Prefect artifacts on the run that made it, so the Prefect UI shows it:
a table artifact with one row per arm and a markdown artifact holding the chart itself (report.png
inlined as a data URI: the UI renders markdown images, and cannot open a file:// or s3:// link),
followed by where report.png and report.csv are stored (the store's folder or its bucket).

Artifact keys name the store (`<store folder>-results`, `<store folder>-chart`), so each store's
reports form one versioned series in the UI, whatever run made them.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from tasks.ops.report import Report


@dataclass(frozen=True)
class PublishedReport:
    table: UUID
    chart: UUID | None


def artifact_key(store_path: str, kind: str) -> str:
    """A key Prefect accepts (lowercase letters, digits and dashes) naming the store and the artifact."""
    name = re.sub(r"[^a-z0-9]+", "-", Path(store_path).name.lower()).strip("-") or "store"
    return f"{name}-{kind}"


def chart_markdown(title: str, png: bytes, stored: tuple[str, ...] = ()) -> str:
    """The chart as markdown the Prefect UI renders: its title, the PNG as a data URI, then where
    the report's files are stored."""
    encoded = base64.b64encode(png).decode("ascii")
    where = "\n\nStored as " + " and ".join(f"`{path}`" for path in stored) + "\n" if stored else "\n"
    return f"**{title}**\n\n![test accuracy per arm](data:image/png;base64,{encoded}){where}"


def publish_report(report: Report, store_path: str) -> PublishedReport | None:
    """Create the table and chart artifacts of `report` in the current flow or task run; None when
    there is nothing to show yet."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    if not report.rows:
        return None
    table = create_table_artifact(
        table=[dict(zip(report.columns, row)) for row in report.rows],
        key=artifact_key(store_path, "results"),
        description=f"Results of every arm in {store_path} (as CSV: {report.csv_path})",
    )
    chart = None
    if report.png:
        chart = create_markdown_artifact(
            markdown=chart_markdown(report.title, report.png, (report.png_path, report.csv_path)),
            key=artifact_key(store_path, "chart"),
            description=f"Test accuracy chart of {store_path} ({report.png_path})",
        )
    return PublishedReport(table, chart)
