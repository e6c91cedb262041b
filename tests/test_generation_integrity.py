"""Generation against servers that differ from OpenAI's, and against a full disk: no paid answer is
lost, no number reported is wrong.

Real parts throughout: the `generate` and `resume` flows on the session's Prefect server, the real
openai client over HTTP to the simulated teacher (with the matching deviation), Parquet and DuckDB.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from flows.generate import generate
from flows.resume import resume
from simulator.server import Deviations, start_simulator
from storage import Store, journal, queries
from tasks.config import DatasetConfig, parse_config
from tasks.data.datasets import load_dataset
from tasks.generation import open_session, plan_generation, sync_examples
from tasks.teacher.endpoint import open_endpoint

pytestmark = pytest.mark.usefixtures("prefect_server")

TRAIN = 9  # 10 train problems, 1 of them carved out for validation


def _problems(train: int):
    return load_dataset(DatasetConfig(name="arithmetic", arithmetic={"train": train, "test": 4}))


def _simulator(train: int = 40, **options):
    return start_simulator(examples={row.input: row.label for row in _problems(train)}, answer_type="equation",
                           seed=0, **options)


def _config(tmp_path: Path, url: str, train: int = 10, **teacher) -> dict:
    return {
        "dataset": {"name": "arithmetic", "arithmetic": {"train": train, "test": 4}},
        "teacher": {"model": "gpt-3.5-turbo", "base_url": url, "n_cots": 3, "n_evals": 2, "max_rpm": 60000,
                    "max_tpm": 10_000_000, "max_concurrency": 8, "timeout_s": 5, **teacher},
        "generate": {"batch_size": 4},
        "store": {"path": str(tmp_path / "store")},
    }


def _run(config: dict, flow=generate, **kwargs):
    return asyncio.run(flow(parse_config(config), show_progress=False, return_state=True, **kwargs))


def _calls(store: Store) -> list[dict]:
    return store.fetch_arrow("SELECT * FROM calls").to_pylist()


def _stored_keys(store: Store) -> set[str]:
    _, rows = store.fetch("SELECT key FROM cots UNION ALL SELECT key FROM evaluations")
    return {key for (key,) in rows}


def test_a_server_that_ignores_n_gets_everything_asked_again_one_at_a_time(tmp_path, api_key, caplog):
    caplog.set_level(logging.WARNING)
    with _simulator(deviations=Deviations(ignore_n=True)) as server:
        config = _config(tmp_path, server.url)
        state = _run(config)
        assert state.is_completed(), state.message
        store = Store(config["store"]["path"])
        report = queries.status(store)
        assert (report.rows["cots"], report.rows["evaluations"]) == (TRAIN * 3, TRAIN * 3 * 2)
        stored = _stored_keys(store)
        assert all(set(call["keys"]) <= stored for call in _calls(store) if call["status"] == "ok")
        warnings = [r.message for r in caplog.records if "ignores `n`" in r.message]
        assert len(warnings) == 1 and "teacher.use_n: false" in warnings[0]
        # every sample was served exactly once: the first n=3 request brought 1, then n=1 requests
        assert server.stats()["completions_served"] == TRAIN * 3 + TRAIN * 3 * 2


def test_a_short_reply_leaves_the_rest_marked_missing_and_resume_clears_them_per_sample(tmp_path, api_key):
    with _simulator(deviations=Deviations(ignore_n=True)) as server:
        # one-sample requests that fail after the first sample: the rest of each request is missing
        config = _config(tmp_path, server.url, n_evals=0, use_n=False, max_attempts=1)
        server.set_faults(error_500=0.5)
        state = _run(config)
        store = Store(config["store"]["path"])
        before = queries.status(store)
        assert state.is_failed() and "mindsmirror resume" in state.message
        missing = TRAIN * 3 - before.rows["cots"]
        assert missing > 0 and before.failed_samples == missing and before.failed_requests > 0
        assert all(set(call["keys"]) <= _stored_keys(store) for call in _calls(store) if call["status"] == "ok")

        server.set_faults(error_500=0.0)
        state = _run(config, flow=resume)
        assert state.is_completed(), state.message
        after = queries.status(store)
        assert after.rows["cots"] == TRAIN * 3
        assert (after.failed_requests, after.failed_samples) == (0, 0)


def test_a_content_filter_refusal_is_stored_with_its_reason_and_stops_nothing_else(tmp_path, api_key):
    problems = [row for row in _problems(10) if row.split == "train"]
    refused = problems[2]
    with _simulator(deviations=Deviations(content_filter=(refused.input,))) as server:
        config = _config(tmp_path, server.url)
        state = _run(config)
        assert state.is_completed(), state.message
        assert "3 refused by the content filter" in state.message
        store = Store(config["store"]["path"])
        _, rows = store.fetch("SELECT example_id, parse_error, finish_reason FROM cots WHERE example_id = ?",
                              [refused.example_id])
        assert len(rows) == 3
        assert all("content filter" in error and "content management policy" in error and finish == "content_filter"
                   for _, error, finish in rows)
        report = queries.status(store)
        assert report.rows["cots"] == TRAIN * 3 and report.rows["evaluations"] == (TRAIN - 1) * 3 * 2
        requests = server.stats()["requests"]
        assert _run(config).is_completed() and server.stats()["requests"] == requests  # not bought again


def test_without_usage_the_cost_cap_says_what_was_spent_and_that_it_is_estimated(tmp_path, api_key):
    with _simulator(deviations=Deviations(no_usage=True)) as server:
        config = _config(tmp_path, server.url, max_cost_usd=0.002, max_concurrency=4)
        state = _run(config)
        store = Store(config["store"]["path"])
        spent = queries.spent_usd(store)
        assert state.is_failed() and "budget cap reached" in state.message
        assert 0 < spent <= 0.002
        assert f"${spent:.4f} spent" in state.message and "estimates" in state.message
        report = queries.status(store)
        assert report.calls_usage_estimated == report.calls_ok > 0
        assert report.as_dict()["calls"]["calls with estimated tokens (no usage from the server)"] == report.calls_ok


def test_stored_latency_is_split_into_queue_time_and_server_time(tmp_path, api_key):
    with _simulator(latency_ms=100) as server:
        config = _config(tmp_path, server.url, max_concurrency=2, n_evals=0)
        assert _run(config).is_completed()
    store = Store(config["store"]["path"])
    calls = _calls(store)
    assert all(0.09 <= call["server_s"] < 1.0 for call in calls)
    assert all(call["queue_s"] + call["server_s"] == pytest.approx(call["latency_s"]) for call in calls)
    # 9 requests through 2 slots: most waited for a slot, and that wait is not server time
    assert max(call["queue_s"] for call in calls) >= 0.2
    report = queries.status(store)
    assert report.server_p50_s < report.latency_p50_s


@pytest.mark.parametrize("use_n", [True, False])
def test_a_finished_run_ends_its_progress_at_total_of_total(tmp_path, api_key, use_n):
    # max_tokens 18 truncates some chains of thought before their answer: those get no evaluations
    with _simulator(ramble_rate=0.0) as server:
        config = parse_config(_config(tmp_path, server.url, use_n=use_n, max_tokens=18))
        store = Store(config.store.path)

        async def run():
            examples, answer_type = sync_examples(store, config)
            plan = plan_generation(store, config, answer_type, examples)
            with open_endpoint(config.teacher) as endpoint:
                async with open_session(store, config, answer_type, endpoint, plan.progress_total, False) as session:
                    await session.dispatch([plan.work], lambda batch: asyncio.gather(
                        *(session.run_example(work) for work in batch)))
            return plan, session

        plan, session = asyncio.run(run())
    report = queries.status(store)
    assert 0 < report.cots_unparseable < report.rows["cots"]  # the case that used to end short
    assert plan.progress_total == TRAIN + TRAIN * 3
    assert session.progress.completed == session.progress.total == TRAIN + report.cots_parsed


def test_admission_is_per_request_so_slow_requests_hold_up_no_batch(tmp_path, api_key):
    slow_s = 6.0
    train = [row for row in _problems(30) if row.split == "train"]  # 27, in batches of 8
    with _simulator(train=30) as server:
        # A CoT of batches 1 and 2 takes 6 s; 4 request slots. Admission per batch (2 batches at a
        # time) kept batches 3 and 4 waiting for those two requests. (Not the run's very first
        # request: until the teacher has answered once, requests go one at a time.)
        server.set_faults(slow_prompts=(train[1].input, train[8].input), slow_s=slow_s)
        config = _config(tmp_path, server.url, train=30, max_concurrency=4, n_evals=0, timeout_s=20)
        config["generate"]["batch_size"] = 8
        assert _run(config).is_completed()
        stamps = server.stats()["accepted_timestamps"]
    assert len(stamps) == 27
    assert all(stamp - stamps[0] < slow_s for stamp in stamps)  # every request went out meanwhile


def test_429s_without_retry_after_slow_every_caller_down_instead_of_storming(tmp_path, api_key):
    with _simulator(train=20, rpm=600, burst=1, deviations=Deviations(no_retry_after=True)) as server:
        config = _config(tmp_path, server.url, train=20, max_attempts=20)
        state = _run(config)
        assert state.is_completed(), state.message
        stats = server.stats()
    needed = 18 * (1 + 3)
    assert stats["rate_limited"] > 0  # the client did not know the server's limit
    # without a shared pause every waiting request retried on its own schedule: about 3x the requests
    assert stats["requests"] <= 1.5 * needed, stats["requests"]


def _mount_tmpfs(folder: Path, size: str) -> None:
    if shutil.which("mount") is None:
        pytest.skip("no mount command: the disk-full test needs a small tmpfs")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {result.stderr.strip()}")


def test_a_full_disk_stops_dispatch_and_keeps_every_paid_answer(tmp_path, api_key, monkeypatch):
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount_tmpfs(disk, "512k")
    # Answers written in groups take less room than one part each: ballast makes the disk fill mid-run.
    (disk / "ballast").write_bytes(bytes(192 * 1024))
    monkeypatch.setenv("MINDSMIRROR_JOURNAL_DIR", str(tmp_path / "journal"))
    try:
        with _simulator() as server:
            config = _config(tmp_path, server.url, train=20)
            config["store"]["path"] = str(disk / "store")
            state = _run(config)
            store = Store(config["store"]["path"])
            assert state.is_failed() and "failed" in state.message, state.message
            assert "No space left on device" in state.message and "pending" in state.message
            paid = server.stats()["completions_served"]
            journalled = journal.pending_files(store)
            assert journalled, state.message
            lines = [line for path in journalled for line in path.read_text().splitlines()]
            journalled_keys = {row["key"] for line in lines if '"table": "calls"' not in line[:20]
                               for row in json.loads(line)["rows"]}
            # A write retried once nothing was in flight may have gone through (removed leases free
            # space): those answers are stored, and the journal's copies replay as duplicates.
            pending = len(journalled_keys - queries.stored_sample_keys(store, journalled_keys))
            report = queries.status(store)
            assert report.rows["cots"] + report.rows["evaluations"] + pending >= paid
            assert f"{pending} answers" in state.message or pending == 0
            requests_before = server.stats()["requests"]

            subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
            state = _run(config)
            assert state.is_completed(), state.message
            assert not journal.pending_files(store)
            report = queries.status(store)
            assert (report.rows["cots"], report.rows["evaluations"]) == (18 * 3, 18 * 3 * 2)
            # nothing received was bought again beyond the requests that were in flight when it filled
            needed = 18 * (1 + 3)
            assert server.stats()["requests"] - needed <= config["teacher"]["max_concurrency"], requests_before
    finally:
        for _ in range(10):
            if subprocess.run(["umount", str(disk)], capture_output=True).returncode == 0:
                break
            time.sleep(0.5)
        else:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)  # detach it once nothing uses it


def test_answers_and_verdicts_with_junk_glued_on_are_read_not_rejected(tmp_path, api_key):
    with _simulator(deviations=Deviations(junk_rate=1.0), wrong_rate=0.0) as server:
        config = _config(tmp_path, server.url, max_tokens=512)
        state = _run(config)
        assert state.is_completed(), state.message
        store = Store(config["store"]["path"])
        _, cots = store.fetch("SELECT text, answer, parse_error FROM cots")
        _, evaluations = store.fetch("SELECT text, verdict, parse_error FROM evaluations")
    assert len(cots) == TRAIN * 3 and len(evaluations) == TRAIN * 3 * 2
    assert all(error is None and answer for _, answer, error in cots), [c for c in cots if c[2]][:2]
    assert all(error is None and verdict for _, verdict, error in evaluations), [e for e in evaluations if e[2]][:2]
    # the junk really is there, after the answer sentence and the verdict
    assert sum(not text.rstrip().endswith(answer) for text, answer, _ in cots) == len(cots)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_closed_port_stops_the_run_within_30_s_in_one_line_that_names_the_url(tmp_path, api_key):
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    started = time.perf_counter()
    state = _run(_config(tmp_path, url, train=200))
    elapsed = time.perf_counter() - started
    assert state.is_failed() and url in state.message and "\n" not in state.message, state.message
    assert elapsed < 30, elapsed


@pytest.mark.parametrize("fault", ["wrong key", "unknown model"])
def test_a_wrong_key_or_an_unknown_model_reaches_the_server_once(tmp_path, api_key, fault):
    options = {"api_key": "sk-another-key"} if fault == "wrong key" else {"models": ("another-model",)}
    with _simulator(train=40, **options) as server:
        state = _run(_config(tmp_path, server.url, train=40))
        requests = server.stats()["requests"]
    assert state.is_failed() and requests == 1, (state.message, requests)


def test_the_progress_line_says_when_the_client_side_limit_is_what_the_run_waits_on(
        tmp_path, api_key, capsys, monkeypatch):
    """An instant server and a low teacher.max_tpm: the run is paced by the config, not the server."""
    monkeypatch.setenv("COLUMNS", "200")  # the whole progress line, as a wide terminal shows it
    with _simulator(train=10) as server:
        config = parse_config(_config(tmp_path, server.url, n_cots=1, n_evals=0, max_tokens=64, max_tpm=30_000))
        store = Store(config.store.path)

        async def run():
            examples, answer_type = sync_examples(store, config)
            plan = plan_generation(store, config, answer_type, examples)
            with open_endpoint(config.teacher) as endpoint:
                async with open_session(store, config, answer_type, endpoint, plan.progress_total) as session:
                    await session.dispatch([plan.work], lambda batch: asyncio.gather(
                        *(session.run_example(work) for work in batch)))

        asyncio.run(run())
    assert "waiting on teacher.max_tpm (client-side limit, not the server)" in capsys.readouterr().err


def test_attempts_that_time_out_after_they_were_sent_are_recorded_as_possibly_billed(tmp_path, api_key):
    """A server that stalls past timeout_s may still bill the request: each abandoned attempt's
    estimated cost is recorded in `calls`, shown by status and counted against max_cost_usd."""
    with _simulator(train=10) as server:
        server.set_faults(stall=0.25, stall_s=3.0)
        config = _config(tmp_path, server.url, n_evals=0, timeout_s=1, max_attempts=10)
        assert _run(config).is_completed()
        deadline = time.monotonic() + 10
        while server.stats()["in_flight"] and time.monotonic() < deadline:  # stalls still holding on
            time.sleep(0.1)
        stalled = server.stats()["by_status"].get("stalled", 0)
    store = Store(config["store"]["path"])
    report = queries.status(store)
    assert stalled > 0 and report.abandoned_attempts == stalled
    assert report.possibly_billed_usd > 0
    assert queries.spent_usd(store) == pytest.approx(report.cost_usd + report.possibly_billed_usd)
    assert report.as_dict()["calls"]["possibly billed: timed-out attempts"] == stalled
