"""Score every trained arm on the test split, beside the constant baseline and the teacher."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.states import Completed

from tasks.config import Config, resolve_config
from tasks.ops.artifacts import publish_report
from tasks.ops.report import write_report
from tasks.student import evaluate_one, score_baselines
from tasks.student.freshness import unchanged_message


@task(name="evaluate-arm", cache_policy=NONE, task_run_name="evaluate-{name}")
def evaluate_arm(config: Config, name: str, force: bool = False) -> dict[str, float] | None:
    return evaluate_one(config, name, force=force)


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
    """Label accuracy on test for each arm; writes predictions, results and the report. An arm
    scored before on the same inputs is skipped unless `force`."""
    config = resolve_config(config)
    baselines(config)
    skipped = [name for name in arms or [arm.name for arm in config.train.arms]
               if evaluate_arm(config, name, force) is None]
    return Completed(message="\n".join([*(unchanged_message(name, "evaluation") for name in skipped),
                                        report(config)]))
