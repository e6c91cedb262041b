"""The live part of generation: asking the teacher and writing each response as it arrives.

Each response is on disk (rows, then its call record) before it counts as done; `kill -9` loses at
most the requests in flight. Admission is per request: one window of teacher.max_concurrency
requests, shared by every example coroutine of every batch, so a slow or failing request holds up
one slot, never a whole batch. A request claims its keys only once admitted, so at most a window of
requests is ever claimed and unanswered.

The store is the record of what was paid for. When a write to it fails (a full disk), dispatch
stops at once and every answer still arriving goes to a journal (storage.journal) that the next run
replays into the store before planning; the summary says how many answers are pending there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Sequence
from contextlib import asynccontextmanager

from storage import CallRow, Claims, CotRow, ExampleRow, Store, queries
from storage.journal import Journal
from tasks.config import Config, TeacherConfig
from tasks.generation.ledger import Budget, BudgetExceeded, Summary
from tasks.generation.plan import ExampleWork, Request, narrow, price_usd, request_for, sampling_of
from tasks.generation.progress import GenerationProgress
from tasks.generation.replies import call_record, failure_record, reply_rows
from tasks.teacher.client import Gate, TeacherClient, TeacherReply, estimate_tokens
from tasks.teacher.errors import FatalError, TeacherError
from tasks.teacher.ratelimit import RateLimiter

log = logging.getLogger(__name__)

__all__ = ["Budget", "BudgetExceeded", "Gate", "Session", "Summary", "api_key", "open_session"]


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
        self.window = teacher_window = config.teacher.max_concurrency
        self._slots = asyncio.Semaphore(teacher_window)
        self._announced = 0  # requests announced and not yet admitted (or given up)
        self._room = asyncio.Condition()
        self._pending: list[list] = []  # row groups not yet in the store, in write order
        self._write_error: OSError | None = None
        self._warned_n = False

    # ---- admission ---------------------------------------------------------------------------

    def announce(self, batch: Sequence[ExampleWork]) -> None:
        """Count a batch's first requests as queued, before its task run starts."""
        self._announced += sum((work.cot_request is not None) + len(work.eval_requests) for work in batch)

    async def room(self) -> None:
        """Wait until fewer than a window's worth of requests are queued: time to start another batch."""
        async with self._room:
            await self._room.wait_for(lambda: self._announced < self.window or self.summary.stopped)

    async def _admitted(self) -> None:
        await self._slots.acquire()
        await self._leave_queue()

    async def _leave_queue(self) -> None:
        async with self._room:
            self._announced -= 1
            self._room.notify_all()

    def _stop(self, reason: str) -> None:
        if self.summary.stopped is None:
            self.summary.stopped = reason

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
        queued = time.perf_counter()
        if self.summary.stopped:
            await self._leave_queue()
            return []
        await self._admitted()
        try:
            if self.summary.stopped:
                return []
            try:
                claimed = self.claims.claim(request.keys)
            except OSError as error:
                self._write_failed(error)
                return []
            if not claimed:
                self.summary.requests_skipped += 1
                self.progress.advance(skipped=1)
                return []
            rows = await self._buy(request, time.perf_counter() - queued)
            self._quietly(self.claims.done if rows is not None else self.claims.release, request.keys)
            return rows
        finally:
            self._slots.release()

    async def _buy(self, request: Request, queued_s: float, count: bool = True) -> list | None:
        sampling = sampling_of(self.teacher, request.kind)
        n = len(request.keys)
        one_by_one = not self.client.use_n
        estimate = price_usd(
            self.teacher, estimate_tokens(request.messages, 0, 0) * (n if one_by_one else 1), n * sampling.max_tokens
        )
        try:
            self.budget.reserve(estimate)
        except BudgetExceeded as stop:
            self._stop(str(stop))
            return []
        call_id = uuid.uuid4().hex
        try:
            reply = await self.client.complete(
                request.messages, n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                max_tokens=sampling.max_tokens, example_id=request.example_id,
            )
        except FatalError as error:
            self.budget.settle(estimate, 0.0)
            self.fatal = self.fatal or error
            self._stop(str(error))
            return []
        except TeacherError as error:
            self.budget.settle(estimate, 0.0)
            self._record_failure(request, call_id, f"{type(error).__name__}: {error}",
                                 getattr(error, "attempts", 0) or 0, count)
            return None
        cost = price_usd(self.teacher, reply.prompt_tokens, reply.completion_tokens)
        self.budget.settle(estimate, cost)
        rows = reply_rows(self.teacher, self.answer_type, request, reply, call_id)
        got = request.keys[: len(rows)]
        # Rows first, then the call record: a crash between the two keeps the paid answer. The call
        # claims only the keys that came back, so no `ok` record hides a missing sample.
        self._write(rows, [call_record(self.teacher, request, call_id, got, reply, cost, queued_s)])
        self._count(rows, reply, cost, count)
        if len(rows) == n:
            return rows
        rest = narrow(request, set(request.keys) - set(got))
        if not reply.refusal and not one_by_one and self.client.use_n:
            self._switch_to_n1(request, len(rows))
        if self.client.use_n is False and not one_by_one and not self.summary.stopped:
            more = await self._buy(rest, 0.0, count=False)
            return rows + (more or [])
        self._record_failure(rest, uuid.uuid4().hex, f"TeacherError: {request.example_id}: {len(rows)} of {n} "
                             "samples came back; the rest are missing (rerun or `mindsmirror resume` asks again)",
                             0, count=False)
        return rows

    def _switch_to_n1(self, request: Request, got: int) -> None:
        self.client.use_n = False
        if not self._warned_n:
            self._warned_n = True
            log.warning(
                "teacher: %s returned %d of the %d samples asked for with n=%d: the server ignores `n`. "
                "This run now sends one-sample requests; set teacher.use_n: false in the config to do so "
                "from the start", self.client.base_url or "the endpoint", got, len(request.keys), len(request.keys)
            )

    # ---- rows and records ----------------------------------------------------------------------

    def _record_failure(self, request: Request, call_id: str, error: str, attempts: int, count: bool) -> None:
        self._write([failure_record(self.teacher, request, call_id, error, attempts)])
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

    def _write(self, *groups: list) -> None:
        """Append each group of rows, in order; after a failed write, journal them instead."""
        for index, rows in enumerate(groups):
            if self._write_error is None:
                try:
                    self.store.append(rows)
                    continue
                except OSError as error:
                    self._write_failed(error)
            self._keep(list(groups[index:]))
            return

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

    @staticmethod
    def _quietly(action, keys) -> None:
        try:
            action(keys)
        except OSError:  # a marker we could not update; a later run takes over a stale one
            pass


def api_key(teacher: TeacherConfig) -> str:
    """The API key from teacher.api_key_env (the simulated teacher needs none)."""
    key = os.environ.get(teacher.api_key_env)
    if teacher.simulate:
        return key or "simulated"
    if not key:
        raise FatalError(
            f"the environment variable {teacher.api_key_env} is not set: export your API key there "
            "(or name another variable in teacher.api_key_env)"
        )
    return key


@asynccontextmanager
async def open_session(store: Store, config: Config, answer_type: str, examples: Sequence[ExampleRow],
                       total_requests: int, show_progress: bool = True, gate: Gate | None = None):
    """A session with a live teacher client (and the simulated teacher when teacher.simulate is on).

    `total_requests` is what the progress bar counts: one per prompt (Plan.progress_total)."""
    teacher = config.teacher
    simulator = None
    base_url = teacher.base_url
    if teacher.simulate:
        from tasks.simulator.server import start_simulator

        simulator = start_simulator(
            examples={example.input: example.label for example in examples},
            answer_type=answer_type,
            seed=teacher.simulator.seed,
            wrong_rate=teacher.simulator.wrong_rate,
            latency_ms=teacher.simulator.latency_ms,
        )
        base_url = simulator.url
    client = TeacherClient(
        model=teacher.model,
        base_url=base_url,
        api_key=api_key(teacher),
        timeout_s=teacher.timeout_s,
        max_attempts=teacher.max_attempts,
        max_concurrency=teacher.max_concurrency,
        limiter=RateLimiter(teacher.max_rpm, teacher.max_tpm),
        use_n=teacher.use_n,
        gate=gate,
    )
    progress = GenerationProgress(total_requests, enabled=show_progress)
    session = Session(store, config, answer_type, client, Budget(teacher.max_cost_usd, queries.spent_usd(store)),
                      progress, Claims(store.root))
    try:
        with progress:
            yield session
    finally:
        session.finish()
        await client.aclose()
        if simulator is not None:
            simulator.close()
