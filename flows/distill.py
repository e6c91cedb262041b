"""The whole job: generate what the store lacks, train every arm, score them, report."""

from __future__ import annotations

from prefect import flow
from prefect.deployments import run_deployment
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

from flows.evaluate import evaluate, report
from flows.generate import generate
from flows.train import train
from tasks.config import Config, resolve_config


async def _on_deployment(name: str, config: Config, stage: str, force: bool):
    """Run a stage as its own deployment (on the GPU work pool) and wait for it.

    The idempotency key ties the child run to this parent run: a retried parent waits for the
    child an earlier attempt started when that child completed or still runs, and starts a new
    one (keyed on the attempt) when it failed or crashed, say with its GPU worker.
    """
    earlier = await _earlier_children(stage)
    reusable = [child for child in earlier if child.state is not None
                and (child.state.is_completed() or not child.state.is_final())]
    if reusable:
        key = reusable[-1].idempotency_key
    elif earlier:  # each earlier child failed or crashed
        key = f"{flow_run.get_id()}-{stage}-attempt-{flow_run.get_run_count()}"
    else:
        key = f"{flow_run.get_id()}-{stage}"
    run = await run_deployment(
        name=name,
        parameters={"config": config.model_dump(mode="json"), "force": force},
        idempotency_key=key,
        timeout=None,
        poll_interval=2,
        as_subflow=True,
    )
    return run.state


async def _earlier_children(stage: str) -> list:
    """The runs of `stage` that earlier attempts of this parent started, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    parent = flow_run.get_id()
    async with get_client() as client:
        children = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        )
    return [child for child in children if (child.idempotency_key or "").startswith(f"{parent}-{stage}")]


@flow(name="distill")
async def distill(
    config: Config | str,
    show_progress: bool = True,
    train_deployment: str | None = None,
    evaluate_deployment: str | None = None,
    force: bool = False,
):
    """generate -> train -> evaluate -> report; stops at the first stage that fails.

    Arms whose inputs (resolved arm config, data snapshot, student) are unchanged since their last
    training or evaluation are skipped, each with one line saying so; `force` redoes them.

    With `train_deployment` / `evaluate_deployment` ("flow-name/deployment-name"), those stages run
    as runs of that deployment (on GPU workers); otherwise they run here as subflows.
    """
    config = resolve_config(config)
    generated = await generate(config, show_progress=show_progress, return_state=True)
    if not generated.is_completed():
        return Failed(message=f"generation did not complete: {generated.message}")
    if train_deployment:
        trained = await _on_deployment(train_deployment, config, "train", force)
    else:
        trained = train(config, show_progress=show_progress, force=force, return_state=True)
    if not trained.is_completed():
        return Failed(message=f"training did not complete: {trained.message}")
    if evaluate_deployment:
        evaluated = await _on_deployment(evaluate_deployment, config, "evaluate", force)
    else:
        evaluated = evaluate(config, force=force, return_state=True)
    if not evaluated.is_completed():
        return Failed(message=f"evaluation did not complete: {evaluated.message}")
    report(config)  # the results and the chart on this run too, where the UI shows a whole job
    parts = (generated.message, trained.message, evaluated.message)
    return Completed(message="\n\n".join(part for part in parts if part).strip())
