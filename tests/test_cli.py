"""The command line as a user meets it: status, sql, dry runs and one-line errors."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import API_KEY

from flows.cli import main
from simulator.server import start_simulator
from tasks.config import DatasetConfig
from tasks.data.datasets import load_dataset


@pytest.fixture(scope="module")
def generated(tmp_path_factory, prefect_server):
    """A config file whose store holds a finished generation run (9 train examples, 2 CoTs, 1
    evaluation); shared by the tests that only read it."""
    tmp_path = tmp_path_factory.mktemp("generated")
    rows = load_dataset(DatasetConfig(name="arithmetic", arithmetic={"train": 10, "test": 2}))
    server = start_simulator(examples={row.input: row.label for row in rows}, answer_type="equation")
    config = {
        "dataset": {"name": "arithmetic", "arithmetic": {"train": 10, "test": 2}},
        "teacher": {"base_url": server.url, "n_cots": 2, "n_evals": 1, "max_rpm": 60000},
        "store": {"path": str(tmp_path / "store")},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", API_KEY)
        patch.delenv("OPENAI_BASE_URL", raising=False)
        assert main(["generate", str(path), "--no-progress"]) == 0
    yield path
    server.close()


def test_status_reports_counts_and_nothing_missing(generated, capsys):
    capsys.readouterr()
    assert main(["status", str(generated), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"]["cots"] == 18 and report["rows"]["evaluations"] == 18
    assert report["missing"]["cot_requests"] == 0 and report["missing"]["evaluation_requests"] == 0
    assert report["rows"]["examples"] == 12


def test_sql_queries_the_store_views(generated, capsys):
    capsys.readouterr()
    assert main(["sql", str(generated), "SELECT count(*) AS n FROM cots WHERE answer IS NOT NULL"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "| 18 |"


def test_sql_refuses_writes(generated, capsys):
    assert main(["sql", str(generated), "DELETE FROM cots"]) == 1
    assert "read-only" in capsys.readouterr().err


def test_dry_run_prints_the_plan_and_calls_nothing(tmp_path, api_key, prefect_server, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "dataset": {"name": "arithmetic", "arithmetic": {"train": 20, "test": 2}},
        "teacher": {"base_url": "http://127.0.0.1:9/v1", "n_cots": 5, "n_evals": 5},
        "store": {"path": str(tmp_path / "store")},
    }))
    assert main(["generate", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "planned 108 teacher requests (18 for chains of thought, 90 for self-evaluations)" in out
    written = [str(file) for file in (tmp_path / "store").rglob("*") if file.is_file()]
    assert written == [], "a dry run wrote into the store"


def test_unknown_config_key_is_one_line_naming_it(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"teacher": {"n_cot": 5}}))
    assert main(["status", str(path)]) == 1
    err = capsys.readouterr().err
    assert "teacher.n_cot: unknown key" in err and "Traceback" not in err


def test_bad_dataset_row_names_file_and_row_before_any_call(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text('{"input": "one plus one?", "label": "2"}\n{"input": "no label here"}\n')
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "dataset": {"name": "custom", "custom": {"files": {"train": str(data)}, "label_type": "number"}},
        "store": {"path": str(tmp_path / "store")},
    }))
    assert main(["generate", str(path), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert f"{data} row 1" in err and "Traceback" not in err
