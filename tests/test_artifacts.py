"""The report is published on the run as Prefect artifacts: a results table and the chart itself,
read back here from the session's real Prefect server."""

from __future__ import annotations

import base64
import json
import re
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


# Every column a report can have, each with a value no other column has, as the results rows that carry it.
SAMPLING_RESULTS = {
    "test accuracy": ("test", "accuracy", 0.5),
    "validation accuracy": ("validation", "accuracy", 0.625),
    "self-eval agreement (stage 1)": ("validation", "self_eval_agreement", 0.375),
    "self-eval agreement (final)": ("validation", "self_eval_agreement_final", 0.4375),
    "test accuracy (self-consistency)": ("test", "accuracy:self_consistency", 0.25),
    "passes/question (self-consistency)": ("test", "passes:self_consistency", 10),
    "test accuracy (self-verify)": ("test", "accuracy:self_verify", 0.125),
    "passes/question (self-verify)": ("test", "passes:self_verify", 15),
}


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
    # The picture itself, as a markdown image the UI renders (a file:// link it cannot open).
    [encoded] = re.findall(r"!\[[^]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", chart.data)
    png = folder / "report.png"
    assert base64.b64decode(encoded) == png.read_bytes()
    assert png.stat().st_size > 1000
    assert "file://" not in chart.data
    assert "arithmetic: test accuracy per arm (n = 2 test problems, teacher gpt-3.5-turbo)" in chart.data


def test_with_sampling_decode_modes_every_table_heading_names_its_value(tmp_path, prefect_server):
    folder = tmp_path / "sampled"
    store = _store_with_results(folder)
    checkpoint = str(folder / "students" / "cot-1" / "stage2" / "step-000004")
    store.append([ResultRow(arm="cot-1", split=split, metric=metric, value=value, n=2, checkpoint=checkpoint)
                  for split, metric, value in SAMPLING_RESULTS.values() if (split, metric) != ("test", "accuracy")])
    store.append([ResultRow(arm="teacher", split="train", metric="accuracy", value=0.75, n=3, checkpoint="")])
    config = parse_config({"store": {"path": str(folder)}, "train": {"arms": []}})

    state = evaluate(config, return_state=True)

    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        [table] = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]), type={"any_": ["table"]}))
    rows = {row["arm"]: row for row in _table_rows(table.data)}
    expected = {heading: value for heading, (_, _, value) in SAMPLING_RESULTS.items()}
    expected.update({"train accuracy": None, "n test": 2, "checkpoint": "students/cot-1/stage2/step-000004"})
    assert {heading: rows["cot-1"][heading] for heading in expected} == expected
    assert len(rows["cot-1"]) == 1 + len(expected)  # arm and these, nothing unnamed
    assert rows["teacher"]["train accuracy"] == 0.75


def _table_rows(data) -> list[dict]:
    return json.loads(data) if isinstance(data, str) else data  # the server returns the table as JSON text
