"""Asking the teacher for what the store is missing, one response written at a time.

The plan is computed from the store (wanted sample keys anti-joined against stored keys), so a
rerun after any crash asks only for what is missing. Each response is on disk (rows, then its call
record) before it counts as done; `kill -9` loses at most the requests in flight.

Requests flow through one sliding window (the client's concurrency limit and rate limiter) shared by
every example coroutine, so a slow or failing request holds up nobody else.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from storage import CallRow, Claims, CotRow, EvaluationRow, ExampleRow, Store, queries
from tasks.config import Config, TeacherConfig
from tasks.datasets import answer_type, load_dataset
from tasks.errors import FatalError, TeacherError
from tasks.keys import SIMULATED_ENDPOINT, Sampling, endpoint_identity, sample_key
from tasks.parsing import parse_cot, parse_evaluation
from tasks.progress import GenerationProgress
from tasks.prompts import cot_messages, eval_messages, prompt_version
from tasks.ratelimit import RateLimiter
from tasks.teacher import TeacherClient, TeacherReply, estimate_tokens

# Waits until `requests` more requests may go out under a limit shared with other processes
# (the flows pass one backed by a Prefect global rate limit when teacher.shared_rate_limit is set).
Gate = Callable[[int], Awaitable[None]]


class BudgetExceeded(Exception):
    """Dispatching the next request could take spending past teacher.max_cost_usd."""


@dataclass(frozen=True)
class Request:
    kind: str  # cot | evaluation
    example_id: str
    question: str
    messages: list[dict]
    indices: tuple[int, ...]
    keys: tuple[str, ...]
    cot: CotRow | None = None  # the chain of thought being judged


@dataclass(frozen=True)
class ExampleWork:
    example: ExampleRow
    cot_request: Request | None
    eval_requests: tuple[Request, ...]  # for chains of thought already stored


@dataclass(frozen=True)
class Plan:
    work: tuple[ExampleWork, ...]
    cot_requests: int
    eval_requests: int  # for chains of thought already stored
    later_eval_requests: int  # for the chains of thought this plan will buy
    prompt_tokens: int  # estimated
    completion_tokens: int  # upper bound: n * max_tokens
    cost_usd: float  # upper bound at the configured prices

    @property
    def total_requests(self) -> int:
        return self.cot_requests + self.eval_requests + self.later_eval_requests

    def batches(self, size: int) -> Iterator[tuple[ExampleWork, ...]]:
        for start in range(0, len(self.work), size):
            yield self.work[start : start + size]


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


def price_usd(teacher: TeacherConfig, prompt_tokens: int, completion_tokens: int) -> float:
    price = teacher.prices.get(teacher.model)
    if price is None:
        return 0.0
    return (prompt_tokens * price.input + completion_tokens * price.output) / 1_000_000


def endpoint_of(teacher: TeacherConfig) -> str:
    if teacher.simulate:
        return SIMULATED_ENDPOINT
    return endpoint_identity(teacher.base_url or os.environ.get("OPENAI_BASE_URL"))


def _sampling(teacher: TeacherConfig, kind: str) -> Sampling:
    max_tokens = teacher.max_tokens if kind == "cot" else teacher.eval_max_tokens
    return Sampling(teacher.temperature, teacher.top_p, max_tokens)


def _request(
    teacher: TeacherConfig, answer_type: str, kind: str, example: ExampleRow, cot: CotRow | None, wanted: int
) -> tuple[Request, dict[str, int]]:
    """The request for all `wanted` samples of one prompt, and each sample key's index."""
    if kind == "cot":
        messages = cot_messages(answer_type, example.input)
    else:
        messages = eval_messages(answer_type, example.input, cot.rationale or cot.text)
    version = prompt_version(answer_type, kind)
    endpoint = endpoint_of(teacher)
    sampling = _sampling(teacher, kind)
    keys = {
        sample_key(
            endpoint=endpoint,
            model=teacher.model,
            prompt_version=version,
            messages=messages,
            sampling=sampling,
            index=i,
            judged=cot.key if cot is not None else None,
        ): i
        for i in range(wanted)
    }
    request = Request(kind, example.example_id, example.input, messages, tuple(keys.values()), tuple(keys), cot)
    return request, keys


def _narrow(request: Request, missing: set[str]) -> Request | None:
    pairs = [(i, k) for i, k in zip(request.indices, request.keys) if k in missing]
    if not pairs:
        return None
    indices, keys = zip(*pairs)
    return Request(request.kind, request.example_id, request.question, request.messages, indices, keys, request.cot)


def plan_generation(
    store: Store, config: Config, answer_type: str, examples: Sequence[ExampleRow], only_failed: bool = False
) -> Plan:
    """What to ask the teacher: every wanted sample whose key the store does not hold.

    With only_failed, just the samples of requests recorded as failed (and evaluations of their CoTs).
    """
    teacher = config.teacher
    cot_requests = {}
    all_cot_keys: list[str] = []
    for example in examples:
        request, keys = _request(teacher, answer_type, "cot", example, None, teacher.n_cots)
        cot_requests[example.example_id] = request
        all_cot_keys.extend(keys)
    missing_cots = queries.missing_keys(store, "cots", all_cot_keys)
    failed = queries.failed_keys(store) if only_failed else None
    if failed is not None:
        missing_cots &= failed

    stored_cots = queries.cots_by_keys(store, sorted(set(all_cot_keys) - missing_cots))
    eval_requests: dict[str, list[Request]] = {}
    all_eval_keys: list[str] = []
    by_id = {example.example_id: example for example in examples}
    if teacher.n_evals:
        for cot in stored_cots:
            if cot.parse_error is not None:
                continue  # nothing to judge; such rows are never trained on
            request, keys = _request(
                teacher, answer_type, "evaluation", by_id[cot.example_id], cot, teacher.n_evals
            )
            eval_requests.setdefault(cot.example_id, []).append(request)
            all_eval_keys.extend(keys)
    missing_evals = queries.missing_keys(store, "evaluations", all_eval_keys)
    if failed is not None:
        missing_evals &= failed

    work = []
    n_cot_requests = n_eval_requests = new_cots = 0
    prompt_tokens = completion_tokens = 0
    for example in examples:
        cot_request = _narrow(cot_requests[example.example_id], missing_cots)
        evals = tuple(
            narrowed
            for request in eval_requests.get(example.example_id, [])
            if (narrowed := _narrow(request, missing_evals)) is not None
        )
        if cot_request is None and not evals:
            continue
        work.append(ExampleWork(example, cot_request, evals))
        for request in ([cot_request] if cot_request else []) + list(evals):
            n = len(request.keys)
            sampling = _sampling(teacher, request.kind)
            calls = 1 if teacher.use_n else n
            prompt_tokens += calls * estimate_tokens(request.messages, 0, 0)
            completion_tokens += n * sampling.max_tokens
        if cot_request is not None:
            n_cot_requests += 1 if teacher.use_n else len(cot_request.keys)
            new_cots += len(cot_request.keys)
        n_eval_requests += sum(1 if teacher.use_n else len(r.keys) for r in evals)

    # Each new chain of thought will need its own evaluation request: count those in the estimate,
    # sized like the CoT prompt plus the CoT itself.
    eval_calls_per_cot = (1 if teacher.use_n else teacher.n_evals) if teacher.n_evals else 0
    if new_cots and eval_calls_per_cot:
        average_prompt = prompt_tokens / max(1, n_cot_requests + n_eval_requests)
        prompt_tokens += int(new_cots * eval_calls_per_cot * (average_prompt + teacher.max_tokens))
        completion_tokens += new_cots * teacher.n_evals * teacher.eval_max_tokens
    return Plan(
        work=tuple(work),
        cot_requests=n_cot_requests,
        eval_requests=n_eval_requests,
        later_eval_requests=new_cots * eval_calls_per_cot,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=price_usd(teacher, prompt_tokens, completion_tokens),
    )


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
                    request, _ = _request(
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
        sampling = _sampling(self.teacher, request.kind)
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
        sampling = _sampling(self.teacher, request.kind)
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
        from tasks.simulator import start_simulator

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



def sync_examples(store: Store, config: Config) -> tuple[list[ExampleRow], str]:
    """Load and validate the dataset (before any money is spent), store examples not yet stored,
    and return those of the splits to generate for, with the dataset's answer type.

    An example keeps the split it was first stored with, so a grown dataset never moves a stored
    example between train and validation.
    """
    rows = load_dataset(config.dataset)
    store.append(queries.new_examples(store, rows))
    loaded = {row.example_id for row in rows}
    stored = queries.examples(store, config.generate.splits)
    return [row for row in stored if row.example_id in loaded], answer_type(config.dataset)
