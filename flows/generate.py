"""Ask the teacher for every chain of thought and self-evaluation the store is missing."""

from __future__ import annotations

import asyncio

from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, rate_limit
from prefect.states import Completed, Failed

from storage import Store, journal
from tasks.config import Config, resolve_config
from tasks.generation import ExampleWork, Plan, Session, open_session, plan_generation, sync_examples
from tasks.generation.batch import BatchSummary, at_batch_prices, run_batch_pass
from tasks.teacher.errors import FatalError


@task(name="load-examples", cache_policy=NONE)
def load_examples(store: Store, config: Config):
    return sync_examples(store, config)


@task(name="plan", cache_policy=NONE)
def plan(store: Store, config: Config, examples, answer_type: str, only_failed: bool) -> Plan:
    return plan_generation(store, config, answer_type, examples, only_failed)


@task(name="ask-teacher", cache_policy=NONE, task_run_name="ask-teacher-{first}")
async def ask_teacher(session: Session, batch: tuple[ExampleWork, ...], first: str) -> int:
    """Returns how many of the batch's requests failed; they are recorded in `calls`."""
    return sum(await asyncio.gather(*(session.run_example(work) for work in batch)))


@task(name="batch-pass", cache_policy=NONE)
def batch_pass(store: Store, config: Config, examples, answer_type: str, only_failed: bool) -> BatchSummary:
    """Collect finished batches, then submit what is still missing (teacher.mode: batch)."""
    return run_batch_pass(store, config, answer_type, examples, only_failed)


@task(name="replay-journal", cache_policy=NONE)
def replay_journal(store: Store) -> int:
    """Store the answers an earlier run received but could not write (see storage.journal)."""
    return journal.replay(store)


@task(name="compact-store", cache_policy=NONE)
def compact_store(store: Store) -> None:
    store.compact()


def shared_gate(name: str | None):
    """A gate on the Prefect global rate limit `name`, shared by every run and worker using the key.

    strict=True: a missing limit stops the run instead of letting every request through.
    """
    if not name:
        return None

    async def gate(requests: int) -> None:
        try:
            await rate_limit(name, occupy=requests, strict=True)
        except ConcurrencySlotAcquisitionError:
            raise FatalError(
                f"teacher.shared_rate_limit names the Prefect rate limit {name!r}, which the server does not "
                f"have: create it with `mindsmirror deploy --rpm N --limit-name {name}`"
            ) from None

    return gate


@flow(name="generate")
async def generate(config: Config | str, dry_run: bool = False, only_failed: bool = False,
                   show_progress: bool = True):
    """Generate chains of thought and self-evaluations for every example the store is missing."""
    config = resolve_config(config)
    store = Store(config.store.path)
    try:
        replay_journal(store)  # before planning: those answers are paid for
    except OSError as error:
        return Failed(message=f"could not store the answers journalled by an earlier run ({error.strerror or error}) "
                      f"in {store.root}: free space and rerun")
    compact_store(store)  # after a crash the store may hold thousands of one-response files
    examples, answer_type = load_examples(store, config)
    work = plan(store, config, examples, answer_type, only_failed)
    if config.teacher.mode == "batch":
        if dry_run:
            work = at_batch_prices(work, config.teacher)
            return Completed(message="batch mode: " + describe_plan(work, config.teacher.simulate), data=work)
        try:
            summary = batch_pass(store, config, examples, answer_type, only_failed)
        except FatalError as error:
            return Failed(message=str(error))
        message = summary.describe(config.teacher.simulate)
        if summary.stopped:
            return Failed(message=f"{summary.stopped}; {message}", data=summary)
        return Completed(message=message, data=summary)
    if dry_run or not work.work:
        return Completed(message=describe_plan(work, config.teacher.simulate), data=work)

    try:
        gate = shared_gate(config.teacher.shared_rate_limit)
        async with open_session(
            store, config, answer_type, examples, work.progress_total, show_progress, gate
        ) as session:
            # One task run per batch, started whenever the session's request window runs short of
            # queued work: admission is per request, so a batch still waiting on one slow request
            # never keeps the next batch from starting.
            runs = []
            for batch in work.batches(config.generate.batch_size):
                await session.room()
                if session.summary.stopped:
                    break
                session.announce(batch)
                runs.append(asyncio.ensure_future(
                    ask_teacher(session, batch, batch[0].example.example_id, return_state=True)
                ))
            states = await asyncio.gather(*runs)
    except FatalError as error:
        return Failed(message=str(error))
    crashed = [state for state in states if not state.is_completed()]
    if crashed:  # a bug, not a teacher error: those are recorded and counted, never raised
        return Failed(message=f"{len(crashed)} batches crashed: {crashed[0].message}")
    summary = session.summary
    if not summary.pending:
        compact_store(store)
    if session.fatal is not None:
        return Failed(message=str(session.fatal), data=summary)
    if summary.stopped:
        return Failed(message=summary.stopped, data=summary)
    if summary.requests_failed:
        return Failed(
            message=f"{summary.requests_failed} teacher requests failed after retries (first: "
            f"{summary.errors[0]}); `mindsmirror resume CONFIG` retries just those",
            data=summary,
        )
    return Completed(message=describe_summary(summary, config.teacher.simulate), data=summary)


SIMULATED = " (simulated teacher: nothing is paid; priced as teacher.prices says, to try budgets)"


def describe_plan(plan: Plan, simulated: bool = False) -> str:
    return (
        f"planned {plan.total_requests} teacher requests ({plan.cot_requests} for chains of thought, "
        f"{plan.eval_requests + plan.later_eval_requests} for self-evaluations), about "
        f"{plan.prompt_tokens:,} prompt tokens and at most {plan.completion_tokens:,} completion tokens, "
        f"at most ${plan.cost_usd:.4f}" + (SIMULATED if simulated else "")
    )


def describe_summary(summary, simulated: bool = False) -> str:
    return (
        f"{summary.requests_ok} requests: {summary.cots} chains of thought, {summary.evaluations} "
        f"self-evaluations ({summary.unparseable} unparseable, kept with their reason); "
        f"{summary.prompt_tokens + summary.completion_tokens:,} tokens, ${summary.cost_usd:.4f}"
        + (f"; {summary.refused} refused by the content filter, kept with the reason" if summary.refused else "")
        + summary.tokens_note() + (SIMULATED if simulated else "")
    )
