"""Batch API mode: the same store as online generation, every request submitted and paid for once.

Real parts: the openai client over HTTP to the simulated teacher's /v1/files and /v1/batches,
Parquet and DuckDB in tmp_path, the `generate` flow on the session's Prefect server, and real
processes killed with SIGKILL at each step of submission and collection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest
from conftest import REPO

from flows.cli import main as cli
from flows.generate import generate
from simulator import simulated_teacher
from simulator.batches import configure_batches
from simulator.server import start_simulator
from storage import Store, queries
from tasks.config import parse_config
from tasks.data.datasets import load_dataset
from tasks.generation import open_session, plan_generation, sync_examples
from tasks.generation.batch import run_batch_pass
from tasks.teacher.endpoint import open_endpoint

TRAIN, N_COTS, N_EVALS = 10, 3, 2
ASKED = 9  # train examples left after the 10% validation carve
COT_LINES, EVAL_LINES = ASKED, ASKED * N_COTS  # one line per prompt (with n)
COTS, EVALUATIONS = ASKED * N_COTS, ASKED * N_COTS * N_EVALS


def _config(tmp_path, url: str, name: str = "store", **teacher) -> dict:
    return {
        "dataset": {"name": "arithmetic", "arithmetic": {"train": TRAIN, "test": 4}},
        "teacher": {"model": "gpt-3.5-turbo", "base_url": url, "n_cots": N_COTS, "n_evals": N_EVALS,
                    "max_concurrency": 8, "timeout_s": 5, "mode": "batch", **teacher},
        "store": {"path": str(tmp_path / name)},
    }


@pytest.fixture
def teacher():
    rows = load_dataset(parse_config({"dataset": {"name": "arithmetic", "arithmetic": {"train": TRAIN, "test": 4}}}
                                     ).dataset)
    server = start_simulator(examples={row.input: row.label for row in rows}, answer_type="equation", seed=0)
    yield server
    server.close()


def _counts(teacher) -> dict:
    return dict(configure_batches(teacher.teacher).counts)


def _pass(config: dict):
    """One batch-mode pass with plain functions (what the flow's batch task runs)."""
    parsed = parse_config(config)
    store = Store(parsed.store.path)
    examples, kind = sync_examples(store, parsed)
    with open_endpoint(parsed.teacher, simulated_teacher(parsed.teacher, examples, kind, store.machine_state("simulator"))
                       ) as endpoint:
        return run_batch_pass(store, parsed, kind, examples, endpoint)


def _stored(config: dict) -> dict:
    store = Store(config["store"]["path"])
    report = queries.status(store)
    keys = {table: set(column[0] for column in store.fetch(f"SELECT key FROM {table}")[1])
            for table in ("cots", "evaluations")}
    return {"cots": report.rows["cots"], "evaluations": report.rows["evaluations"], "calls_ok": report.calls_ok,
            "cost_usd": report.cost_usd, "keys": keys}


def _flow(config: dict, **kwargs):
    return asyncio.run(generate(parse_config(config), show_progress=False, return_state=True, **kwargs))


async def _online(config: dict) -> None:
    parsed = parse_config({**config, "teacher": {**config["teacher"], "mode": "online"}})
    store = Store(parsed.store.path)
    examples, kind = sync_examples(store, parsed)
    plan = plan_generation(store, parsed, kind, examples)
    async def ask(batch):
        return await asyncio.gather(*(session.run_example(work) for work in batch))

    with open_endpoint(parsed.teacher) as endpoint:
        async with open_session(store, parsed, kind, endpoint, plan.progress_total, False) as session:
            await session.dispatch(plan.batches(parsed.generate.batch_size), ask)


@pytest.mark.slow  # about 35 s on 2 busy cores: an online run and four batch passes
def test_batch_run_ends_with_the_store_of_an_online_run_at_half_the_price(tmp_path, teacher, api_key):
    online = _config(tmp_path, teacher.url, "online")
    asyncio.run(_online(online))
    teacher.reset()  # the same draws again: sample k of a prompt is the same answer online and in a batch

    batch = _config(tmp_path, teacher.url, "batch")
    first = _pass(batch)
    assert (first.submitted, first.submitted_requests, first.collected) == (1, COT_LINES, 0)
    second = _pass(batch)  # collects the CoTs, submits their evaluations
    assert (second.collected, second.cots, second.submitted_requests) == (1, COTS, EVAL_LINES)
    third = _pass(batch)
    assert (third.collected, third.evaluations, third.submitted, third.open) == (1, EVALUATIONS, 0, {})

    expected, got = _stored(online), _stored(batch)
    assert (got["cots"], got["evaluations"], got["calls_ok"]) == (COTS, EVALUATIONS, COT_LINES + EVAL_LINES)
    assert got["keys"] == expected["keys"]
    assert got["cost_usd"] == pytest.approx(expected["cost_usd"] / 2)

    before = _counts(teacher)
    rerun = _pass(batch)  # a rerun after success: zero batches
    assert (rerun.collected, rerun.submitted) == (0, 0)
    after = _counts(teacher)
    assert after == {**before, "api_requests": after["api_requests"]}
    assert (after["batches_created"], after["files_uploaded"]) == (2, 2)
    assert after["lines_answered"] == COT_LINES + EVAL_LINES


@pytest.mark.usefixtures("prefect_server")
def test_generate_flow_in_batch_mode_prices_at_the_batch_rate_and_returns_after_submitting(
        tmp_path, teacher, api_key):
    config = _config(tmp_path, teacher.url)
    online_dry = _flow({**config, "teacher": {**config["teacher"], "mode": "online"}}, dry_run=True)
    dry = _flow(config, dry_run=True)
    assert dry.message.startswith("batch mode: planned 36 teacher requests")
    assert dry.result().cost_usd == pytest.approx(online_dry.result().cost_usd / 2)
    state = _flow(config)
    assert state.is_completed(), state.message
    assert "submitted 1 batches of 9 requests" in state.message
    assert state.message.endswith("1 batches open (1 validating): rerun `mindsmirror generate` to collect them")
    assert _stored(config)["cots"] == 0


# A batch pass in a child process that this test kills (SIGKILL, from the child itself) right
# after the named step: the batch recorded in the store, its file uploaded, the batch created, or
# a collected chunk's rows stored before their call records.
_KILLED_PASS = """
import json, os, signal, sys
import openai
from storage import BatchRow, CotRow, Store
from tasks.config import parse_config
from tasks.generation import sync_examples
from tasks.generation.batch import run_batch_pass
from tasks.teacher.endpoint import open_endpoint

config, step = parse_config(json.loads(sys.argv[1])), sys.argv[2]

def kill_after(step_name, function, when=lambda *args: True):
    def wrapped(*args, **kwargs):
        result = function(*args, **kwargs)
        if step == step_name and when(*args):
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return wrapped

Store.append = kill_after("recorded", Store.append, lambda self, rows: isinstance(rows[0], BatchRow)
                          and rows[0].event == "planned")
Store.append = kill_after("collecting", Store.append, lambda self, rows: bool(rows) and isinstance(rows[0], CotRow))
openai.resources.Files.create = kill_after("uploaded", openai.resources.Files.create)
openai.resources.Batches.create = kill_after("created", openai.resources.Batches.create)
store = Store(config.store.path)
examples, kind = sync_examples(store, config)
with open_endpoint(config.teacher) as endpoint:
    run_batch_pass(store, config, kind, examples, endpoint)
"""


def _killed_pass(config: dict, step: str) -> None:
    process = subprocess.run(
        [sys.executable, "-c", _KILLED_PASS, json.dumps(config), step], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )
    assert process.returncode == -signal.SIGKILL, f"not killed at {step}: {process.stderr[-2000:]}"


def test_kill_9_at_every_step_in_turn_submits_nothing_twice_and_pays_nothing_twice(tmp_path, teacher, api_key):
    config = _config(tmp_path, teacher.url)
    _killed_pass(config, "recorded")  # the CoT batch is recorded, nothing sent
    assert _counts(teacher)["files_uploaded"] == 0
    _killed_pass(config, "uploaded")  # the rerun uploads its file, then dies
    _killed_pass(config, "created")  # the next finds that file, creates the batch, dies before recording it
    assert {k: v for k, v in _counts(teacher).items() if k in ("files_uploaded", "batches_created")} == {
        "files_uploaded": 1, "batches_created": 1}
    adopted = _pass(config)  # finds the batch by its tag
    assert (adopted.submitted, adopted.submitted_requests) == (1, COT_LINES), adopted.describe()
    _killed_pass(config, "collecting")  # the CoT rows are stored, their call records not yet
    assert _stored(config)["cots"] == COTS and _stored(config)["calls_ok"] == 0

    passes = 0
    while (summary := _pass(config)).open or summary.submitted:
        passes += 1
        assert passes < 4, summary.describe()
    counts = _counts(teacher)
    assert (counts["batches_created"], counts["files_uploaded"]) == (2, 2), counts
    assert counts["lines_answered"] == COT_LINES + EVAL_LINES
    stored = _stored(config)
    assert (stored["cots"], stored["evaluations"], stored["calls_ok"]) == (COTS, EVALUATIONS, COT_LINES + EVAL_LINES)
    calls = Store(config["store"]["path"]).fetch("SELECT count(*), count(DISTINCT keys) FROM calls")[1][0]
    assert calls[0] == calls[1], "a request was recorded (and priced) twice"
    rerun = _pass(config)  # a rerun after success: zero batches
    assert (rerun.collected, rerun.submitted, _counts(teacher)["batches_created"]) == (0, 0, 2)


def test_expired_and_failed_lines_are_stored_as_far_as_they_came_and_only_the_rest_resubmitted(
        tmp_path, teacher, api_key):
    config = _config(tmp_path, teacher.url)
    configure_batches(teacher.teacher, expire_after_lines=4, error_every=3)
    _pass(config)
    second = _pass(config)
    # Lines 0, 1 and 3 answered, line 2 a 500, the 5 past the first 4 expired: 6 CoT lines go out again.
    assert (second.cots, second.lines_failed, second.lines_missing) == (3 * N_COTS, 1, 5), second.describe()
    store = Store(config["store"]["path"])
    resubmitted = queries.planned_batches(store, [row.tag for row in queries.latest_batches(store, True)])
    (batch,) = resubmitted.values()
    kinds = [json.loads(line)["kind"] for line in batch.requests]
    assert (kinds.count("cot"), kinds.count("evaluation")) == (6, 3 * N_COTS)
    assert queries.status(store).calls_failed == 1

    configure_batches(teacher.teacher, expire_after_lines=None, error_every=None)
    while _pass(config).open:
        pass
    stored = _stored(config)
    assert (stored["cots"], stored["evaluations"]) == (COTS, EVALUATIONS)
    # Every line answered once, none twice.
    assert _counts(teacher)["lines_answered"] == COT_LINES + EVAL_LINES


def test_batch_call_records_count_the_whole_wait_as_queue_time_and_mark_estimated_usage(tmp_path, teacher, api_key):
    teacher.set_deviations(no_usage=True)  # a server that sends no usage: tokens are estimated
    config = _config(tmp_path, teacher.url, n_evals=0)
    _pass(config)
    collected = _pass(config)
    assert (collected.collected, collected.cots) == (1, COTS)
    store = Store(config["store"]["path"])
    calls = store.fetch("SELECT latency_s, queue_s, server_s, usage_estimated, prompt_tokens FROM calls")[1]
    assert len(calls) == COT_LINES
    for latency, queue, server, estimated, prompt_tokens in calls:
        # No per-line time on the wire in a batch: server time unknown, all of the wait is queue time.
        assert (queue, server, estimated) == (latency, None, True) and prompt_tokens > 0
    assert queries.status(store).calls_usage_estimated == COT_LINES


def test_budget_cap_counts_open_batches_as_committed_spend(tmp_path, teacher, api_key):
    configure_batches(teacher.teacher, delay_s=3600)
    config = _config(tmp_path, teacher.url, max_cost_usd=0.003)
    first = _pass(config)
    assert first.stopped and "budget cap" in first.stopped
    assert 0 < first.submitted_requests < COT_LINES and first.submitted_cost_usd <= 0.003
    second = _pass(config)  # the open batch's estimate is committed: nothing more fits
    assert second.submitted == 0 and second.stopped
    assert queries.committed_usd(Store(config["store"]["path"])) == pytest.approx(first.submitted_cost_usd)


def test_status_shows_batches_and_cancel_stops_them(tmp_path, teacher, api_key, capsys):
    configure_batches(teacher.teacher, delay_s=3600)
    config = _config(tmp_path, teacher.url)
    config_file = tmp_path / "run.yaml"
    config_file.write_text(json.dumps(config))
    _pass(config)
    assert cli(["status", str(config_file), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["batches"]["by status"] == {"validating": 1}
    assert report["missing"]["in open batches"] == COTS

    assert cli(["batch", "cancel", str(config_file)]) == 0
    assert capsys.readouterr().out.startswith("asked to cancel 1 batches")
    summary = _pass(config)  # stores the cancelled batch (nothing came back), submits its requests again
    assert (summary.collected, summary.lines_missing, summary.submitted_requests) == (1, COT_LINES, COT_LINES)
    assert cli(["status", str(config_file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["batches"]["by status"] == {"cancelled": 1, "validating": 1}


def test_simulated_teacher_keeps_its_batches_beside_the_store_between_runs(tmp_path):
    config = _config(tmp_path, None, simulate=True)
    del config["teacher"]["base_url"]
    while (summary := _pass(config)).open or summary.submitted:
        pass
    assert (_stored(config)["cots"], _stored(config)["evaluations"]) == (COTS, EVALUATIONS)


def test_simulated_files_and_batches_endpoints_speak_the_openai_client(teacher):
    import openai

    service = configure_batches(teacher.teacher, delay_s=3600)
    client = openai.OpenAI(base_url=teacher.url, api_key="unused", max_retries=0)
    body = {"model": "simulated", "messages": [{"role": "user", "content": "hello"}], "n": 2, "max_tokens": 20}
    line = {"custom_id": "r0", "method": "POST", "url": "/v1/chat/completions", "body": body}
    upload = client.files.create(file=("in.jsonl", (json.dumps(line) + "\n").encode()), purpose="batch")
    assert [item.filename for item in client.files.list(purpose="batch")] == ["in.jsonl"]
    created = [client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                     completion_window="24h", metadata={"n": str(i)}) for i in range(3)]
    assert created[0].status == "validating" and created[0].request_counts.total == 1
    listed = list(client.batches.list(limit=2))  # two pages
    assert sorted(batch.metadata["n"] for batch in listed) == ["0", "1", "2"]
    assert client.batches.retrieve(created[0].id).status == "in_progress"
    assert client.batches.cancel(created[1].id).status == "cancelled"

    service.settings = dataclasses.replace(service.settings, delay_s=0)
    done = client.batches.retrieve(created[0].id)
    assert (done.status, done.request_counts.completed, done.error_file_id) == ("completed", 1, None)
    (result,) = [json.loads(text) for text in client.files.content(done.output_file_id).text.splitlines()]
    assert result["custom_id"] == "r0" and result["response"]["status_code"] == 200
    assert len(result["response"]["body"]["choices"]) == 2

    # The simulation's own control path, beside the API routes.
    control = urllib.request.Request(teacher.url.removesuffix("/v1") + "/_batches", data=b'{"delay_s": 7}')
    with urllib.request.urlopen(control) as response:
        reply = json.loads(response.read())
    assert reply["settings"]["delay_s"] == 7 and reply["batches_created"] == 3
