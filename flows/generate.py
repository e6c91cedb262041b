"""Ask the teacher for every chain of thought and self-evaluation the store is missing."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.states import Completed, Failed
from prefect.utilities.annotations import quote

from storage import ClaimsUnavailable, Store, journal
from tasks.config import Config, resolve_config
from tasks.generation import ExampleWork, Plan, dry_run_plan, plan_generation, sync_examples

if TYPE_CHECKING:
    from tasks.generation import Session

# The teacher's client, the session and the simulator are imported where a run needs them: a run
# that finds nothing missing (a scheduled one, mostly) never loads the openai SDK (~0.8 s).


# The flow is async, so its tasks are too: a sync task in an async flow opens its own API client
# (~40 ms each). The work itself blocks, so it runs on a worker thread and the loop stays free.


@task(name="load-examples", cache_policy=NONE)
async def load_examples(store: Store, config: Config):
    return await asyncio.to_thread(sync_examples, store, config)


@task(name="plan", cache_policy=NONE)
async def plan(store: Store, config: Config, examples, answer_type: str, only_failed: bool) -> Plan:
    return await asyncio.to_thread(plan_generation, store, config, answer_type, examples, only_failed)


@task(name="ask-teacher", cache_policy=NONE, task_run_name="ask-teacher-{first}")
async def ask_teacher(session: Session, batch: tuple[ExampleWork, ...], first: str) -> int:
    """Returns how many of the batch's requests failed; they are recorded in `calls`."""
    return sum(await asyncio.gather(*(session.run_example(work) for work in batch)))


def _batch_pass(store: Store, config: Config, examples, answer_type: str, only_failed: bool):
    from simulator import simulated_teacher
    from tasks.generation.batch import run_batch_pass
    from tasks.teacher.endpoint import open_endpoint

    simulated = simulated_teacher(config.teacher, examples, answer_type, store.machine_state("simulator"))
    with open_endpoint(config.teacher, simulated) as endpoint:
        return run_batch_pass(store, config, answer_type, examples, endpoint, only_failed)


@task(name="batch-pass", cache_policy=NONE)
async def batch_pass(store: Store, config: Config, examples, answer_type: str, only_failed: bool):
    """Collect finished batches, then submit what is still missing (teacher.mode: batch)."""
    return await asyncio.to_thread(_batch_pass, store, config, examples, answer_type, only_failed)


@task(name="dry-run", cache_policy=NONE)
async def plan_dry_run(config: Config) -> tuple[str, Plan]:
    return await asyncio.to_thread(dry_run_plan, config)


@task(name="replay-journal", cache_policy=NONE)
async def replay_journal(store: Store) -> int:
    """Store the answers an earlier run received but could not write (see storage.journal)."""
    return await asyncio.to_thread(journal.replay, store)


@task(name="compact-store", cache_policy=NONE)
async def compact_store(store: Store) -> None:
    await asyncio.to_thread(store.compact)


async def dispatch(store: Store, config: Config, examples, answer_type: str, work: Plan, show_progress: bool):
    """One task run per batch of examples, on one live session; returns the session once all are done."""
    from simulator import simulated_teacher
    from tasks.generation import open_session
    from tasks.teacher.endpoint import open_endpoint

    simulated = simulated_teacher(config.teacher, examples, answer_type, store.machine_state("simulator"))
    with open_endpoint(config.teacher, simulated) as endpoint:
        async with open_session(store, config, answer_type, endpoint, work.progress_total, show_progress) as session:
            states = await session.dispatch(work.batches(config.generate.batch_size), lambda batch: ask_teacher(
                session, batch, batch[0].example.example_id, return_state=True))
    return session, [state for state in states if not state.is_completed()]


async def batch_mode(store: Store, config: Config, examples, answer_type: str, only_failed: bool):
    """teacher.mode: batch: one pass that collects finished batches and submits what is missing."""
    from tasks.teacher.errors import FatalError

    simulated = config.teacher.simulate
    try:
        summary = await batch_pass(store, config, quote(examples), answer_type, only_failed)
    except (FatalError, ClaimsUnavailable) as error:
        return Failed(message=str(error))
    message = summary.describe(simulated)
    if summary.stopped:
        return Failed(message=f"{summary.stopped}; {message}", data=summary)
    return Completed(message=message, data=summary)


@flow(name="generate")
async def generate(config: Config | str, dry_run: bool = False, only_failed: bool = False,
                   show_progress: bool = True):
    """Generate chains of thought and self-evaluations for every example the store is missing."""
    config = resolve_config(config)
    if dry_run:  # writes nothing
        message, work = await plan_dry_run(config)
        return Completed(message=message, data=work)
    store = Store(config.store.path)
    try:
        await replay_journal(store)  # before planning: those answers are paid for
        await compact_store(store)  # after a crash the store may hold thousands of one-response files
    except OSError as error:
        return Failed(message=f"could not store the answers journalled by an earlier run ({error.strerror or error}) "
                      f"in {store.root}: free space and rerun")
    try:
        examples, answer_type = await load_examples(store, config)
        # quote: Prefect would otherwise visit every example looking for futures (seconds at 20,000)
        work = await plan(store, config, quote(examples), answer_type, only_failed)
    except OSError as error:
        return Failed(message=f"could not write to the store {store.root} ({error.strerror or error}): "
                      "free space and rerun")
    if config.teacher.mode == "batch":
        return await batch_mode(store, config, examples, answer_type, only_failed)
    if not work.work:
        return Completed(message=work.describe(config.teacher.simulate), data=work)
    from tasks.teacher.errors import FatalError

    try:
        session, crashed = await dispatch(store, config, examples, answer_type, work, show_progress)
    except (FatalError, ClaimsUnavailable) as error:
        return Failed(message=str(error))
    if crashed:  # a bug, not a teacher error: those are recorded and counted, never raised
        return Failed(message=f"{len(crashed)} batches crashed: {crashed[0].message}")
    if not session.summary.pending:
        try:
            await compact_store(store)
        except OSError as error:  # every answer is stored: merging parts can wait for the next run
            get_run_logger().warning("compaction skipped: %s", error.strerror or error)
    if (failure := session.failure()) is not None:
        return Failed(message=failure, data=session.summary)
    return Completed(message=session.summary.describe(config.teacher.simulate), data=session.summary)
