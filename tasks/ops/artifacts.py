"""The results report as Prefect artifacts on the run that made it, so the Prefect UI shows it:
a table artifact with one row per arm and a link artifact to the chart (report.png beside the store).

Artifact keys name the store (`<store folder>-results`, `<store folder>-chart`), so each store's
reports form one versioned series in the UI, whatever run made them.
"""

from __future__ import annotations

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


def publish_report(report: Report, store_path: str) -> PublishedReport | None:
    """Create the table and chart-link artifacts of `report` in the current flow or task run;
    None when there is nothing to show yet."""
    from prefect.artifacts import create_link_artifact, create_table_artifact

    if not report.rows:
        return None
    table = create_table_artifact(
        table=[dict(zip(report.columns, row)) for row in report.rows],
        key=artifact_key(store_path, "results"),
        description=f"Results of every arm in {store_path} (report.csv beside the store)",
    )
    chart = None
    if report.png_path:
        chart = create_link_artifact(
            link=Path(report.png_path).resolve().as_uri(),
            link_text="report.png: test accuracy per arm",
            key=artifact_key(store_path, "chart"),
            description=f"Test accuracy chart of {store_path}",
        )
    return PublishedReport(table, chart)
