"""The whole job: generate what the store lacks, train every arm, score them, report."""

from __future__ import annotations

from prefect import flow
from prefect.states import Completed, Failed

from flows.evaluate import evaluate
from flows.generate import generate
from flows.train import train
from tasks.config import Config, resolve_config


@flow(name="distill")
async def distill(config: Config | str, show_progress: bool = True):
    """generate -> train -> evaluate -> report, each a subflow; stops at the first stage that fails."""
    config = resolve_config(config)
    generated = await generate(config, show_progress=show_progress, return_state=True)
    if not generated.is_completed():
        return Failed(message=f"generation did not complete: {generated.message}")
    trained = train(config, show_progress=show_progress, return_state=True)
    if not trained.is_completed():
        return Failed(message=f"training did not complete: {trained.message}")
    evaluated = evaluate(config, return_state=True)
    if not evaluated.is_completed():
        return Failed(message=f"evaluation did not complete: {evaluated.message}")
    return Completed(message=await evaluated.result())
