"""Train the student arms of a config on what the store holds (the GPU part of the pipeline)."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.states import Completed

from tasks.config import Config, resolve_config
from tasks.student.arms import TrainedArm, train_one


@task(name="train-arm", cache_policy=NONE, task_run_name="train-{name}")
def train_arm_task(config: Config, name: str, resume: bool, progress: bool) -> TrainedArm:
    return train_one(config, name, resume=resume, progress=progress)


@flow(name="train")
def train(config: Config | str, arms: list[str] | None = None, resume: bool = False, show_progress: bool = True):
    """Train each arm (stage 1 on self-evaluations where asked, stage 2 on CoTs or labels)."""
    config = resolve_config(config)
    names = arms or [arm.name for arm in config.train.arms]
    trained = [train_arm_task(config, name, resume, show_progress) for name in names]
    return Completed(message="\n".join(arm.describe() for arm in trained))
