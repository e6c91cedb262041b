"""The report is published on the run as Prefect artifacts: a results table and a link to the chart,
read back here from the session's real Prefect server."""

from __future__ import annotations

import json
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.evaluate import evaluate
from storage import ExampleRow, ResultRow, Store
from tasks.config import parse_config
from tasks.ops.artifacts import artifact_key


def _store_with_results(folder: Path) -> Store:
    store = Store(str(folder))
    store.append([
        ExampleRow(example_id=f"{split}-{i}", split=split, input=f"q{i}", label=label, dataset="arithmetic",
                   source=f"x:{i}")
        for split, labels in (("train", ["( 1.0 + 2.0 )"] * 3), ("test", ["( 1.0 + 2.0 )", "( 2.0 + 2.0 )"]))
        for i, label in enumerate(labels)
    ])
    store.append([ResultRow(arm="cot-1", split="test", metric="accuracy", value=0.5, n=2,
                            checkpoint=str(folder / "students" / "cot-1" / "stage2" / "step-000004"))])
    return store


def test_evaluation_publishes_the_results_table_and_the_chart_link_on_its_run(tmp_path, prefect_server):
    folder = tmp_path / "my_store"
    _store_with_results(folder)
    config = parse_config({"store": {"path": str(folder)}, "train": {"arms": []}})

    state = evaluate(config, return_state=True)

    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    by_type = {artifact.type: artifact for artifact in artifacts}
    assert set(by_type) == {"table", "markdown"}  # Prefect stores a link artifact as markdown

    table = by_type["table"]
    assert table.key == artifact_key(str(folder), "results") == "my-store-results"
    rows = {row["arm"]: row for row in _table_rows(table.data)}
    assert set(rows) == {"baseline:constant", "cot-1"}
    assert rows["cot-1"]["test accuracy"] == 0.5
    assert rows["cot-1"]["checkpoint"] == "students/cot-1/stage2/step-000004"
    assert rows["baseline:constant"]["test accuracy"] == 0.5  # "( 1.0 + 2.0 )" is right on 1 of 2

    chart = by_type["markdown"]
    assert chart.key == "my-store-chart"
    png = folder / "report.png"
    assert png.resolve().as_uri() in chart.data
    assert png.stat().st_size > 1000


def _table_rows(data) -> list[dict]:
    return json.loads(data) if isinstance(data, str) else data  # the server returns the table as JSON text
