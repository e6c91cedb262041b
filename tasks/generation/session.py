"""The live part of generation: asking the teacher and writing each response as it arrives.

Each response is on disk (rows, then its call record) before it counts as done; `kill -9` loses at
most the requests in flight. Responses arriving while the store is being written share the next
write (tasks.generation.commits), so a busy run writes one part per table per group, not per answer. Admission is per request: the teacher client's one window of
teacher.max_concurrency slots is shared by every example coroutine of every batch, so a slow or
failing request holds up one slot, never a whole batch. A request claims its keys only once the
window admits it, so at most a window of requests is ever claimed and unanswered.

The store is the record of what was paid for. When a write to it fails (a full disk), dispatch
stops at once and every answer still arriving goes to a journal (storage.journal) that the next run
replays into the store before planning; the summary says how many answers are pending there.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import TypeVar

from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, rate_limit

from storage import CallRow, Claims, CotRow, Store, open_claims, queries
from storage.journal import Journal
from tasks.config import Config
from tasks.generation.commits import CommitFailed, GroupCommit
from tasks.generation.ledger import Budget, BudgetExceeded, Summary
from tasks.generation.plan import ExampleWork, Request, narrow, price_usd, request_for, sampling_of
from tasks.generation.progress import GenerationProgress
from tasks.generation.replies import abandoned_record, call_record, failure_record, reply_rows
from tasks.teacher.client import Gate, TeacherClient, TeacherReply, estimate_tokens
from tasks.teacher.endpoint import Endpoint
from tasks.teacher.errors import FatalError, TeacherError

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["Budget", "BudgetExceeded", "Gate", "Session", "Summary", "open_session"]


class Session:
    """The live parts of one generation run: store, teacher client, budget, progress, admission."""

    def __init__(self, store: Store, config: Config, answer_type: str, client: TeacherClient,
                 budget: Budget, progress: GenerationProgress, claims: Claims):
        self.store = store
        self.teacher = config.teacher
        self.answer_type = answer_type
        self.client = client
        self.budget = budget
        self.progress = progress
        self.claims = claims
        self.summary = Summary()
        self.fatal: FatalError | None = None
        self.journal = Journal(store)
        self.commits = GroupCommit(store.append)
        self.window = client.window.size  # how many requests to keep queued for the client's window
        self._announced = 0  # requests announced and not yet admitted (or given up)
        self._room = asyncio.Event()  # set when a queued request leaves the queue
        self._pending: list[list] = []  # row groups not yet in the store, in write order
        self._write_error: OSError | None = None

    # ---- admission ---------------------------------------------------------------------------

    async def dispatch(self, batches: Iterable[tuple[ExampleWork, ...]],
                       run_batch: Callable[[tuple[ExampleWork, ...]], Awaitable[T]]) -> list[T]:
        """Start `run_batch` (a task run asking for a batch's examples through run_example) for each
        batch whenever fewer than a window of requests are queued, until the run stops; returns what
        the runs returned. Admission is per request, so a batch still waiting on one slow request
        never keeps the next batch from starting."""
        runs = []
        for batch in batches:
            while self._announced >= self.window and not self.summary.stopped:
                self._room.clear()
                await self._room.wait()
            if self.summary.stopped:
                break
            # The batch's first requests count as queued before its task run starts.
            self._announced += sum((work.cot_request is not None) + len(work.eval_requests) for work in batch)
            runs.append(asyncio.ensure_future(run_batch(batch)))
        return list(await asyncio.gather(*runs))

    def failure(self) -> str | None:
        """Why the run failed, in one line; None when every request was answered."""
        summary = self.summary
        if self.fatal is not None:
            return str(self.fatal)
        if summary.stopped:
            return summary.stopped
        if summary.requests_failed:
            return (f"{summary.requests_failed} teacher requests failed after retries (first: {summary.errors[0]}); "
                    "`mindsmirror resume CONFIG` retries just those")
        return None

    def _leave_queue(self) -> None:
        self._announced -= 1
        self._room.set()

    def _stop(self, reason: str) -> None:
        if self.summary.stopped is None:
            self.summary.stopped = reason
        self._room.set()  # dispatch starts nothing more

    # ---- one example, one request --------------------------------------------------------------

    async def run_example(self, work: ExampleWork) -> int:
        """Ask for an example's missing samples; returns how many of its requests failed."""
        evals = list(work.eval_requests)
        failed = 0
        if work.cot_request is not None:
            rows = await self._ask(work.cot_request)
            failed += rows is None
            for row in rows or []:
                if row.parse_error is None and self.teacher.n_evals:
                    request, _ = request_for(
                        self.teacher, self.answer_type, "evaluation", work.example, row, self.teacher.n_evals
                    )
                    evals.append(request)
            if self.teacher.n_evals:
                # The plan counted one evaluation request per CoT asked for; CoTs that did not come
                # back, or came back unparseable, will have none.
                new = len(evals) - len(work.eval_requests)
                self.progress.forgo(len(work.cot_request.keys) - new)
                self._announced += new
        if evals:
            replies = await asyncio.gather(*(self._ask(request) for request in evals))
            failed += sum(rows is None for rows in replies)
        return failed

    async def _ask(self, request: Request) -> list | None:
        """The rows a request produced; [] when it was not sent, None when it failed."""
        if self.summary.stopped:
            self._leave_queue()
            return []
        admitted = False

        async def admit(estimate: float) -> bool:  # the client calls it once the request has its window slots
            nonlocal admitted
            admitted = await self._admit(request, estimate)
            return admitted

        rows = await self._buy(request, admit)
        if admitted:
            await self._quietly(self.claims.done if rows is not None else self.claims.release, request.keys)
        return rows

    async def _admit(self, request: Request, estimate: float) -> bool:
        """Claim the request's keys and reserve its cost; False when it is not to be sent."""
        self._leave_queue()
        if self.summary.stopped:
            return False
        try:
            claimed = await self._on_claims(self.claims.claim, request.keys)
        except OSError as error:
            self._write_failed(error)
            return False
        if not claimed:
            self.summary.requests_skipped += 1
            self.progress.advance(skipped=1)
            return False
        return self._reserve(estimate)

    def _reserve(self, estimate: float) -> bool:
        try:
            self.budget.reserve(estimate)
        except BudgetExceeded as stop:
            self._stop(str(stop))
            return False
        return True

    async def _buy(self, request: Request, admit: Callable[[float], Awaitable[bool]] | None = None,
                   count: bool = True) -> list | None:
        """Ask for a request's samples; `admit` decides once it may go (else its cost is reserved here)."""
        sampling = sampling_of(self.teacher, request.kind)
        n = len(request.keys)
        one_by_one = not self.client.use_n
        estimate = price_usd(
            self.teacher, estimate_tokens(request.messages, 0, 0) * (n if one_by_one else 1), n * sampling.max_tokens
        )
        if admit is None and not self._reserve(estimate):
            return []
        call_id = uuid.uuid4().hex
        stored: list[list] = []

        async def keep(reply: TeacherReply) -> None:  # runs while the request still holds its window slots
            stored.append(await self._store_reply(request, reply, call_id, estimate, one_by_one, count))

        try:
            reply = await self.client.complete(
                request.messages, n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                max_tokens=sampling.max_tokens, example_id=request.example_id,
                admit=None if admit is None else lambda: admit(estimate), keep=keep,
            )
        except FatalError as error:
            self.budget.settle(estimate, await self._abandoned(request, error.abandoned, estimate, one_by_one))
            self.fatal = self.fatal or error
            self._stop(str(error))
            return []
        except TeacherError as error:
            self.budget.settle(estimate, await self._abandoned(request, error.abandoned, estimate, one_by_one))
            await self._record_failure(request, call_id, f"{type(error).__name__}: {error}",
                                       getattr(error, "attempts", 0) or 0, count)
            return None
        if reply is None:
            return []  # not admitted (_admit says why)
        rows = stored[0]
        got = request.keys[: len(rows)]
        if len(rows) == n:
            return rows
        rest = narrow(request, set(request.keys) - set(got))
        if not one_by_one and not self.client.use_n and not self.summary.stopped:
            # The client found that the server ignores `n`: ask again for the rest, one by one.
            more = await self._buy(rest, count=False)
            return rows + (more or [])
        await self._record_failure(rest, uuid.uuid4().hex, f"TeacherError: {request.example_id}: {len(rows)} of {n} "
                                   "samples came back; the rest are missing (rerun or `mindsmirror resume` asks "
                                   "again)", 0, count=False)
        return rows

    async def _store_reply(self, request: Request, reply: TeacherReply, call_id: str, estimate: float,
                           one_by_one: bool, count: bool) -> list:
        """Settle a reply's cost and write its rows, then its call record; returns the rows."""
        cost = price_usd(self.teacher, reply.prompt_tokens, reply.completion_tokens)
        self.budget.settle(estimate, cost + await self._abandoned(request, reply.abandoned, estimate, one_by_one))
        rows = reply_rows(self.teacher, self.answer_type, request, reply, call_id)
        got = request.keys[: len(rows)]
        # Rows first, then the call record: a crash between the two keeps the paid answer. The call
        # claims only the keys that came back, so no `ok` record hides a missing sample.
        await self._write(rows, [call_record(self.teacher, request, call_id, got, reply, cost)])
        self._count(rows, reply, cost, count)
        return rows

    # ---- rows and records ----------------------------------------------------------------------

    async def _abandoned(self, request: Request, attempts: int, estimate: float, one_by_one: bool) -> float:
        """Record a request's timed-out attempts at their estimated cost (one attempt: the request's
        estimate, or one sample's share of it when samples go one by one); returns that cost."""
        if not attempts:
            return 0.0
        cost = attempts * estimate / (len(request.keys) if one_by_one else 1)
        await self._write([abandoned_record(self.teacher, request, attempts, cost)])
        self.summary.abandoned += attempts
        self.summary.possibly_billed_usd += cost
        return cost

    async def _record_failure(self, request: Request, call_id: str, error: str, attempts: int, count: bool) -> None:
        await self._write([failure_record(self.teacher, request, call_id, error, attempts)])
        if len(self.summary.errors) < 5:
            self.summary.errors.append(error.split(": ", 1)[-1])  # the message starts with the example id
        self.summary.requests_failed += 1
        self.progress.advance(failed=1, step=count)  # a request's missing rest: it was counted done

    def _count(self, rows: list, reply: TeacherReply, cost: float, count: bool) -> None:
        summary = self.summary
        unparseable = sum(row.parse_error is not None for row in rows)
        summary.unparseable += unparseable
        summary.refused += sum(row.finish_reason == "content_filter" and not row.text for row in rows)
        if rows and isinstance(rows[0], CotRow):
            summary.cots += len(rows)
        else:
            summary.evaluations += len(rows)
        summary.prompt_tokens += reply.prompt_tokens
        summary.completion_tokens += reply.completion_tokens
        summary.estimated_calls += reply.usage_estimated
        summary.cost_usd += cost
        summary.requests_ok += count
        self.progress.advance(done=int(count), tokens=reply.prompt_tokens + reply.completion_tokens, cost=cost,
                              unparseable=unparseable)

    # ---- writing, and what happens when the store cannot take it --------------------------------

    async def _write(self, *groups: list) -> None:
        """Append the groups of rows (in order, in the next group commit); once a write has failed,
        journal them instead (the ones a failed commit did not store)."""
        groups = [rows for rows in groups if rows]
        if self._write_error is None:
            try:
                await self.commits.commit(*groups)
                return
            except CommitFailed as failed:
                if not isinstance(failed.error, OSError):
                    raise failed.error from None
                self._write_failed(failed.error)
                groups = failed.unstored
        self._keep(groups)

    def _write_failed(self, error: OSError) -> None:
        if self._write_error is None:
            self._write_error = error
            log.error("store: a write failed (%s); dispatch stopped", error)
        self._stop(f"a write to the store {self.store.root} failed ({error.strerror or error}): free space "
                   "(or fix the store) and rerun")

    def _keep(self, groups: list[list]) -> None:
        for rows in groups:
            self._pending.append(rows)
            try:
                self.journal.record(rows)
                self.summary.journal = str(self.journal.path)
            except OSError as error:
                log.error("journal: could not record %d rows (%s); they are kept in memory", len(rows), error)
        self.summary.pending = sum(len(rows) for rows in self._pending if not isinstance(rows[0], CallRow))

    def finish(self) -> None:
        """Once nothing is in flight: retry pending writes, and make the stop message say what was spent."""
        if self._pending:
            try:
                for rows in list(self._pending):
                    self.store.append(rows)
                    self._pending.remove(rows)
                self.journal.discard()
            except OSError:
                self.journal.keep_only(self._pending)
            self.summary.pending = sum(len(rows) for rows in self._pending if not isinstance(rows[0], CallRow))
        if self.summary.pending:
            where = self.summary.journal or "memory only (the journal could not be written either: they are lost)"
            self.summary.stopped = (f"{self.summary.stopped}; {self.summary.pending} answers received but not "
                                    f"stored are pending in {where}; the next run stores them before planning")
        if self.budget.exceeded and self.summary.stopped and self.summary.stopped.startswith("budget cap"):
            self.summary.stopped = self.budget.message(note=self.summary.tokens_note())

    async def _on_claims(self, action: Callable[[Sequence[str]], T], keys: Sequence[str]) -> T:
        """A claims call; on an object store (a network round trip or more) in a thread, so the
        event loop keeps receiving answers meanwhile."""
        if self.claims.remote:
            return await asyncio.to_thread(action, keys)
        return action(keys)

    async def _quietly(self, action, keys) -> None:
        try:
            await self._on_claims(action, keys)
        except OSError:  # a marker we could not update; a later run takes over a stale one
            pass


@asynccontextmanager
async def open_session(store: Store, config: Config, answer_type: str, endpoint: Endpoint, total_requests: int,
                       show_progress: bool = True):
    """A session asking `endpoint` (see tasks.teacher.open_endpoint) through one live client, every
    HTTP attempt also passing the Prefect global rate limit teacher.shared_rate_limit when it is set.

    `total_requests` is what the progress bar counts: one per prompt (Plan.progress_total)."""
    client = endpoint.chat(shared_gate(config.teacher.shared_rate_limit))
    progress = GenerationProgress(total_requests, enabled=show_progress, pacing=client.limiter.client_limit)
    session = Session(store, config, answer_type, client, Budget(config.teacher.max_cost_usd,
                      queries.spent_usd(store)), progress, open_claims(store.root))
    try:
        with progress:
            yield session
    finally:
        session.finish()
        await client.aclose()


def shared_gate(name: str | None) -> Gate | None:
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
