"""Score every trained arm on the test split, beside the constant baseline and the teacher."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.states import Completed

from tasks.config import Config, resolve_config
from tasks.ops.artifacts import publish_report
from tasks.ops.report import write_report
from tasks.student import evaluate_one, score_baselines
from tasks.student.arms import seeded_name
from tasks.student.freshness import unchanged_message
from tasks.student.parallel import in_own_process, parallel_runs


@task(name="evaluate-arm", cache_policy=NONE, task_run_name="evaluate-{name}-seed-{seed}")
def evaluate_arm(config: Config, name: str, force: bool = False, seed: int | None = None,
                 processes: int = 1) -> dict[str, float] | None:
    """One arm run's scores; with `processes` > 1, in a process of its own beside the others."""
    if processes > 1:
        return in_own_process(processes, evaluate_one, config, name, force=force, seed=seed)
    return evaluate_one(config, name, force=force, seed=seed)


@task(name="score-baselines", cache_policy=NONE)
def baselines(config: Config) -> dict[str, float]:
    return score_baselines(config)


@task(name="write-report", cache_policy=NONE)
def report(config: Config) -> str:
    written = write_report(config)
    publish_report(written, config.store.path)
    return written.markdown


@flow(name="evaluate")
def evaluate(config: Config | str, arms: list[str] | None = None, force: bool = False):
    """Label accuracy on test for each arm's run with each seed; writes predictions, results and the
    report. A run scored before on the same inputs is skipped unless `force`. Without a GPU the runs
    are scored side by side, one process per core (tasks.student.parallel)."""
    config = resolve_config(config)
    baselines(config)
    runs = [(name, seed) for name in arms or [arm.name for arm in config.train.arms]
            for seed in config.train.seed_list()]
    processes = parallel_runs(config.train.device, len(runs), config.train.stage1_steps + config.train.stage2_steps)
    if processes > 1:
        futures = [evaluate_arm.submit(config, name, force, seed, processes) for name, seed in runs]
        scores = [future.result() for future in futures]
    else:
        scores = [evaluate_arm(config, name, force, seed) for name, seed in runs]
    skipped = [seeded_name(config, name, seed) for (name, seed), scored in zip(runs, scores) if scored is None]
    return Completed(message="\n".join([*(unchanged_message(name, "evaluation") for name in skipped),
                                        report(config)]))
