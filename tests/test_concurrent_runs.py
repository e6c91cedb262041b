"""Two generate runs at once on one store, sharing one teacher RPM limit held by the Prefect server."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO
from prefect.client.orchestration import get_client

from simulator.server import start_simulator
from storage import Store, queries
from tasks.config import DatasetConfig
from tasks.data.datasets import load_dataset

pytestmark = pytest.mark.usefixtures("prefect_server")

SHARED_RPM = 120  # 2 requests/s for both runs together


def _most_in_any_window(timestamps: list[float], seconds: float) -> int:
    times = sorted(timestamps)
    most, start = 0, 0
    for end, moment in enumerate(times):
        while moment - times[start] >= seconds:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_two_runs_on_one_store_share_the_rpm_limit_and_pay_once(tmp_path, api_key):
    rows = load_dataset(DatasetConfig(name="arithmetic", arithmetic={"train": 10, "test": 2}))
    server = start_simulator(examples={row.input: row.label for row in rows}, answer_type="equation",
                             latency_ms=50)
    name = f"teacher-rpm-{tmp_path.name}"
    # Slots free up at rpm/60 per second; a burst of at most 2 slots.
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 2, slot_decay_per_second=SHARED_RPM / 60)
    config = {
        "dataset": {"name": "arithmetic", "arithmetic": {"train": 10, "test": 2}},
        "teacher": {"model": "gpt-3.5-turbo", "base_url": server.url, "n_cots": 2, "n_evals": 1,
                    "max_rpm": 6000, "max_concurrency": 4, "shared_rate_limit": name},
        "generate": {"batch_size": 3},
        "store": {"path": str(tmp_path / "store")},
    }
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(config))
    try:
        runs = [
            subprocess.Popen([sys.executable, "-m", "flows.cli", "generate", str(config_file), "--no-progress"],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ))
            for _ in range(2)
        ]
        outputs = [run.communicate(timeout=240) for run in runs]
        assert [run.returncode for run in runs] == [0, 0], outputs
        stats = server.stats()
    finally:
        server.close()

    train = 9  # 10 problems, one carved out for validation
    needed = train * (1 + 2)  # one CoT request, then one evaluation request per CoT
    assert stats["requests"] == needed  # each request paid once, whichever run sent it
    accepted = stats["accepted_timestamps"]
    span = max(accepted) - min(accepted)
    # Within the limit: the burst plus what the slots' decay allows, over any window and overall.
    assert _most_in_any_window(accepted, 5.0) <= 2 + SHARED_RPM / 60 * 5.0
    assert len(accepted) <= 2 + SHARED_RPM / 60 * span + 1

    report = queries.status(Store(config["store"]["path"]))
    assert report.rows["cots"] == train * 2 and report.rows["evaluations"] == train * 2
    assert report.calls_ok == needed and report.calls_failed == 0
    leases = [path.name for path in (tmp_path / "store" / "_claims").iterdir()
              if path.is_file() and not path.name.startswith("done-")]
    assert leases == []  # each lease went once its answer was stored


def test_a_missing_shared_limit_stops_the_run_before_any_call(tmp_path, api_key):
    import asyncio

    from flows.generate import generate
    from tasks.config import parse_config

    server = start_simulator(answer_type="equation")
    try:
        config = parse_config({
            "dataset": {"name": "arithmetic", "arithmetic": {"train": 10, "test": 2}},
            "teacher": {"base_url": server.url, "n_cots": 1, "n_evals": 1, "shared_rate_limit": "no-such-limit"},
            "store": {"path": str(tmp_path / "store")},
        })
        state = asyncio.run(generate(config, show_progress=False, return_state=True))
        assert state.is_failed()
        assert "mindsmirror deploy --rpm N --limit-name no-such-limit" in state.message
        assert server.stats()["requests"] == 0
    finally:
        server.close()
