"""Train the student arms of a config on what the store holds (the GPU part of the pipeline)."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.states import Completed

from tasks.config import Config, resolve_config
from tasks.student import TrainedArm, train_one
from tasks.student.freshness import unchanged_message
from tasks.student.parallel import in_own_process, parallel_runs


@task(name="train-arm", cache_policy=NONE, task_run_name="train-{name}-seed-{seed}")
def train_arm_task(config: Config, name: str, resume: bool, progress: bool, force: bool = False,
                   seed: int | None = None, processes: int = 1) -> TrainedArm:
    """One arm run; with `processes` > 1, in a process of its own beside the others (tasks.student.parallel)."""
    if processes > 1:
        return in_own_process(processes, train_one, config, name, resume=resume, progress=progress, force=force,
                              seed=seed)
    return train_one(config, name, resume=resume, progress=progress, force=force, seed=seed)


@flow(name="train")
def train(config: Config | str, arms: list[str] | None = None, resume: bool = False, show_progress: bool = True,
          force: bool = False):
    """Train each arm once per seed of train.seeds (stage 1 on self-evaluations where asked, stage 2
    on CoTs or labels); a run trained before on the same inputs is skipped unless `force`.

    Without a GPU the runs go side by side, one process per core (tasks.student.parallel); their
    progress bars would then overwrite each other, so each run says when it is done instead."""
    config = resolve_config(config)
    names = arms or [arm.name for arm in config.train.arms]
    runs = [(name, seed) for name in names for seed in config.train.seed_list()]
    processes = parallel_runs(config.train.device, len(runs), config.train.stage1_steps + config.train.stage2_steps)
    if processes > 1:
        futures = [train_arm_task.submit(config, name, resume, False, force, seed, processes) for name, seed in runs]
        trained = [future.result() for future in futures]
    else:
        trained = [train_arm_task(config, name, resume, show_progress, force, seed) for name, seed in runs]
    return Completed(message="\n".join(
        unchanged_message(arm.arm, "training") if arm.unchanged else arm.describe() for arm in trained
    ))
