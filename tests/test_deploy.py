"""The pipeline as Prefect deployments: `mindsmirror deploy`, process workers on the cpu and gpu pools.

Real parts throughout: the session's Prefect server on 127.0.0.1 (sqlite, its own PREFECT_HOME),
the work pools, deployments and global rate limit made by `mindsmirror deploy` from
deploy/prefect.yaml, `prefect worker start` processes that run each flow in a fresh process with
the repository checkout as working directory, the simulated teacher over HTTP, Parquet and DuckDB.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import API_KEY, REPO

from simulator.server import start_simulator
from storage import Store, queries
from tasks.config import DatasetConfig
from tasks.data.datasets import load_dataset
from tasks.ops.deployment import API_KEY_SECRET, DeployError, deploy_project, enter_checkout

WORKER_ENV = {
    "MINDSMIRROR_HOME": str(REPO),
    "OPENAI_API_KEY": API_KEY,
    "PREFECT_WORKER_QUERY_SECONDS": "1",  # default 10: a run would wait up to 10 s to be picked up
}


def _mindsmirror(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))


@pytest.fixture(scope="module")
def deployed(prefect_server, tmp_path_factory):
    """`mindsmirror deploy`, then one process worker per pool; yields the deploy output and worker logs."""
    result = _mindsmirror("deploy", "--rpm", "6000", "--limit-name", "teacher-rpm-deploy-test")
    assert result.returncode == 0, result.stdout + result.stderr
    logs = tmp_path_factory.mktemp("workers")
    for pool in ("cpu", "gpu"):
        _start_worker(pool, logs)
    try:
        yield result.stdout + result.stderr, logs
    finally:
        workers = list(WORKERS.values())
        for process, _ in workers:
            os.killpg(process.pid, signal.SIGTERM)
        for process, log in workers:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.close()


WORKERS: dict[str, tuple[subprocess.Popen, object]] = {}  # pool -> the worker process polling it, its log


def _start_worker(pool: str, logs: Path) -> None:
    log = open(logs / f"{pool}.log", "a")
    # Own session, so that stopping its group stops the worker and nothing of the test's.
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--limit", "1"],
        cwd=logs, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **WORKER_ENV},
        start_new_session=True,
    )
    WORKERS[pool] = (process, log)


def _kill_machine(process: subprocess.Popen) -> None:
    """SIGKILL a worker and every process below it, as a machine that dies takes them all: since
    Prefect 3.9.1 a process worker starts each flow run in a session of its own, out of the
    worker's group."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # the process ended while being read
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    doomed, frontier = [], [process.pid]
    while frontier:
        pid = frontier.pop()
        doomed.append(pid)
        frontier.extend(parents.get(pid, []))
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def _run(name: str, **parameters):
    """Run a deployment through the server and a worker; the finished flow run."""
    from prefect.deployments import run_deployment

    run = run_deployment(name, parameters=parameters, timeout=300, poll_interval=0.5)
    assert run.state is not None and run.state.is_final(), f"{name} did not finish: {run.state}"
    return run


def _mindsmirror_prefect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefect", *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))


def _wait_for_attempt(flow_run_id, attempt: int, timeout_s: float = 180):
    """The flow run once its `attempt`-th run has finished."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.run_count >= attempt and run.state.is_final():
                return run
            assert time.monotonic() < deadline, f"attempt {attempt} did not finish: {run.state}"
            time.sleep(0.5)


def _runs_of(deployment: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        DeploymentFilterName,
        FlowFilter,
        FlowFilterName,
    )

    flow, name = deployment.split("/")
    with get_client(sync_client=True) as client:
        found = client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])),
                                        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])))
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found[0].id])))


def _small_quickstart(store: Path) -> dict:
    config = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    config["dataset"]["arithmetic"] = {"train": 40, "test": 10, "seed": 0}
    config["store"]["path"] = str(store)
    config["train"].update(stage1_steps=4, stage2_steps=8, eval_every=4, batch_size=8)
    return config


@pytest.mark.slow
def test_deploy_creates_pools_limit_and_every_deployment(deployed):
    output, _ = deployed
    assert "Traceback" not in output
    assert "work pools: cpu, gpu" in output
    assert "rate limit teacher-rpm-deploy-test: 6000 teacher requests/min" in output
    for flow in ("distill", "generate", "resume", "train", "evaluate"):
        pool = "gpu" if flow in ("train", "evaluate") else "cpu"
        assert f"{flow}/quickstart (pool {pool})" in output
    assert "generate/svamp (pool cpu, 1 schedule(s), 0 active)" in output  # a paid regeneration is opt-in

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name("teacher-rpm-deploy-test")
        assert limit.slot_decay_per_second == pytest.approx(100.0) and limit.limit == 100
        assert client.read_work_pool("gpu").base_job_template["variables"]["properties"]["env"]["default"]

    again = _mindsmirror("deploy")  # idempotent: updates in place, no rate limit without --rpm
    assert again.returncode == 0, again.stdout + again.stderr
    assert "rate limit" not in again.stdout and "10 deployments:" in again.stdout


@pytest.mark.slow
def test_distill_deployment_hands_training_and_evaluation_to_the_gpu_pool(deployed, tmp_path):
    store = tmp_path / "store"
    started = time.monotonic()
    run = _run("distill/quickstart", config=_small_quickstart(store))
    assert run.state.is_completed(), run.state.message
    elapsed = time.monotonic() - started

    for child, stage in (("train/quickstart", "train"), ("evaluate/quickstart", "evaluate")):
        runs = _runs_of(child)
        assert len(runs) == 1 and runs[0].state.is_completed()
        assert runs[0].work_pool_name == "gpu" and runs[0].parent_task_run_id is not None  # in the parent's run tree
        assert runs[0].idempotency_key == f"{run.id}-{stage}"
    report = queries.status(Store(str(store)))
    examples = 40  # generate.splits: train and validation, 40 problems in all
    assert report.rows["cots"] == examples * 3 and report.rows["evaluations"] == examples * 3 * 2
    assert report.calls_failed == 0
    arms = {row.arm for row in queries.latest_results(Store(str(store)))}
    assert arms == {"standard-finetune", "cot-3-selfeval", "baseline:constant", "teacher"}
    assert elapsed < 180

    # Retrying the parent (the UI's Retry button) finds the training it already started: no second run.
    retry = _mindsmirror_prefect("flow-run", "retry", str(run.id))
    assert retry.returncode == 0, retry.stdout + retry.stderr
    retried = _wait_for_attempt(run.id, 2)
    assert retried.state.is_completed(), retried.state.message
    assert len(_runs_of("train/quickstart")) == 1 and len(_runs_of("evaluate/quickstart")) == 1


@pytest.mark.slow
def test_failed_generation_resumes_through_the_deployment_paying_once(deployed, tmp_path):
    rows = load_dataset(DatasetConfig(name="arithmetic", arithmetic={"train": 20, "test": 4}))
    teacher = start_simulator(examples={row.input: row.label for row in rows}, answer_type="equation", seed=3)
    config = {
        "dataset": {"name": "arithmetic", "arithmetic": {"train": 20, "test": 4}},
        "teacher": {"model": "gpt-3.5-turbo", "base_url": teacher.url, "n_cots": 3, "n_evals": 2,
                    "max_rpm": 60000, "max_tpm": 10_000_000, "max_concurrency": 4, "timeout_s": 5,
                    "max_attempts": 1},
        "generate": {"batch_size": 6},
        "store": {"path": str(tmp_path / "store")},
    }
    store = Store(config["store"]["path"])
    try:
        teacher.set_faults(error_500=0.4)  # the teacher fails a share of requests from the start
        failed = _run("generate/quickstart", config=config)
        assert failed.state.is_failed() and "mindsmirror resume" in failed.state.message
        broken = queries.status(store)
        assert broken.calls_failed > 0 and broken.calls_ok > 0  # stopped midway: some stored, some failed
        teacher.set_faults(error_500=0.0)

        resumed = _run("resume/quickstart", config=config)
        assert resumed.state.is_completed(), resumed.state.message
        again = _run("generate/quickstart", config=config)  # what a scheduled regeneration does
        assert again.state.is_completed(), again.state.message
        stats = teacher.stats()
    finally:
        teacher.close()

    train = 18  # 20 problems, 2 carved out for validation
    report = queries.status(store)
    assert report.rows["cots"] == train * 3 and report.rows["evaluations"] == train * 3 * 2
    assert report.failed_requests == 0
    needed = train * (1 + 3)  # one CoT request (n=3), then one evaluation request (n=2) per CoT
    assert report.calls_ok == needed
    # Every request the teacher received was either needed once or recorded as failed: none paid twice.
    assert stats["requests"] == needed + report.calls_failed
    assert stats["by_status"]["200"] == needed
    served = stats["served"]
    assert sorted(served) == ["cot", "evaluation"]
    assert set(served["cot"].values()) == {3} and len(served["cot"]) == train
    assert set(served["evaluation"].values()) == {3 * 2}


@pytest.mark.slow
def test_workers_print_no_traceback(deployed):
    _, logs = deployed
    for log in logs.glob("*.log"):
        text = log.read_text()
        assert "Traceback" not in text, text


def test_pull_step_enters_the_checkout_named_by_mindsmirror_home(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINDSMIRROR_HOME", str(REPO))
    assert enter_checkout() == {"directory": str(REPO)} and Path.cwd() == REPO


def test_pull_step_falls_back_to_the_editable_checkout(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MINDSMIRROR_HOME", raising=False)
    assert enter_checkout() == {"directory": str(REPO)}


def test_pull_step_refuses_a_folder_that_is_not_a_checkout(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINDSMIRROR_HOME", str(tmp_path))
    with pytest.raises(DeployError, match="is not a mindsmirror checkout.*export MINDSMIRROR_HOME"):
        enter_checkout()
    assert Path.cwd() == tmp_path


def test_deploy_without_a_server_says_how_to_start_one():
    closed = "http://127.0.0.1:9/api"  # the discard port: nothing listens
    result = subprocess.run([sys.executable, "-m", "flows.cli", "deploy"], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PREFECT_API_URL": closed})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"mindsmirror: the Prefect server at {closed} does not answer (ConnectError); "
        "start it with `prefect server start` or fix PREFECT_API_URL"
    ]


def _nightly(client):
    deployment = client.read_deployment_by_name("generate/svamp")
    [schedule] = deployment.schedules
    return deployment, schedule


@pytest.mark.slow  # three deploys: about a minute on 2 busy cores
def test_redeploying_keeps_a_schedule_someone_turned_on_and_its_id(prefect_server, monkeypatch):
    from prefect.client.orchestration import get_client

    monkeypatch.chdir(REPO)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    deploy_project(REPO / "deploy" / "prefect.yaml")
    with get_client(sync_client=True) as client:
        deployment, schedule = _nightly(client)
        client.update_deployment_schedule(deployment.id, schedule.id, active=True)  # what `schedule resume` does

    summary = deploy_project(REPO / "deploy" / "prefect.yaml")  # as after an edit

    with get_client(sync_client=True) as client:
        _, again = _nightly(client)
        assert (again.id, again.active) == (schedule.id, True)
        client.update_deployment_schedule(deployment.id, schedule.id, active=False)
    assert "generate/svamp (pool cpu, 1 schedule(s), 1 active)" in summary.describe()
    deploy_project(REPO / "deploy" / "prefect.yaml")
    with get_client(sync_client=True) as client:
        assert _nightly(client)[1].active is False  # paused stays paused too


@pytest.mark.slow
def test_deploy_keeps_the_api_key_in_a_secret_block_that_cpu_runs_read(prefect_server, monkeypatch):
    import asyncio

    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.workers.process import ProcessJobConfiguration

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    summary = deploy_project(REPO / "deploy" / "prefect.yaml", gpus=2)

    assert Secret.load(API_KEY_SECRET).get() == API_KEY
    assert f"Secret block '{API_KEY_SECRET}'" in summary.describe() and API_KEY not in summary.describe()
    with get_client(sync_client=True) as client:
        cpu, gpu = client.read_work_pool("cpu"), client.read_work_pool("gpu")
        deployment = client.read_deployment_by_name("generate/svamp")
    assert gpu.concurrency_limit == 2 and cpu.concurrency_limit is None
    assert API_KEY not in cpu.model_dump_json() + deployment.model_dump_json()  # only a reference is stored

    async def run_environment(pool):  # what the worker resolves when it starts a run
        async with get_client() as client:
            job = await ProcessJobConfiguration.from_template_and_values(pool.base_job_template, {}, client=client)
        return job.env

    assert asyncio.run(run_environment(cpu))["OPENAI_API_KEY"] == API_KEY
    assert "OPENAI_API_KEY" not in asyncio.run(run_environment(gpu))


def _children(parent_id, stage: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC)
    return [run for run in runs if (run.idempotency_key or "").startswith(f"{parent_id}-{stage}")]


@pytest.mark.slow
def test_a_retried_parent_trains_again_after_its_gpu_worker_died(deployed, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Crashed

    _, logs = deployed
    config = _small_quickstart(tmp_path / "store")
    config["train"].update(stage1_steps=40, stage2_steps=80, eval_every=40)  # long enough to be cut
    parent = run_deployment("distill/quickstart", parameters={"config": config}, timeout=0)
    deadline = time.monotonic() + 240
    while not any(run.state.is_running() for run in _children(parent.id, "train")):
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.5)
    worker, log = WORKERS.pop("gpu")
    _kill_machine(worker)  # the GPU machine dies mid-training, and its run with it
    log.close()
    [crashed] = _children(parent.id, "train")
    with get_client(sync_client=True) as client:  # what the zombie automation does once heartbeats stop
        client.set_flow_run_state(crashed.id, Crashed(message="its worker stopped sending heartbeats"), force=True)
    failed = _wait_for_attempt(parent.id, 1)
    assert failed.state.is_failed() and "training did not complete" in failed.state.message

    _start_worker("gpu", logs)  # a replacement GPU worker, then the UI's Retry on the parent
    retry = _mindsmirror_prefect("flow-run", "retry", str(parent.id))
    assert retry.returncode == 0, retry.stdout + retry.stderr
    retried = _wait_for_attempt(parent.id, 2, timeout_s=300)

    assert retried.state.is_completed(), retried.state.message
    trains = _children(parent.id, "train")
    assert [run.state.type.value for run in trains] == ["CRASHED", "COMPLETED"]
    assert trains[1].idempotency_key == f"{parent.id}-train-attempt-2"
    [evaluation] = _children(parent.id, "evaluate")
    assert evaluation.state.is_completed()
