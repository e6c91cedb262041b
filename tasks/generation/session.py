"""The live part of generation: asking the teacher and writing each response as it arrives.

Each response is on disk (rows, then its call record) before it counts as done; `kill -9` loses at
most the requests in flight. Requests flow through one sliding window (the client's concurrency limit
and rate limiter) shared by every example coroutine, so a slow or failing request holds up nobody else.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from storage import CallRow, Claims, CotRow, EvaluationRow, ExampleRow, Store, queries
from tasks.config import Config, TeacherConfig
from tasks.generation.plan import ExampleWork, Request, price_usd, request_for, sampling_of
from tasks.generation.progress import GenerationProgress
from tasks.teacher.client import TeacherClient, TeacherReply, estimate_tokens
from tasks.teacher.errors import FatalError, TeacherError
from tasks.teacher.parsing import parse_cot, parse_evaluation
from tasks.teacher.prompts import prompt_version
from tasks.teacher.ratelimit import RateLimiter

# Waits until `requests` more requests may go out under a limit shared with other processes
# (the flows pass one backed by a Prefect global rate limit when teacher.shared_rate_limit is set).
Gate = Callable[[int], Awaitable[None]]


class BudgetExceeded(Exception):
    """Dispatching the next request could take spending past teacher.max_cost_usd."""



@dataclass
class Summary:
    requests_ok: int = 0
    requests_failed: int = 0
    requests_skipped: int = 0  # claimed by another run at the same moment
    cots: int = 0
    evaluations: int = 0
    unparseable: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    stopped: str | None = None
    errors: list[str] = field(default_factory=list)



class Budget:
    """Spending so far plus what in-flight requests could cost, checked before each dispatch."""

    def __init__(self, limit: float | None, spent: float):
        self.limit = limit
        self.spent = spent
        self.reserved = 0.0

    def reserve(self, amount: float) -> None:
        if self.limit is not None and self.spent + self.reserved + amount > self.limit:
            raise BudgetExceeded(
                f"budget cap reached: ${self.spent:.4f} spent of teacher.max_cost_usd=${self.limit:.4f} "
                f"(next request could cost up to ${amount:.4f}); raise the cap and rerun to continue"
            )
        self.reserved += amount

    def settle(self, reserved: float, actual: float) -> None:
        self.reserved -= reserved
        self.spent += actual


class Session:
    """The live parts of one generation run: store, teacher client, budget, progress."""

    def __init__(self, store: Store, config: Config, answer_type: str, client: TeacherClient,
                 budget: Budget, progress: GenerationProgress, claims: Claims, gate: Gate | None = None):
        self.store = store
        self.teacher = config.teacher
        self.answer_type = answer_type
        self.client = client
        self.budget = budget
        self.progress = progress
        self.claims = claims
        self.gate = gate
        self.summary = Summary()
        self.fatal: FatalError | None = None

    def _stop(self, reason: str) -> None:
        if self.summary.stopped is None:
            self.summary.stopped = reason

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
        if evals:
            replies = await asyncio.gather(*(self._ask(request) for request in evals))
            failed += sum(rows is None for rows in replies)
        return failed

    async def _ask(self, request: Request) -> list | None:
        """The rows a request produced; [] when it was not sent, None when it failed."""
        if self.summary.stopped:
            return []
        if not self.claims.claim(request.keys):
            self.summary.requests_skipped += 1
            self.progress.advance(skipped=1)
            return []
        sampling = sampling_of(self.teacher, request.kind)
        n = len(request.keys)
        estimate = price_usd(
            self.teacher, estimate_tokens(request.messages, 0, 0) * (1 if self.teacher.use_n else n),
            n * sampling.max_tokens,
        )
        try:
            self.budget.reserve(estimate)
        except BudgetExceeded as stop:
            self.claims.release(request.keys)
            self._stop(str(stop))
            return []
        call_id = uuid.uuid4().hex
        try:
            if self.gate is not None:
                await self.gate(1 if self.teacher.use_n else n)
            reply = await self.client.complete(
                request.messages,
                n=n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                example_id=request.example_id,
            )
        except FatalError as error:
            self.budget.settle(estimate, 0.0)
            self.claims.release(request.keys)
            self.fatal = self.fatal or error
            self._stop(str(error))
            return []
        except TeacherError as error:
            self.budget.settle(estimate, 0.0)
            self._record_failure(request, call_id, error)
            self.claims.release(request.keys)
            return None
        cost = price_usd(self.teacher, reply.prompt_tokens, reply.completion_tokens)
        self.budget.settle(estimate, cost)
        rows = self._rows(request, reply, call_id)
        # Rows first, then the call record: a crash between the two keeps the paid answer.
        self.store.append(rows)
        self.store.append([self._call(request, call_id, reply, cost)])
        self.claims.done(request.keys)
        self._count(rows, reply, cost)
        return rows

    def _rows(self, request: Request, reply: TeacherReply, call_id: str) -> list:
        sampling = sampling_of(self.teacher, request.kind)
        version = prompt_version(self.answer_type, request.kind)
        rows = []
        for index, key, text, finish in zip(request.indices, request.keys, reply.texts, reply.finish_reasons):
            common = dict(
                key=key,
                example_id=request.example_id,
                text=text,
                finish_reason=finish,
                teacher_model=reply.model or self.teacher.model,
                prompt_version=version,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                source="teacher",
                call_id=call_id,
            )
            if request.kind == "cot":
                parsed = parse_cot(text, self.answer_type, finish, question=request.question)
                rows.append(
                    CotRow(cot_index=index, answer=parsed.answer, rationale=parsed.rationale,
                           parse_error=parsed.error, **common)
                )
            else:
                parsed = parse_evaluation(text, finish)
                rows.append(
                    EvaluationRow(cot_index=request.cot.cot_index, cot_key=request.cot.key, eval_index=index,
                                  verdict=parsed.verdict, rationale=parsed.rationale,
                                  parse_error=parsed.error, **common)
                )
        return rows

    def _call(self, request: Request, call_id: str, reply: TeacherReply, cost: float) -> CallRow:
        return CallRow(
            call_id=call_id,
            kind=request.kind,
            example_id=request.example_id,
            keys=request.keys,
            status="ok",
            attempts=reply.attempts,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            cost_usd=cost,
            latency_s=reply.latency_s,
            error=None,
            teacher_model=reply.model or self.teacher.model,
        )

    def _record_failure(self, request: Request, call_id: str, error: TeacherError) -> None:
        self.store.append([
            CallRow(
                call_id=call_id,
                kind=request.kind,
                example_id=request.example_id,
                keys=request.keys,
                status="failed",
                attempts=getattr(error, "attempts", 0) or 0,
                prompt_tokens=0,
                completion_tokens=0,
                cost_usd=0.0,
                latency_s=0.0,
                error=f"{type(error).__name__}: {error}",
                teacher_model=self.teacher.model,
            )
        ])
        self.summary.requests_failed += 1
        if len(self.summary.errors) < 5:
            self.summary.errors.append(str(error))  # the message starts with the example id
        self.progress.advance(failed=1)

    def _count(self, rows: list, reply: TeacherReply, cost: float) -> None:
        summary = self.summary
        summary.requests_ok += 1
        unparseable = sum(row.parse_error is not None for row in rows)
        summary.unparseable += unparseable
        if rows and isinstance(rows[0], CotRow):
            summary.cots += len(rows)
        else:
            summary.evaluations += len(rows)
        summary.prompt_tokens += reply.prompt_tokens
        summary.completion_tokens += reply.completion_tokens
        summary.cost_usd += cost
        self.progress.advance(
            done=1, tokens=reply.prompt_tokens + reply.completion_tokens, cost=cost, unparseable=unparseable
        )


def _api_key(teacher: TeacherConfig) -> str:
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
    """A session with a live teacher client (and the simulated teacher when teacher.simulate is on)."""
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
    limiter = RateLimiter(teacher.max_rpm, teacher.max_tpm)
    client = TeacherClient(
        model=teacher.model,
        base_url=base_url,
        api_key=_api_key(teacher),
        timeout_s=teacher.timeout_s,
        max_attempts=teacher.max_attempts,
        max_concurrency=teacher.max_concurrency,
        limiter=limiter,
        use_n=teacher.use_n,
    )
    progress = GenerationProgress(total_requests, enabled=show_progress)
    session = Session(store, config, answer_type, client, Budget(teacher.max_cost_usd, queries.spent_usd(store)),
                      progress, Claims(store.root), gate)
    try:
        with progress:
            yield session
    finally:
        await client.aclose()
        if simulator is not None:
            simulator.close()
