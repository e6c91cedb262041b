"""The store's promises as a hostile user tests them: `sql` cannot write or read outside the store,
re-scored results replace old ones, and a corrupt part is named, quarantined and bought again."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import cot_row, evaluation_row

from flows.cli import main
from simulator.server import start_simulator
from storage import CallRow, CorruptFileError, ExampleRow, PredictionRow, ResultRow, Store, queries
from storage.store import QUARANTINE
from tasks.config import DatasetConfig, parse_config
from tasks.data.datasets import load_dataset
from tasks.ops.report import write_report
from tasks.student import evaluate_one, train_one

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
VIEWS = ("examples", "cots", "evaluations", "calls", "predictions", "results", "rejects", "failed_requests")


def _example(i: int, split: str = "train") -> ExampleRow:
    return ExampleRow(example_id=f"e{i}", split=split, input=f"question {i}", label=f"{i}", dataset="test",
                      source=f"test.jsonl:{i}")


def _call(call_id: str, status: str, keys: tuple[str, ...]) -> CallRow:
    return CallRow(call_id=call_id, kind="cot", example_id="e1", keys=keys, status=status, attempts=1,
                   prompt_tokens=10, completion_tokens=5, cost_usd=0.001, latency_s=0.1,
                   error=None if status == "ok" else "HTTP 500", teacher_model="m")


def _prediction(value: str, minutes: int) -> PredictionRow:
    return PredictionRow(arm="cot", split="test", example_id="e3", prediction=value, rationale=None, label="3",
                         correct=value == "3", checkpoint="students/cot/step-000100",
                         created_at=T0 + timedelta(minutes=minutes))


def _result(value: float, minutes: int) -> ResultRow:
    return ResultRow(arm="cot", split="test", metric="accuracy", value=value, n=1,
                     checkpoint="students/cot/step-000100", created_at=T0 + timedelta(minutes=minutes))


@pytest.fixture
def store_config(tmp_path) -> Path:
    """A config whose store holds a row in every table (one CoT unparseable, one request failed)."""
    store = Store(str(tmp_path / "store"))
    store.append([_example(1), _example(2), _example(3, "test")])
    cots = [cot_row("e1", 0, "1", "one."), cot_row("e2", 0, None, None)]
    store.append(cots)
    store.append([evaluation_row(cots[0], 0, "correct", "it adds up")])
    store.append([_call("c1", "ok", ("e1-c0",)), _call("c2", "failed", ("e9-c0",))])
    store.append([_prediction("3", 0)])
    store.append([_result(1.0, 0)])
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"store": {"path": str(tmp_path / "store")}}))
    return path


def _sql(config: Path, query: str, capsys, *options: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["sql", str(config), query, *options])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- mindsmirror sql is read-only ----------------------------------------------------------------


def test_sql_reads_every_view(store_config, capsys):
    for view in VIEWS:
        code, out, err = _sql(store_config, f"SELECT count(*) AS n FROM {view}", capsys, "--format", "json")
        assert code == 0, (view, err)
        assert json.loads(out)[0]["n"] >= 1, view
    assert _sql(store_config, "DESCRIBE cots", capsys)[0] == 0
    assert _sql(store_config, "WITH t AS (FROM examples) SELECT count(*) FROM t", capsys)[0] == 0


def test_sql_runs_no_second_statement(store_config, tmp_path, capsys):
    target = tmp_path / "x.csv"
    code, _, err = _sql(store_config, f"SELECT 1; COPY (SELECT 42) TO '{target}'", capsys)
    assert code == 1 and "exactly one read-only query, got 2 statements" in err
    assert not target.exists()


def test_sql_cannot_overwrite_a_stored_part(store_config, tmp_path, capsys):
    part = Store(str(tmp_path / "store")).files("cots")[0]
    before = Path(part).read_bytes()
    code, _, err = _sql(store_config, f"COPY (SELECT 42 AS junk) TO '{part}' (FORMAT parquet)", capsys)
    assert code == 1 and "read-only, and this is a COPY statement" in err
    assert Path(part).read_bytes() == before
    assert queries.status(Store(str(tmp_path / "store"))).rows["cots"] == 2


def test_sql_cannot_read_files_outside_the_store(store_config, tmp_path, capsys):
    secret = tmp_path / "secret.csv"
    secret.write_text("password\nhunter2\n")
    for query in (f"SELECT * FROM read_csv('{secret}')", f"SELECT * FROM '{secret}'",
                  "SELECT * FROM read_text('/etc/hostname')"):
        code, out, err = _sql(store_config, query, capsys)
        assert code == 1 and "hunter2" not in out and "Permission Error" in err, query
        assert "Traceback" not in err


def test_sql_cannot_read_duckdbs_temp_folder_outside_the_store(store_config, tmp_path, capsys, monkeypatch):
    work = tmp_path / "elsewhere"
    (work / ".tmp").mkdir(parents=True)
    (work / ".tmp" / "secret.txt").write_text("hunter2\n")  # DuckDB's default temp folder is <cwd>/.tmp
    monkeypatch.chdir(work)
    for query in ("SELECT * FROM read_text('.tmp/secret.txt')", f"SELECT * FROM read_text('{work}/.tmp/secret.txt')"):
        code, out, err = _sql(store_config, query, capsys)
        assert code == 1 and "hunter2" not in out and "Permission Error" in err, query


def test_sql_cannot_change_settings_or_attach_databases(store_config, tmp_path, capsys):
    for query in ("SET enable_external_access = true", f"ATTACH '{tmp_path / 'other.db'}'",
                  "SELECT * FROM duckdb_settings() WHERE name = 'x'; SET lock_configuration = false"):
        assert _sql(store_config, query, capsys)[0] == 1, query
    assert not (tmp_path / "other.db").exists()


def test_sql_formats_for_other_tools(store_config, capsys):
    query = "SELECT example_id, split FROM examples ORDER BY example_id"
    assert _sql(store_config, query, capsys)[1].splitlines() == [
        "| example_id | split |", "|---|---|", "| e1 | train |", "| e2 | train |", "| e3 | test |"]
    assert _sql(store_config, query, capsys, "--format", "csv")[1].splitlines() == [
        "example_id,split", "e1,train", "e2,train", "e3,test"]
    rows = json.loads(_sql(store_config, "SELECT example_id, created_at FROM examples ORDER BY 1 LIMIT 1", capsys,
                           "--format", "json")[1])
    assert list(rows[0]) == ["example_id", "created_at"] and rows[0]["example_id"] == "e1"
    assert datetime.fromisoformat(rows[0]["created_at"]).tzinfo is not None


# ---- newest wins for re-scored rows --------------------------------------------------------------


def test_a_re_evaluation_replaces_predictions_and_results_of_the_same_checkpoint(tmp_path):
    store = Store(str(tmp_path))
    store.append([_prediction("7", 0)])
    store.append([_result(0.0, 0)])
    store.append([_prediction("3", 10)])
    store.append([_result(1.0, 10)])
    for _ in range(2):  # before and after compaction
        assert store.fetch("SELECT prediction, correct FROM predictions")[1] == [("3", True)]
        assert [(r.value, r.checkpoint) for r in queries.latest_results(store)] == [
            (1.0, "students/cot/step-000100")]
        store.compact()


def test_paid_rows_still_keep_their_first_write(tmp_path):
    store = Store(str(tmp_path))
    first = cot_row("e1", 0, "1", "one.")
    store.append([first])
    store.append([replace(first, text="later", created_at=first.created_at + timedelta(hours=1))])
    store.compact()
    assert store.fetch("SELECT text FROM cots")[1] == [(first.text,)]


# ---- a corrupt part ------------------------------------------------------------------------------


def _corrupt(path: str) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])  # a torn copy: no footer


def test_a_corrupt_part_is_named_and_quarantined_and_reads_go_on(tmp_path):
    store = Store(str(tmp_path))
    store.append([_example(1)])
    store.append([_example(2)])
    bad = store.files("examples")[1]
    _corrupt(bad)
    with pytest.raises(CorruptFileError, match="corrupt Parquet file .*part-.*mindsmirror repair") as raised:
        store.fetch("SELECT count(*) FROM examples")
    assert raised.value.paths == [bad]
    with pytest.raises(CorruptFileError):
        store.compact()
    assert [path for path, _ in store.corrupt_files()] == [bad]
    moved = store.quarantine([bad])
    assert moved == [f"{tmp_path}/{QUARANTINE}/examples/{Path(bad).name}"] and Path(moved[0]).is_file()
    assert store.fetch("SELECT example_id FROM examples")[1] == [("e1",)]
    store.compact()


@pytest.fixture
def teacher():
    rows = load_dataset(DatasetConfig(name="arithmetic", arithmetic={"train": 6, "test": 2}))
    server = start_simulator(examples={row.input: row.label for row in rows}, answer_type="equation")
    yield server
    server.close()


def _calls(store: Store) -> list[CallRow]:
    columns, rows = store.fetch("SELECT * FROM calls")
    return [CallRow(**{name: value for name, value in zip(columns, row) if name in CallRow.__dataclass_fields__})
            for row in rows]


def _split_in_two(store: Store, table: str) -> str:
    """Rewrite the table's one part as two; returns the second."""
    [only] = store.files(table)
    data = pq.read_table(only)
    half = data.num_rows // 2 | 1  # an odd cut: one request of two samples loses one of them
    first, second = (f"{Path(only).parent}/part-{name}.parquet" for name in ("00000000-a", "00000000-b"))
    pq.write_table(data.slice(0, half), first)
    pq.write_table(data.slice(half), second)
    Path(only).unlink()
    return second


def test_a_corrupt_part_is_one_line_everywhere_and_repair_makes_generate_buy_only_its_requests(
        tmp_path, teacher, api_key, prefect_server, capsys):
    store_path = tmp_path / "store"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "dataset": {"name": "arithmetic", "arithmetic": {"train": 6, "test": 2}},
        "teacher": {"base_url": teacher.url, "n_cots": 2, "n_evals": 1, "max_rpm": 60000},
        "store": {"path": str(store_path)},
    }))
    assert main(["generate", str(config), "--no-progress"]) == 0
    store = Store(str(store_path))
    stored = queries.status(store).rows["cots"]
    bad = _split_in_two(store, "cots")
    lost = pq.read_table(bad)
    lost_examples = set(lost.column("example_id").to_pylist())
    lost_requests = len(lost_examples)
    _corrupt(bad)

    for command in (["status"], ["sql", "SELECT count(*) FROM cots"], ["compact"], ["report"],
                    ["generate", "--no-progress"]):
        capsys.readouterr()
        assert main([command[0], str(config), *command[1:]]) == 1, command
        err = capsys.readouterr().err
        assert f"corrupt Parquet file {bad}" in err and "mindsmirror repair" in err, (command, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (command, err)

    capsys.readouterr()
    assert main(["repair", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"{bad} (" in out and f"{store_path}/{QUARANTINE}/cots/" in out
    assert f"{lost_requests} answered request(s) now miss {lost.num_rows} sample(s)" in out

    # Every lost request was marked done in _claims; the store, not the marker, decides.
    before, earlier_calls = teacher.stats()["requests"], {row.call_id for row in _calls(store)}
    assert main(["generate", str(config), "--no-progress"]) == 0
    new_calls = [row for row in _calls(store) if row.call_id not in earlier_calls]
    assert teacher.stats()["requests"] - before == len(new_calls)
    # Only the examples that lost samples: their chains of thought, then self-evaluations of those.
    assert {row.example_id for row in new_calls} == lost_examples
    assert sum(row.kind == "cot" for row in new_calls) == lost_requests
    assert queries.status(store).rows["cots"] == stored
    assert queries.answered_but_missing(store) == []
    capsys.readouterr()
    assert main(["status", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["missing"]["cot_requests"] == 0


QUESTIONS = {"What is 2 plus 3?": "( 2 + 3 )", "What is 7 minus 4?": "( 7 - 4 )",
             "What is 6 times 5?": "( 6 * 5 )", "What is 8 divided by 2?": "( 8 / 2 )"}


def _student_config(tmp_path: Path, learning_rate: float):
    return parse_config({
        "store": {"path": str(tmp_path / "store")},
        "student": {"tiny": {"d_model": 64, "d_ff": 128, "num_layers": 2, "num_heads": 2, "vocab_size": 300},
                    "max_target_length": 32},
        "train": {"arms": [{"name": "standard", "mode": "standard"}], "batch_size": 4,
                  "learning_rate": learning_rate, "stage1_steps": 0, "stage2_steps": 60, "eval_every": 60,
                  "device": "cpu", "bf16": False},
        "evaluate": {"batch_size": 4, "max_new_tokens": 12},
    })


def test_retrain_then_re_evaluate_and_the_report_shows_the_new_accuracy(tmp_path):
    store = Store(str(tmp_path / "store"))
    # The test questions are the train questions: 60 steps can learn them, a learning rate of ~0 cannot.
    store.append([ExampleRow(example_id=f"{split}-{i}", split=split, input=question, label=label,
                             dataset="arithmetic", source=f"test:{i}")
                  for split in ("train", "test") for i, (question, label) in enumerate(QUESTIONS.items())])
    untrained = _student_config(tmp_path, learning_rate=1e-9)
    first = train_one(untrained, "standard", progress=False)
    before = evaluate_one(untrained, "standard")["test:accuracy"]
    trained = _student_config(tmp_path, learning_rate=3e-3)
    second = train_one(trained, "standard", progress=False)
    assert second.checkpoint == first.checkpoint  # the same path, a different model
    after = evaluate_one(trained, "standard")["test:accuracy"]
    # how much 60 steps learn varies a little between transformers releases; that they learn does not
    assert before < after

    [row] = [row for row in write_report(trained).rows if row[0] == "standard"]
    assert row[1] == after
    assert store.fetch("SELECT count(*), sum(correct::INT) FROM predictions")[1] == [(4, round(after * 4))]
