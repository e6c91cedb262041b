"""Generation on an s3:// store through the CLI, against a real S3 server (moto) and the simulated
teacher: runs on separate machines (processes with their own working directory and local state)
share only the bucket, and never buy one answer twice."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import yaml
from conftest import API_KEY, S3_SECRET

from simulator.server import start_simulator
from storage import Store, queries
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


def test_two_machines_generating_on_one_bucket_buy_each_answer_once(tmp_path, s3_bucket, teacher, api_key):
    store = f"{s3_bucket}/runs/svamp"
    machines = [machine(tmp_path, name, store, teacher.url) for name in ("here", "there")]
    started = time.monotonic()
    runs = [cli(folder, env, "generate", "run.yaml", "--no-progress", wait=False) for folder, env in machines]
    outputs = [run.communicate(timeout=300) for run in runs]
    print(time.monotonic() - started)
    assert [run.returncode for run in runs] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]

    assert teacher.stats()["requests"] == NEEDED  # each answer bought once, whichever machine asked
    report = queries.status(Store(store))
    assert report.rows["cots"] == TRAIN * N_COTS and report.rows["evaluations"] == TRAIN * N_COTS * N_EVALS
    assert report.calls_ok == NEEDED and report.calls_failed == 0
    leases = [key for key in objects(s3_bucket) if "/_claims/" in key and "/_claims/done/" not in key]
    assert leases == []  # each lease went once its answer was stored
    assert [path for folder, _ in machines for path in (folder / "home").rglob("*.jsonl")] == []  # none pending
    assert_no_secret_in(s3_bucket, *(text for pair in outputs for text in pair))
