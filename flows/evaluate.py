"""Score every trained arm on the test split, beside the constant baseline and the teacher."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.states import Completed

from tasks.config import Config, resolve_config
from tasks.ops.report import write_report
from tasks.student.arms import evaluate_one, score_baselines


@task(name="evaluate-arm", cache_policy=NONE, task_run_name="evaluate-{name}")
def evaluate_arm(config: Config, name: str) -> dict[str, float]:
    return evaluate_one(config, name)


@task(name="score-baselines", cache_policy=NONE)
def baselines(config: Config) -> dict[str, float]:
    return score_baselines(config)


@task(name="write-report", cache_policy=NONE)
def report(config: Config) -> str:
    return write_report(config).markdown


@flow(name="evaluate")
def evaluate(config: Config | str, arms: list[str] | None = None):
    """Label accuracy on test for each arm; writes predictions, results and the report."""
    config = resolve_config(config)
    baselines(config)
    for name in arms or [arm.name for arm in config.train.arms]:
        evaluate_arm(config, name)
    return Completed(message=report(config))
