"""Generation on an s3:// store through the CLI, against a real S3 server (moto) and the simulated
teacher: runs on separate machines (processes with their own working directory and local state)
share only the bucket, and never buy one answer twice."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import boto3
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import API_KEY, S3_SECRET, cot_row

from simulator.server import start_simulator
from storage import ClaimsUnavailable, Store, open_claims, queries
from tasks.config import DatasetConfig
from tasks.data.datasets import load_dataset

pytestmark = pytest.mark.usefixtures("prefect_server")

TRAIN = 9  # 10 problems, one carved out for validation
N_COTS, N_EVALS = 2, 1
NEEDED = TRAIN * (1 + N_COTS)  # one CoT request, then one evaluation request per CoT


@pytest.fixture
def teacher():
    rows = load_dataset(DatasetConfig(name="arithmetic", arithmetic={"train": 10, "test": 2}))
    server = start_simulator(examples={row.input: row.label for row in rows}, answer_type="equation",
                             latency_ms=80)
    yield server
    server.close()


def machine(tmp_path: Path, name: str, store: str, teacher_url: str, **teacher) -> tuple[Path, dict]:
    """A working directory with its own config and home (journal, caches): one machine's view."""
    folder = tmp_path / name
    (folder / "home").mkdir(parents=True)
    config = {
        "dataset": {"name": "arithmetic", "arithmetic": {"train": 10, "test": 2}},
        "teacher": {"model": "gpt-3.5-turbo", "base_url": teacher_url, "n_cots": N_COTS, "n_evals": N_EVALS,
                    "max_rpm": 60000, "max_concurrency": 4, "timeout_s": 5, **teacher},
        "generate": {"batch_size": 3},
        "store": {"path": store},
    }
    (folder / "run.yaml").write_text(yaml.safe_dump(config))
    env = {key: value for key, value in os.environ.items() if key != "MINDSMIRROR_JOURNAL_DIR"}
    return folder, {**env, "HOME": str(folder / "home")}


def cli(folder: Path, env: dict, *args: str, wait: bool = True):
    command = [sys.executable, "-m", "flows.cli", *args]
    if not wait:
        return subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def objects(bucket: str) -> dict[str, bytes]:
    s3 = boto3.client("s3")
    name = bucket.removeprefix("s3://")
    keys = [item["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name)
            for item in page.get("Contents", [])]
    return {key: s3.get_object(Bucket=name, Key=key)["Body"].read() for key in keys}


def assert_no_secret_in(bucket: str, *outputs: str) -> None:
    for key, body in objects(bucket).items():
        assert API_KEY.encode() not in body and S3_SECRET.encode() not in body, key
    for output in outputs:
        assert API_KEY not in output and S3_SECRET not in output


@pytest.mark.slow  # about 70 s on 2 loaded cores; tests/test_s3_claims.py races claims by default
def test_two_machines_generating_on_one_bucket_buy_each_answer_once(tmp_path, s3_bucket, teacher, api_key):
    store = f"{s3_bucket}/runs/svamp"
    machines = [machine(tmp_path, name, store, teacher.url) for name in ("here", "there")]
    runs = [cli(folder, env, "generate", "run.yaml", "--no-progress", wait=False) for folder, env in machines]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]

    assert teacher.stats()["requests"] == NEEDED  # each answer bought once, whichever machine asked
    report = queries.status(Store(store))
    assert report.rows["cots"] == TRAIN * N_COTS and report.rows["evaluations"] == TRAIN * N_COTS * N_EVALS
    assert report.calls_ok == NEEDED and report.calls_failed == 0
    leases = [key for key in objects(s3_bucket) if "/_claims/" in key and "/_claims/done/" not in key]
    assert leases == []  # each lease went once its answer was stored
    assert [path for folder, _ in machines for path in (folder / "home").rglob("*.jsonl")] == []  # none pending
    assert_no_secret_in(s3_bucket, *(text for pair in outputs for text in pair))

    here, env = machines[0]
    status = cli(here, env, "status", "run.yaml", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["rows"]["cots"] == TRAIN * N_COTS


def test_sql_on_an_s3_store_reads_its_views_and_nothing_outside_it(tmp_path, s3_bucket):
    store = Store(f"{s3_bucket}/runs/svamp")
    store.append([cot_row("e1", 0, "2", "1 + 1 = 2.")])
    Store(f"{s3_bucket}/runs/other").append([cot_row("e9", 0, "9", "secret of another run")])
    folder, env = machine(tmp_path, "here", store.root, "http://127.0.0.1:9/v1")
    assert cli(folder, env, "sql", "run.yaml", "SELECT key FROM cots", "--format", "csv").stdout.split() == [
        "key", "e1-c0"]
    outside = [f"SELECT * FROM read_parquet('{s3_bucket}/runs/other/cots/*.parquet')",
               "SELECT * FROM read_text('/etc/hostname')",
               f"COPY (SELECT 1) TO '{s3_bucket}/runs/svamp/cots/part-x.parquet'"]
    for query in outside:
        result = cli(folder, env, "sql", "run.yaml", query)
        assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1, (query, result.stderr)
        assert "secret of another run" not in result.stdout
    assert len(store.files("cots")) == 1  # COPY wrote nothing


def counts(store: str) -> tuple[int, int]:
    rows = queries.status(Store(store)).rows
    return rows["cots"], rows["evaluations"]


@pytest.mark.slow
def test_kill_9_on_one_machine_and_a_rerun_on_another_lose_nothing(tmp_path, s3_bucket, api_key):
    rows = load_dataset(DatasetConfig(name="arithmetic", arithmetic={"train": 40, "test": 2}))
    teacher = start_simulator(examples={row.input: row.label for row in rows}, answer_type="equation",
                              latency_ms=150)
    store = f"{s3_bucket}/runs/svamp"
    try:
        dataset = {"name": "arithmetic", "arithmetic": {"train": 40, "test": 2}}
        here, there = (machine(tmp_path, name, store, teacher.url) for name in ("here", "there"))
        for folder, _ in (here, there):
            config = yaml.safe_load((folder / "run.yaml").read_text())
            (folder / "run.yaml").write_text(yaml.safe_dump({**config, "dataset": dataset}))
        killed = cli(*here, "generate", "run.yaml", "--no-progress", wait=False)
        while teacher.stats()["completions_served"] < 40:
            assert killed.poll() is None, killed.communicate()
            time.sleep(0.05)
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
        assert counts(store)[0] < 36 * N_COTS, "the kill came after the run had finished"

        rerun = cli(*there, "generate", "run.yaml", "--no-progress")
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert counts(store) == (36 * N_COTS, 36 * N_COTS * N_EVALS)
        rebought = teacher.stats()["requests"] - 36 * (1 + N_COTS)
        print(f"kill -9 on s3://: {rebought} requests bought twice (at most 4 were in flight)")
        assert rebought <= 4  # teacher.max_concurrency: at most the requests in flight
    finally:
        teacher.close()


class FlakyS3:
    """An HTTP proxy in front of the S3 server that, while `failing`, answers the uploads of Parquet
    parts with 503 SlowDown (or drops the connection) and passes everything else through; in mode
    "unconditional" it passes writes on without their conditions, as an older server ignores them."""

    def __init__(self, upstream: str, mode: str):
        self.upstream = urlparse(upstream)
        self.mode = mode
        self.failing = False
        self.refused = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.failing and self.command == "PUT" and ".parquet" in self.path:
                    proxy.refused += 1
                    if proxy.mode == "drop":
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    error = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                dropped = {"host"} | ({"if-none-match", "if-match"} if proxy.mode == "unconditional" else set())
                headers = {key: value for key, value in self.headers.items() if key.lower() not in dropped}
                headers["Host"] = proxy.upstream.netloc
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                length = answer.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["503", "drop"])
def test_an_s3_server_refusing_writes_loses_no_paid_answer(tmp_path, s3_bucket, s3_server, teacher, api_key,
                                                          mode):
    flaky = FlakyS3(s3_server, mode)
    store = f"{s3_bucket}/runs/{mode}"  # both modes' test names make one bucket name
    folder, env = machine(tmp_path, "here", store, teacher.url)
    env = {**env, "AWS_ENDPOINT_URL": flaky.url, "AWS_MAX_ATTEMPTS": "1"}
    try:
        Store(store).append([cot_row("e0", 0, "1", "warm-up")])  # the bucket's folders exist
        failing = cli(folder, env, "generate", "run.yaml", "--no-progress", wait=False)
        while teacher.stats()["completions_served"] < 6:
            assert failing.poll() is None, failing.communicate()
            time.sleep(0.02)
        flaky.failing = True
        out, err = failing.communicate(timeout=300)
        assert failing.returncode == 1 and flaky.refused > 0, err
        [line] = err.strip().splitlines()
        assert "a write to the store" in line and "pending in" in line and "the next run stores them" in line
        journalled = list((folder / "home").rglob("*.jsonl"))
        assert journalled, line
        bought = teacher.stats()["requests"]

        flaky.failing = False
        rerun = cli(folder, env, "generate", "run.yaml", "--no-progress")
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert counts(store) == (TRAIN * N_COTS + 1, TRAIN * N_COTS * N_EVALS)
        assert teacher.stats()["requests"] == NEEDED  # the journalled answers were not bought again
        assert bought < NEEDED and not any(path.exists() for path in journalled)
        assert_no_secret_in(s3_bucket, out, err, rerun.stdout, rerun.stderr)
    finally:
        flaky.close()


@pytest.mark.slow
def test_every_generation_command_works_on_an_s3_store(tmp_path, s3_bucket, teacher, api_key):
    store = f"{s3_bucket}/runs/svamp"
    folder, env = machine(tmp_path, "here", store, teacher.url)
    first = cli(folder, env, "generate", "run.yaml", "--no-progress")
    assert first.returncode == 0, first.stderr[-3000:]
    assert cli(folder, env, "resume", "run.yaml", "--no-progress").returncode == 0  # nothing failed: nothing to do

    # A part lost on the server: every command says so in one line, repair moves it aside, and a
    # generate run on another machine buys back just its requests.
    parts = Store(store).files("cots")
    lost = len(set(pq.read_table(parts[-1], filesystem=Store(store).location.filesystem).column("example_id")))
    boto3.client("s3").put_object(Bucket=s3_bucket.removeprefix("s3://"), Key=parts[-1].split("/", 1)[1],
                                  Body=b"not parquet")
    status = cli(folder, env, "status", "run.yaml")
    assert status.returncode == 1 and "mindsmirror repair" in status.stderr.strip(), status.stderr
    repaired = cli(folder, env, "repair", "run.yaml")
    assert repaired.returncode == 0 and "_quarantine" in repaired.stdout, repaired.stderr
    there, env_there = machine(tmp_path, "there", store, teacher.url)
    again = cli(there, env_there, "generate", "run.yaml", "--no-progress")
    assert again.returncode == 0, again.stderr[-3000:]
    assert counts(store)[0] == TRAIN * N_COTS  # (the lost CoTs' evaluations stay: they judged other text)
    # Just the lost part's requests: its CoTs, then an evaluation of each new parseable one.
    assert NEEDED + lost < teacher.stats()["requests"] <= NEEDED + lost * (1 + N_COTS)

    for index in range(3):  # small parts, as many runs would leave them
        Store(store).append([cot_row(f"extra{index}", 0, "1", "1 = 1.")])
    assert len(Store(store).files("cots")) >= 4
    compacted = cli(folder, env, "compact", "run.yaml")
    assert compacted.returncode == 0, compacted.stderr
    assert len(Store(store).files("cots")) == 1  # merged, read back, then the sources deleted
    assert counts(store)[0] == TRAIN * N_COTS + 3


@pytest.mark.slow
def test_batch_mode_and_imports_on_an_s3_store(tmp_path, s3_bucket, api_key):
    store = f"{s3_bucket}/runs/batch"
    folder, env = machine(tmp_path, "here", store, "http://127.0.0.1:9/v1", simulate=True, mode="batch")
    config = yaml.safe_load((folder / "run.yaml").read_text())
    del config["teacher"]["base_url"]
    (folder / "run.yaml").write_text(yaml.safe_dump(config))
    for _ in range(4):  # submit CoTs; collect them and submit evaluations; collect those
        passed = cli(folder, env, "generate", "run.yaml", "--no-progress")
        assert passed.returncode == 0, passed.stderr[-3000:]
        if "no batch open" in passed.stdout and counts(store)[1]:
            break
    assert counts(store) == (TRAIN * N_COTS, TRAIN * N_COTS * N_EVALS)

    fixtures = Path(__file__).resolve().parent / "fixtures"
    imported = tmp_path / "tot"
    imported.mkdir()
    (imported / "run.yaml").write_text(yaml.safe_dump({
        "dataset": {"name": "custom", "splits": ["train"], "validation_fraction": 0.0,
                    "custom": {"files": {"train": str(fixtures / "data_tot_questions.jsonl")}, "id_field": "id",
                               "label_type": "equation"}},
        "store": {"path": f"{s3_bucket}/runs/tot"},
    }))
    result = cli(imported, env, "import", "tot", "run.yaml", str(fixtures / "data_tot_sample.json"))
    assert result.returncode == 0, result.stderr
    assert counts(f"{s3_bucket}/runs/tot") == (5, 8)


def test_a_server_that_ignores_conditional_writes_gets_no_claims(s3_bucket, s3_server, monkeypatch):
    flaky = FlakyS3(s3_server, "unconditional")
    monkeypatch.setenv("AWS_ENDPOINT_URL", flaky.url)
    try:
        with pytest.raises(ClaimsUnavailable, match="ignores conditional writes"):
            open_claims(f"{s3_bucket}/runs")
        assert [key for key in objects(s3_bucket) if "/_claims/" in key] == []  # the probe is gone
    finally:
        flaky.close()
