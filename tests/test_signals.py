"""Stopping runs: a CLI run stopped with SIGTERM (`docker stop`, `kill`) ends Crashed on the Prefect
server instead of Running forever, and prints one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest
import yaml
from conftest import REPO


def _generate_runs_since(started: datetime) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
    )

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["generate"])),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=started)))


def _slow_generation(tmp_path):
    config = {
        "dataset": {"name": "arithmetic", "arithmetic": {"train": 400, "test": 4}},
        "teacher": {"model": "simulated-teacher", "simulate": True, "n_cots": 1, "n_evals": 1,
                    "max_concurrency": 2, "simulator": {"latency_ms": 300}},
        "store": {"path": str(tmp_path / "store")},
    }
    config_file = tmp_path / "slow.yaml"
    config_file.write_text(yaml.safe_dump(config))
    process = subprocess.Popen([sys.executable, "-m", "flows.cli", "generate", str(config_file), "--no-progress"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ), start_new_session=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "store" / "cots").is_dir():  # paying for answers by now
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    return process


def test_a_cli_run_stopped_with_sigterm_ends_crashed_with_one_line(tmp_path, prefect_server):
    started = datetime.now(timezone.utc)
    process = _slow_generation(tmp_path)

    process.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    out, err = process.communicate(timeout=60)

    assert time.monotonic() - stopped < 15
    assert process.returncode == 143 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("mindsmirror: stopped by SIGTERM")
    deadline = time.monotonic() + 20  # the server may record the final state a moment after the exit
    while True:
        [run] = _generate_runs_since(started)
        if run.state.type.value in ("CRASHED", "CANCELLED") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert run.state.type.value in ("CRASHED", "CANCELLED"), run.state


@pytest.mark.slow  # waits for the heartbeats to stop: about a minute and a half
def test_a_run_killed_with_sigkill_is_marked_crashed_by_the_shipped_automation(tmp_path, prefect_server):
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client

    from tasks.ops.deployment import CRASH_AUTOMATION, apply_crash_automation

    apply_crash_automation(crash_after_s=45)  # what `mindsmirror deploy --crash-after 45` creates
    try:
        started = datetime.now(timezone.utc)
        process = _slow_generation(tmp_path)
        [run] = _generate_runs_since(started)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 150
        with get_client(sync_client=True) as client:
            while not (state := client.read_flow_run(run.id).state).is_final():
                assert state.is_running() and time.monotonic() < deadline, state
                time.sleep(2)
        assert state.type.value == "CRASHED" and "no heartbeat for 45 s" in state.message
    finally:
        Automation.read(name=CRASH_AUTOMATION).delete()


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `&` in a non-interactive script does


def test_a_worker_started_in_the_background_stops_at_once_on_sigterm(tmp_path, prefect_server):
    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "worker", "signals-test", "--type", "process"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ), preexec_fn=_ignore_sigint)
    deadline = time.monotonic() + 90
    while "started" not in (tmp_path / "worker.log").read_text():
        assert worker.poll() is None and time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
        time.sleep(0.3)

    worker.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    worker.wait(timeout=60)
    log.close()

    assert time.monotonic() - stopped < 10, (tmp_path / "worker.log").read_text()
