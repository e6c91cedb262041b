"""The results report as Prefect artifacts on the run that made it, so the Prefect UI shows it:
a table artifact with one row per arm and a markdown artifact holding the chart itself (report.png
inlined as a data URI: the UI renders markdown images, and cannot open a file:// link).

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


def chart_markdown(title: str, png: bytes) -> str:
    """The chart as markdown the Prefect UI renders: its title, then the PNG as a data URI."""
    encoded = base64.b64encode(png).decode("ascii")
    return f"**{title}**\n\n![test accuracy per arm](data:image/png;base64,{encoded})\n"


def publish_report(report: Report, store_path: str) -> PublishedReport | None:
    """Create the table and chart artifacts of `report` in the current flow or task run; None when
    there is nothing to show yet."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    if not report.rows:
        return None
    table = create_table_artifact(
        table=[dict(zip(report.columns, row)) for row in report.rows],
        key=artifact_key(store_path, "results"),
        description=f"Results of every arm in {store_path} (report.csv beside the store)",
    )
    chart = None
    if report.png_path:
        chart = create_markdown_artifact(
            markdown=chart_markdown(report.title, Path(report.png_path).read_bytes()),
            key=artifact_key(store_path, "chart"),
            description=f"Test accuracy chart of {store_path} (report.png beside the store)",
        )
    return PublishedReport(table, chart)
