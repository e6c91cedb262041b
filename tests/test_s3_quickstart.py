"""The quickstart's whole job on an s3:// store, as Prefect deployments: a cpu worker and a gpu
worker, each with its own copy of the code, working directory, Prefect home and student cache, so
they share nothing but the bucket (a real S3 server, moto) and the Prefect server. Generation runs
on the cpu worker, training and evaluation on the gpu worker, and each finds what the other wrote
through the bucket. The same job on a local folder is timed beside it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, S3_SECRET

from storage import Store, queries

CODE = ("flows", "tasks", "storage", "simulator", "examples", "deploy", "pyproject.toml")


def _machine(root: Path, pool: str) -> tuple[subprocess.Popen, Path]:
    """A worker on `pool` with its own checkout, working directory, Prefect home and cache: its log."""
    checkout, home = root / "checkout", root / "home"
    home.mkdir(parents=True)
    for name in CODE:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, checkout / name)
    env = {**os.environ, "MINDSMIRROR_HOME": str(checkout), "PYTHONPATH": str(checkout),
           "PREFECT_HOME": str(home / "prefect"), "MINDSMIRROR_CACHE": str(home / "cache"),
           "PREFECT_WORKER_QUERY_SECONDS": "1"}
    log = root / "worker.log"
    process = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--limit", "1"],
                               cwd=home, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    return process, log


def _quickstart(store: str) -> dict:
    config = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    config["dataset"]["arithmetic"] = {"train": 40, "test": 10, "seed": 0}
    config["store"]["path"] = store
    config["train"].update(stage1_steps=4, stage2_steps=8, eval_every=4, batch_size=8)
    return config


def _distill(store: str) -> float:
    """The quickstart deployment on `store`: its wall time in seconds."""
    from prefect.deployments import run_deployment

    started = time.monotonic()
    run = run_deployment("distill/quickstart", parameters={"config": _quickstart(store)}, timeout=900,
                         poll_interval=0.5)
    assert run.state is not None and run.state.is_completed(), run.state
    return time.monotonic() - started


@pytest.mark.slow
def test_the_quickstart_runs_on_s3_with_a_cpu_and_a_gpu_worker_that_share_only_the_bucket(
        tmp_path, s3_bucket, prefect_server):
    deployed = subprocess.run([sys.executable, "-m", "flows.cli", "deploy"], cwd=REPO, capture_output=True,
                              text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    workers = [_machine(tmp_path / "cpu-machine", "cpu"), _machine(tmp_path / "gpu-machine", "gpu")]
    try:
        local = _distill(str(tmp_path / "local-store"))
        on_s3 = _distill(f"{s3_bucket}/runs/quickstart")
    finally:
        for process, _ in workers:
            os.killpg(process.pid, signal.SIGTERM)
        for process, _ in workers:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
    print(f"\nquickstart (40 problems) through the deployments: local folder {local:.1f} s, s3:// {on_s3:.1f} s, "
          f"ratio {on_s3 / local:.2f}")

    store = Store(f"{s3_bucket}/runs/quickstart")
    report = queries.status(store)
    assert report.rows["cots"] == 40 * 3 and report.rows["evaluations"] == 40 * 3 * 2 and report.calls_failed == 0
    results = queries.latest_results(store)
    assert {row.arm for row in results} == {"standard-finetune", "cot-3-selfeval", "baseline:constant", "teacher"}
    assert {row.checkpoint.rsplit("/stage2/", 1)[0] for row in results if row.metric == "accuracy"
            and row.split == "test" and not row.arm.startswith(("baseline", "teacher"))} == {
        f"{s3_bucket}/runs/quickstart/students/{arm}" for arm in ("standard-finetune", "cot-3-selfeval")}

    import boto3

    bucket = s3_bucket.removeprefix("s3://")
    s3 = boto3.client("s3")
    keys = [item["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for item in page.get("Contents", [])]
    for name in ("report.csv", "report.png", "students/cot-3-selfeval/trained.json",
                 "students/cot-3-selfeval/evaluated.json"):
        assert f"runs/quickstart/{name}" in keys
    assert not [key for key in keys if S3_SECRET.encode() in s3.get_object(Bucket=bucket, Key=key)["Body"].read()]
    # The students were trained on the gpu machine; the cpu machine never held one.
    cpu, gpu = tmp_path / "cpu-machine", tmp_path / "gpu-machine"
    assert not list((cpu / "home").rglob("mindsmirror.json")) and list((gpu / "home").rglob("mindsmirror.json"))
    assert not list((cpu / "checkout").rglob("*.parquet")) and not list((gpu / "checkout").rglob("*.parquet"))
    for machine in (cpu, gpu):
        assert S3_SECRET not in (machine / "worker.log").read_text()
