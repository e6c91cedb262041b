"""Shared fixtures: one real Prefect server per test session, the simulated teacher, small configs.

Prefect reads its settings from the environment when it is first imported, so the server's address
and home are fixed here, at import time, before any test module imports a flow; the server itself
starts only when a test asks for the `prefect_server` fixture.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from storage import CotRow, EvaluationRow

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
API_KEY = "sk-test-do-not-log-0123456789abcdef"


class FakeTime:
    """A clock that only moves when someone sleeps; records every sleep."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


# What generation records of every teacher sample, the same for the test rows below.
SAMPLED = dict(finish_reason="stop", teacher_model="simulated", temperature=0.7, top_p=1.0, max_tokens=256,
               source="teacher")


def cot_row(example_id: str, index: int, answer: str | None, rationale: str | None,
            error: str = "no answer sentence") -> CotRow:
    """A chain of thought as generation stores it; no answer makes it unparseable with `error`."""
    return CotRow(
        key=f"{example_id}-c{index}",
        example_id=example_id,
        cot_index=index,
        text=rationale or "rambling",
        answer=answer,
        rationale=rationale,
        parse_error=None if answer else error,
        prompt_version="cot-v1",
        **SAMPLED,
        call_id="call-1",
    )


def evaluation_row(judged: CotRow, index: int, verdict: str | None, rationale: str | None) -> EvaluationRow:
    """A self-evaluation of `judged` as generation stores it; no verdict makes it unparseable."""
    return EvaluationRow(
        key=f"{judged.key}-v{index}",
        example_id=judged.example_id,
        cot_index=judged.cot_index,
        cot_key=judged.key,
        eval_index=index,
        text=f"{rationale} Evaluation result: the given answer is {verdict}" if verdict else "I cannot say",
        verdict=verdict,
        rationale=rationale,
        parse_error=None if verdict else "no verdict",
        prompt_version="eval-v1",
        **SAMPLED,
        call_id="call-2",
    )


def kill_training_after_a_checkpoint(config_file: Path, stage: Path) -> None:
    """`mindsmirror train` in its own process, killed (SIGKILL) once `stage` has a checkpoint."""
    process = subprocess.Popen([sys.executable, "-m", "flows.cli", "train", str(config_file)], cwd=REPO,
                               env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(stage.glob("step-*/mindsmirror.json")):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"training stopped before its first checkpoint: {process.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_PREFECT_HOME = tempfile.mkdtemp(prefix="mindsmirror-prefect-")
_PREFECT_PORT = _free_port()
PREFECT_ENV = {
    "PREFECT_HOME": _PREFECT_HOME,
    "PREFECT_API_URL": f"http://127.0.0.1:{_PREFECT_PORT}/api",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_ENABLED": "false",
    # The server writes task runs in batches; larger batches keep it from falling behind (see deploy/README.md).
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "200",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
os.environ.update(PREFECT_ENV)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect server on 127.0.0.1 with its own sqlite database, shared by the whole session."""
    url = PREFECT_ENV["PREFECT_API_URL"]
    log = open(Path(_PREFECT_HOME) / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(_PREFECT_PORT)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **PREFECT_ENV},
        start_new_session=True,
    )
    deadline = time.monotonic() + 90
    while not _healthy(url):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"Prefect server did not start; see {log.name}")
        time.sleep(0.3)
    yield url
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # ship the last run logs before the server goes away
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    log.close()


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "svamp" / "svamp_train.json").is_file():
        pytest.skip("the shared datasets folder (../shared/data beside the repository) is not present")
    return SHARED_DATA


@pytest.fixture
def api_key(monkeypatch) -> str:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return API_KEY


S3_SECRET = "s3-secret-do-not-log-9876543210fedcba"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible HTTP server (moto's standalone server) on 127.0.0.1: its endpoint URL."""
    pytest.importorskip("moto", reason="the S3 tests need moto[server] (the dev extra)")
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start on {url}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def s3_env(monkeypatch, s3_server) -> dict[str, str]:
    """The AWS_* variables that point the SDKs (and child processes) at the test server."""
    env = {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "mindsmirror-test",
           "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def s3_bucket(s3_env, request) -> str:
    """A fresh bucket for this test on the S3 server: its s3:// URL."""
    import boto3

    name = "t-" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40] + f"-{os.getpid()}"
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"
