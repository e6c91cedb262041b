"""The generation flow against the simulated teacher: exact counts, no double payment, resumability.

Real parts throughout: the `generate` Prefect flow on the session's Prefect server, the real openai
client over HTTP to the simulated teacher on 127.0.0.1, Parquet files and DuckDB in tmp_path.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import API_KEY, REPO

from flows.generate import generate
from flows.resume import resume
from simulator.server import start_simulator
from storage import Store, queries
from tasks.config import parse_config
from tasks.data.datasets import load_dataset

pytestmark = pytest.mark.usefixtures("prefect_server")


def _problems(train: int, test: int = 4):
    from tasks.config import DatasetConfig

    return load_dataset(DatasetConfig(name="arithmetic", arithmetic={"train": train, "test": test}))


@pytest.fixture
def teacher():
    """A simulated teacher that knows the answers to the first 40 built-in train problems."""
    rows = _problems(40)
    server = start_simulator(examples={row.input: row.label for row in rows}, answer_type="equation", seed=0)
    yield server
    server.close()


def _config(tmp_path: Path, url: str, **overrides) -> dict:
    config = {
        "dataset": {"name": "arithmetic", "arithmetic": {"train": 10, "test": 4}},
        "teacher": {"model": "gpt-3.5-turbo", "base_url": url, "n_cots": 3, "n_evals": 2,
                    "max_rpm": 60000, "max_tpm": 10_000_000, "max_concurrency": 8, "timeout_s": 5},
        "generate": {"batch_size": 4},
        "store": {"path": str(tmp_path / "store")},
    }
    for section, values in overrides.items():
        config[section] = {**config.get(section, {}), **values}
    return config


def _run(config: dict, **kwargs):
    return asyncio.run(generate(parse_config(config), show_progress=False, return_state=True, **kwargs))


def _counts(store_path: str) -> dict[str, int]:
    store = Store(store_path)
    report = queries.status(store)
    return {"cots": report.rows["cots"], "evaluations": report.rows["evaluations"],
            "calls_ok": report.calls_ok, "calls_failed": report.calls_failed}


def test_generation_stores_every_chain_of_thought_and_evaluation(tmp_path, teacher, api_key):
    config = _config(tmp_path, teacher.url)
    state = _run(config)
    assert state.is_completed(), state.message
    train_examples = 9  # 10 train problems, 1 of them carved out for validation
    counts = _counts(config["store"]["path"])
    assert counts["cots"] == train_examples * 3
    assert counts["evaluations"] == train_examples * 3 * 2
    assert counts["calls_ok"] == train_examples * (1 + 3)  # one CoT request, then one per CoT
    assert teacher.stats()["completions_served"] == train_examples * 3 + train_examples * 3 * 2


def test_rerun_after_success_makes_no_calls(tmp_path, teacher, api_key):
    config = _config(tmp_path, teacher.url)
    assert _run(config).is_completed()
    before = teacher.stats()["requests"]
    state = _run(config)
    assert state.is_completed()
    assert teacher.stats()["requests"] == before


def test_more_examples_and_more_cots_ask_only_for_what_is_missing(tmp_path, teacher, api_key):
    config = _config(tmp_path, teacher.url)
    assert _run(config).is_completed()
    first = teacher.stats()["requests"]
    stored = _counts(config["store"]["path"])

    grown = _config(tmp_path, teacher.url, dataset={"arithmetic": {"train": 20, "test": 4}},
                    teacher={"n_cots": 4})
    assert _run(grown).is_completed()
    counts = _counts(config["store"]["path"])
    train = len(queries.examples(Store(config["store"]["path"]), ["train"]))
    old = 9
    new = train - old
    # old examples: one top-up request for CoT #4, then one evaluation request for it;
    # new examples: one request for 4 CoTs, then one evaluation request per CoT.
    assert teacher.stats()["requests"] - first == old * (1 + 1) + new * (1 + 4)
    assert counts["cots"] == stored["cots"] + old + new * 4
    assert counts["evaluations"] == train * 4 * 2


def test_prompt_or_sampling_change_is_new_work_and_n1_fallback_stores_the_same_rows(tmp_path, teacher, api_key):
    config = _config(tmp_path, teacher.url, teacher={"use_n": False, "n_cots": 2, "n_evals": 1})
    assert _run(config).is_completed()
    assert teacher.stats()["requests"] == 9 * 2 + 9 * 2  # n=1 requests: 2 CoTs, then 1 evaluation each
    counts = _counts(config["store"]["path"])
    assert (counts["cots"], counts["evaluations"]) == (18, 18)

    hotter = _config(tmp_path, teacher.url, teacher={"use_n": False, "n_cots": 2, "n_evals": 1, "temperature": 1.0})
    assert _run(hotter).is_completed()
    assert _counts(config["store"]["path"])["cots"] == 36


def test_dry_run_plans_without_calling(tmp_path, teacher, api_key):
    config = _config(tmp_path, teacher.url, teacher={"prices": {"gpt-3.5-turbo": {"input": 0.5, "output": 1.5}}})
    state = _run(config, dry_run=True)
    assert state.is_completed()
    assert "planned 36 teacher requests" in state.message  # 9 CoT requests + 27 evaluation requests
    assert teacher.stats()["requests"] == 0


def test_faults_and_rate_limit_storms_still_end_in_a_complete_store(tmp_path, api_key):
    rows = _problems(20)
    server = start_simulator(
        examples={row.input: row.label for row in rows}, answer_type="equation", seed=1,
        error_500=0.15, drop=0.1, stall=0.05, stall_s=3.0, malformed=0.05, rpm=600,
    )
    try:
        config = _config(tmp_path, server.url, teacher={"timeout_s": 1, "max_attempts": 12, "max_rpm": 60000})
        state = _run(config)
        assert state.is_completed(), state.message
        counts = _counts(config["store"]["path"])
        assert (counts["cots"], counts["evaluations"]) == (27, 54)
        stats = server.stats()
        assert stats["by_status"].get("500", 0) > 0 and stats["rate_limited"] > 0
    finally:
        server.close()


def test_resume_retries_only_the_failed_requests(tmp_path, teacher, api_key):
    config = _config(tmp_path, teacher.url, teacher={"max_attempts": 1})
    teacher.set_faults(error_500=1.0)
    state = _run(config)
    assert state.is_failed() and "mindsmirror resume" in state.message
    assert _counts(config["store"]["path"])["calls_failed"] == 9

    teacher.set_faults(error_500=0.0)
    before = teacher.stats()["requests"]
    state = asyncio.run(resume(parse_config(config), show_progress=False, return_state=True))
    assert state.is_completed(), state.message
    counts = _counts(config["store"]["path"])
    assert (counts["cots"], counts["evaluations"]) == (27, 54)
    assert teacher.stats()["requests"] - before == 9 + 27


def test_budget_cap_stops_before_it_is_exceeded(tmp_path, teacher, api_key):
    cap = 0.002
    config = _config(tmp_path, teacher.url, teacher={"max_cost_usd": cap, "max_concurrency": 2})
    state = _run(config)
    assert state.is_failed() and "budget cap" in state.message
    assert queries.spent_usd(Store(config["store"]["path"])) <= cap
    assert 0 < _counts(config["store"]["path"])["calls_ok"] < 36


def _cli(*args, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=300, **kwargs,
    )


def test_api_key_reaches_no_file_and_no_log_line(tmp_path, teacher, api_key):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(_config(tmp_path, teacher.url)))
    result = _cli("--verbose", "generate", str(config_file), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert API_KEY not in result.stdout + result.stderr
    for path in (tmp_path / "store").rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path


def test_fatal_error_stops_with_one_line(tmp_path, api_key):
    config_file = tmp_path / "run.yaml"
    config = _config(tmp_path, "http://127.0.0.1:9/v1")
    config["teacher"]["api_key_env"] = "MINDSMIRROR_MISSING_KEY"
    config_file.write_text(yaml.safe_dump(config))
    result = _cli("generate", str(config_file))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "mindsmirror: the environment variable MINDSMIRROR_MISSING_KEY is not set: export your API key there "
        "(or name another variable in teacher.api_key_env)"
    ]


def test_kill_9_mid_run_loses_nothing_and_pays_twice_at_most_the_requests_in_flight(tmp_path, api_key):
    rows = _problems(40)
    server = start_simulator(examples={row.input: row.label for row in rows}, answer_type="equation",
                             seed=2, latency_ms=150)
    try:
        config = _config(tmp_path, server.url, dataset={"arithmetic": {"train": 40, "test": 4}})
        config_file = tmp_path / "run.yaml"
        config_file.write_text(yaml.safe_dump(config))
        errors = tmp_path / "first-run.stderr"
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "generate", str(config_file), "--no-progress"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=errors.open("w"), start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while server.stats()["completions_served"] < 60:
            assert time.monotonic() < deadline, "the first run served too few completions in 120 s"
            assert process.poll() is None, f"the first run ended before the kill: {errors.read_text()}"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        served_before = server.stats()["requests"]
        assert _counts(config["store"]["path"])["cots"] < 36 * 3, "the kill came after the run had finished"

        result = _cli("generate", str(config_file), "--no-progress")
        assert result.returncode == 0, result.stderr
        counts = _counts(config["store"]["path"])
        assert (counts["cots"], counts["evaluations"]) == (36 * 3, 36 * 3 * 2)
        paid = server.stats()["requests"]
        needed = 36 * (1 + 3)
        assert paid - needed <= config["teacher"]["max_concurrency"], (served_before, paid)
    finally:
        server.close()


def _writing(store: Path) -> bool:
    """Whether a part of answers is being written now (its temporary file exists)."""
    for table in ("cots", "evaluations"):
        try:
            if any(entry.name.startswith(".tmp-") for entry in os.scandir(store / table)):
                return True
        except FileNotFoundError:
            pass
    return False


def test_kill_9_during_a_group_commit_buys_again_at_most_a_window_of_requests(tmp_path, api_key):
    rows = _problems(40)
    server = start_simulator(examples={row.input: row.label for row in rows}, answer_type="equation",
                             seed=3, latency_ms=60)
    try:
        config = _config(tmp_path, server.url, dataset={"arithmetic": {"train": 40, "test": 4}},
                         teacher={"max_concurrency": 24}, generate={"batch_size": 20})
        config_file = tmp_path / "run.yaml"
        config_file.write_text(yaml.safe_dump(config))
        store = tmp_path / "store"
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "generate", str(config_file), "--no-progress"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 120
        # Killed the moment a group of answers is being written, after some groups are stored.
        while not (server.stats()["completions_served"] > 30 and _writing(store)):
            assert time.monotonic() < deadline and process.poll() is None, "no group commit caught in flight"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        assert _counts(str(store))["cots"] < 36 * 3, "the kill came after the run had finished"

        result = _cli("generate", str(config_file), "--no-progress")
        assert result.returncode == 0, result.stderr
        counts = _counts(str(store))
        assert (counts["cots"], counts["evaluations"]) == (36 * 3, 36 * 3 * 2)
        bought_twice = server.stats()["requests"] - 36 * (1 + 3)
        assert 0 <= bought_twice <= 24, bought_twice
    finally:
        server.close()
