"""Train the student arms of a config on what the store holds (the GPU part of the pipeline)."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.states import Completed

from tasks.config import Config, resolve_config
from tasks.student import TrainedArm, train_one
from tasks.student.freshness import unchanged_message


@task(name="train-arm", cache_policy=NONE, task_run_name="train-{name}")
def train_arm_task(config: Config, name: str, resume: bool, progress: bool, force: bool = False) -> TrainedArm:
    return train_one(config, name, resume=resume, progress=progress, force=force)


@flow(name="train")
def train(config: Config | str, arms: list[str] | None = None, resume: bool = False, show_progress: bool = True,
          force: bool = False):
    """Train each arm (stage 1 on self-evaluations where asked, stage 2 on CoTs or labels); an arm
    trained before on the same inputs is skipped unless `force`."""
    config = resolve_config(config)
    names = arms or [arm.name for arm in config.train.arms]
    trained = [train_arm_task(config, name, resume, show_progress, force) for name in names]
    return Completed(message="\n".join(
        unchanged_message(arm.arm, "training") if arm.unchanged else arm.describe() for arm in trained
    ))
