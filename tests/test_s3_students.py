"""Students of an s3:// store live in the bucket: each checkpoint is uploaded whole as it is saved,
a training run killed with SIGKILL resumes from the last uploaded checkpoint on another machine (a
fresh cache and working directory), and evaluate, predict and export on other machines read the
selected checkpoint from the bucket. Against a real S3 server (moto) through s3fs and boto3.

The test through the CLI (generate, a SIGKILL, --resume, evaluate, predict, export on five
"machines") is slow; the default ones check the same uploads and downloads on the training loop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, S3_SECRET
from transformers import AutoModelForSeq2SeqLM

from flows.cli import main
from storage import Store, queries
from tasks.student.checkpoints import RECORD, STATE
from tasks.student.folders import ArmFolder
from tasks.student.training import train_student

STEPS = 40
CONFIG = {
    "dataset": {"name": "arithmetic", "arithmetic": {"train": 40, "test": 8, "seed": 0, "max_number": 20}},
    "teacher": {"model": "simulated-teacher", "simulate": True, "n_cots": 1, "n_evals": 1,
                "max_rpm": 100000, "max_tpm": 100000000},
    "generate": {"splits": ["train", "validation"]},
    "student": {"model": "tiny", "max_input_length": 64, "max_target_length": 32,
                "tiny": {"d_model": 32, "d_ff": 64, "num_layers": 1, "num_heads": 2, "vocab_size": 300}},
    "train": {"arms": [{"name": "cot-1", "mode": "cot", "n_cots": 1, "self_eval": True}], "batch_size": 8,
              "learning_rate": 0.01, "stage1_steps": 2, "stage2_steps": STEPS, "eval_every": 2, "device": "cpu"},
    "evaluate": {"batch_size": 16, "max_new_tokens": 8},
}


def _objects(bucket: str, prefix: str = "") -> dict[str, bytes]:
    import boto3

    s3, name = boto3.client("s3"), bucket.removeprefix("s3://")
    keys = [item["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name, Prefix=prefix)
            for item in page.get("Contents", [])]
    return {key: s3.get_object(Bucket=name, Key=key)["Body"].read() for key in keys}


def _keys(bucket: str, prefix: str) -> list[str]:
    import boto3

    page = boto3.client("s3").list_objects_v2(Bucket=bucket.removeprefix("s3://"), Prefix=prefix)
    return [item["Key"] for item in page.get("Contents", [])]


def _machine(monkeypatch, tmp_path: Path, name: str) -> Path:
    """Another machine: its own working directory and student cache, nothing shared but the bucket."""
    home = tmp_path / name
    (home / "cache").mkdir(parents=True)
    monkeypatch.setenv("MINDSMIRROR_CACHE", str(home / "cache"))
    monkeypatch.chdir(home)
    return home


def _kill_after_an_uploaded_checkpoint(config_file: Path, bucket: str, prefix: str, home: Path) -> None:
    """`mindsmirror train` on machine `home`, killed (SIGKILL) once the bucket holds a stage-2 checkpoint."""
    home.mkdir()
    env = {**os.environ, "MINDSMIRROR_CACHE": str(home / "cache"), "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "flows.cli", "train", str(config_file)], cwd=home, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    while not any(key.endswith(RECORD) for key in _keys(bucket, prefix)):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"training stopped before its first upload: {process.stderr.read().decode()[-2000:]}")
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.slow  # about 2.5 minutes: every store query lists and reads the bucket
def test_a_killed_training_resumes_from_the_bucket_on_another_machine_which_evaluates_predicts_and_exports(
        tmp_path, s3_bucket, prefect_server, monkeypatch, capsys):
    store = f"{s3_bucket}/runs/tiny"
    config_file = tmp_path / "s3.yaml"
    config_file.write_text(yaml.safe_dump({**CONFIG, "store": {"path": store}}))
    arm_key = "runs/tiny/students/cot-1"
    assert main(["generate", str(config_file), "--no-progress"]) == 0

    _kill_after_an_uploaded_checkpoint(config_file, s3_bucket, f"{arm_key}/stage2/", tmp_path / "machine-a")
    stored = _objects(s3_bucket, arm_key)
    assert f"{arm_key}/trained.json" not in stored
    uploaded = sorted(key.rsplit("/", 2)[1] for key in stored if key.startswith(f"{arm_key}/stage2/")
                      and key.endswith(RECORD))
    killed_at = int(uploaded[-1].split("-")[1])
    assert killed_at < STEPS and f"{arm_key}/stage2/{uploaded[-1]}/{STATE}" in stored  # the resume state is there
    # Mark the uploaded state: a run that resumes from it carries the mark into its later records.
    record = json.loads(stored[f"{arm_key}/stage2/{uploaded[-1]}/{RECORD}"])
    record["losses"][0][1] = 123.0
    import boto3

    boto3.client("s3").put_object(Bucket=s3_bucket.removeprefix("s3://"),
                                  Key=f"{arm_key}/stage2/{uploaded[-1]}/{RECORD}", Body=json.dumps(record))

    machine_b = _machine(monkeypatch, tmp_path, "machine-b")
    assert main(["train", str(config_file), "--resume"]) == 0
    trained = json.loads(_objects(s3_bucket, f"{arm_key}/trained.json")[f"{arm_key}/trained.json"])
    final = json.loads(_objects(s3_bucket, f"{arm_key}/stage2/step-{STEPS:06d}/{RECORD}")
                       [f"{arm_key}/stage2/step-{STEPS:06d}/{RECORD}"])
    assert final["step"] == STEPS and len(final["losses"]) == STEPS and final["losses"][0][1] == 123.0
    # Only the latest and the best checkpoint of each stage stay in the bucket, the latest with its state.
    stage2 = {key.split("/")[5] for key in _objects(s3_bucket, f"{arm_key}/stage2/")}
    assert stage2 == {f"step-{STEPS:06d}", trained["checkpoint"].split("/")[1]}
    assert list(machine_b.rglob("*.parquet")) == []  # the store stayed in the bucket

    _machine(monkeypatch, tmp_path, "machine-c")
    assert main(["evaluate", str(config_file)]) == 0
    best = f"{store}/students/cot-1/{trained['checkpoint']}"
    scores = {(r.arm, r.split, r.metric): r for r in queries.latest_results(Store(store))}
    assert scores[("cot-1", "test", "accuracy")].checkpoint == best
    assert f"{arm_key}/evaluated.json" in _objects(s3_bucket, arm_key)

    _machine(monkeypatch, tmp_path, "machine-d")
    question = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    capsys.readouterr()
    assert main(["predict", f"{store}/students/cot-1", question]) == 0
    from_arm = capsys.readouterr().out
    assert main(["predict", best, question]) == 0
    assert capsys.readouterr().out == from_arm and "answer: " in from_arm
    assert main(["export", str(config_file), "cot-1", str(tmp_path / "exported")]) == 0
    assert AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "exported").config.d_model == 32

    # A rerun on yet another machine finds both up to date through the bucket, downloading no checkpoint.
    machine_e = _machine(monkeypatch, tmp_path, "machine-e")
    assert main(["train", str(config_file)]) == 0
    assert main(["evaluate", str(config_file)]) == 0
    output = capsys.readouterr()
    assert "cot-1: unchanged since its last training" in output.out
    assert "cot-1: unchanged since its last evaluation" in output.out
    assert not list(machine_e.rglob(RECORD))
    assert S3_SECRET not in output.out + output.err
    assert not [key for key, body in _objects(s3_bucket).items() if S3_SECRET.encode() in body]


def _train(rows, out_dir: Path, on_checkpoint, resume: bool = False):
    from test_training import QUICK_EVAL, SMALL, equation_accuracy, small_train

    from tasks.student.model import build_student

    model, tokenizer = build_student(SMALL, [t for r in rows for t in (r.input, r.label, r.rationale or "")])
    return train_student(rows, [], model=model, tokenizer=tokenizer, train_cfg=small_train(eval_every=1),
                         student_cfg=SMALL, steps=6, out_dir=out_dir, accuracy_fn=equation_accuracy,
                         eval_cfg=QUICK_EVAL, resume=resume, progress=False, on_checkpoint=on_checkpoint)


def test_a_run_killed_on_one_machine_resumes_from_its_last_upload_on_another(tmp_path, s3_bucket, monkeypatch):
    from test_training import arithmetic_rows

    rows = arithmetic_rows(24)
    uninterrupted = _train(rows, tmp_path / "whole", on_checkpoint=None)

    monkeypatch.setenv("MINDSMIRROR_CACHE", str(tmp_path / "machine-a"))
    machine_a = ArmFolder.at(f"{s3_bucket}/students/arm")

    def killed_while_uploading_step_4(checkpoint: Path) -> None:
        if checkpoint.name == "step-000004":  # the weights went up, the record did not
            machine_a.filesystem.put_file(str(checkpoint / "model.safetensors"),
                                          f"{machine_a.path}/stage2/step-000004/model.safetensors")
            raise KeyboardInterrupt
        machine_a.push_checkpoint(checkpoint)

    with pytest.raises(KeyboardInterrupt):
        _train(rows, machine_a.local / "stage2", killed_while_uploading_step_4)
    stored = _keys(s3_bucket, "students/arm/stage2/")
    assert f"students/arm/stage2/step-000003/{STATE}" in stored  # the resume state went up with step 3
    assert not [key for key in stored if "step-000001" in key or "step-000002" in key]  # pruned as locally

    monkeypatch.setenv("MINDSMIRROR_CACHE", str(tmp_path / "machine-b"))
    machine_b = ArmFolder.at(f"{s3_bucket}/students/arm")
    machine_b.pull_resumable()
    assert sorted(path.name for path in (machine_b.local / "stage2").iterdir()) == ["step-000003"]
    resumed = _train(rows, machine_b.local / "stage2", machine_b.push_checkpoint, resume=True)

    assert resumed.losses == uninterrupted.losses
    assert sorted(_keys(s3_bucket, "students/arm/stage2/")) == sorted(
        f"students/arm/stage2/step-000006/{path.relative_to(resumed.latest).as_posix()}"
        for path in resumed.latest.rglob("*") if path.is_file())
    assert not [key for key, body in _objects(s3_bucket).items() if S3_SECRET.encode() in body]


def test_a_half_uploaded_checkpoint_is_never_taken(tmp_path, s3_bucket, monkeypatch, capsys):
    monkeypatch.setenv("MINDSMIRROR_CACHE", str(tmp_path / "cache"))
    folder = ArmFolder.at(f"{s3_bucket}/students/arm")
    written = tmp_path / "written" / "stage2"
    for step in (1, 2):
        checkpoint = written / f"step-{step:06d}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "config.json").write_text(json.dumps({"step": step}))
        (checkpoint / RECORD).write_text(json.dumps({"step": step}))
    # step 1 uploaded whole; step 2's upload stopped before its record
    fs = folder.filesystem
    for name in ("config.json", RECORD):
        fs.put_file(str(written / "step-000001" / name), f"{folder.path}/stage2/step-000001/{name}")
    fs.put_file(str(written / "step-000002" / "config.json"), f"{folder.path}/stage2/step-000002/config.json")

    folder.pull_resumable()
    assert sorted(path.name for path in (folder.local / "stage2").iterdir()) == ["step-000001"]
    assert main(["predict", f"{s3_bucket}/students/arm/stage2/step-000002", "1 + 1?"]) == 1
    assert "step-000002: neither a trained arm's folder (no trained.json) nor a complete checkpoint (no " \
           "mindsmirror.json)" in capsys.readouterr().err


def test_the_report_goes_to_the_bucket_and_its_artifacts_embed_and_name_it(s3_bucket, prefect_server):
    import base64
    import csv
    import io
    import re

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.evaluate import report
    from storage import ResultRow
    from tasks.config import parse_config

    store = f"{s3_bucket}/runs/tiny"
    checkpoint = f"{store}/students/cot-1/stage2/step-000004"
    Store(store).append([ResultRow(arm="cot-1", split="test", metric="accuracy", value=0.5, n=2,
                                   checkpoint=checkpoint)])
    config = parse_config({"store": {"path": store}, "train": {"arms": []}})

    @flow
    def publish():
        return report(config)

    state = publish(return_state=True)
    assert state.is_completed(), state.message
    assert "s2@4" in state.result()  # the terminal names the checkpoint as for a local store

    stored = _objects(s3_bucket, "runs/tiny/report.")
    rows = list(csv.DictReader(io.StringIO(stored["runs/tiny/report.csv"].decode())))
    assert [(row["arm"], row["test accuracy"], row["checkpoint"]) for row in rows] == [
        ("cot-1", "0.5", "students/cot-1/stage2/step-000004")]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    chart = {artifact.type: artifact for artifact in artifacts}["markdown"]
    [encoded] = re.findall(r"\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", chart.data)
    assert base64.b64decode(encoded) == stored["runs/tiny/report.png"]
    assert f"`{store}/report.png` and `{store}/report.csv`" in chart.data
