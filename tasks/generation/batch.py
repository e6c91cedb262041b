"""Generation through the OpenAI Batch API (`teacher.mode: batch`), exactly once across crashes.

One pass (one `generate`) first collects every finished batch into the store, then submits what the
store still lacks, so evaluations of chains of thought collected in a pass go out in that pass's
submission. The store records each batch before anything leaves the machine:

1. "planned": the batch's tag, sample keys and one manifest per request line. The tag hashes the
   keys and the attempt (how many batches with exactly these keys were already collected), so a
   rerun recomputes it and never plans these keys again while the batch is open;
2. upload the JSONL (custom_id = the request's first sample key) as `mindsmirror-<tag>.jsonl`;
3. create the batch with the tag in its metadata, then record "submitted".

A rerun finds a planned batch's file by name and its batch by the tag in the API's list before it
uploads or creates anything, so a kill between any two steps submits nothing twice. Collection
writes rows, then call records (one per line, id "<batch>:<custom_id>", priced at the batch rate)
for lines not yet recorded, then "collected"; lines that expired or failed stay missing and go out
in the next submission.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from storage import BatchRow, CallRow, CotRow, ExampleRow, Store, open_claims, queries
from storage.records import utcnow
from tasks.config import Config, TeacherConfig
from tasks.generation.plan import Plan, Request, plan_generation, price_usd, sampling_of
from tasks.generation.replies import call_record, failure_record, reply_rows
from tasks.teacher.batch_api import TERMINAL, BatchApi, request_line
from tasks.teacher.client import estimate_tokens, reply_from
from tasks.teacher.endpoint import Endpoint
from tasks.teacher.errors import FatalError
from tasks.teacher.prompts import cot_messages, eval_messages

_COLLECT_CHUNK = 1000  # lines per pair of appends (rows, then their call records)


def batch_factor(teacher: TeacherConfig) -> float:
    """What a batch request costs as a share of the same request online."""
    price = teacher.prices.get(teacher.model)
    return 1.0 if price is None else 1.0 - price.batch_discount


def at_batch_prices(plan: Plan, teacher: TeacherConfig) -> Plan:
    return dataclasses.replace(plan, cost_usd=plan.cost_usd * batch_factor(teacher))


@dataclass(frozen=True)
class Line:
    """One request line of a batch, as its manifest records it (prompts are rebuilt from the store)."""

    custom_id: str
    kind: str  # cot | evaluation
    example_id: str
    indices: tuple[int, ...]
    keys: tuple[str, ...]
    cot_key: str | None

    def manifest(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def parse(cls, text: str) -> Line:
        data = json.loads(text)
        return cls(**{**data, "indices": tuple(data["indices"]), "keys": tuple(data["keys"])})


@dataclass
class BatchSummary:
    collected: int = 0  # batches collected this pass
    cots: int = 0
    evaluations: int = 0
    unparseable: int = 0
    lines_failed: int = 0
    lines_missing: int = 0  # expired or cancelled lines, resubmitted
    cost_usd: float = 0.0
    submitted: int = 0  # batches submitted this pass
    submitted_requests: int = 0
    submitted_cost_usd: float = 0.0  # upper bound, at batch prices
    open: dict[str, int] = field(default_factory=dict)  # status -> batches still running
    stopped: str | None = None
    errors: list[str] = field(default_factory=list)

    def describe(self, simulated: bool = False) -> str:
        text = (
            f"batch mode: collected {self.collected} batches ({self.cots} chains of thought, {self.evaluations} "
            f"self-evaluations, {self.unparseable} unparseable, {self.lines_failed} failed and "
            f"{self.lines_missing} expired requests to resubmit; ${self.cost_usd:.4f}); submitted "
            f"{self.submitted} batches of {self.submitted_requests} requests (at most "
            f"${self.submitted_cost_usd:.4f}); "
        )
        running = sum(self.open.values())
        if running:
            states = ", ".join(f"{n} {status}" for status, n in sorted(self.open.items()))
            text += f"{running} batches open ({states}): rerun `mindsmirror generate` to collect them"
        else:
            text += "no batch open"
        if self.errors:
            text += f"; first error: {self.errors[0]}"
        return text + (" (simulated teacher: nothing is paid)" if simulated else "")


class BatchRun:
    """One pass over a store in batch mode: collect what finished, then submit what is missing."""

    def __init__(self, store: Store, config: Config, answer_type: str, examples: Sequence[ExampleRow],
                 api: BatchApi):
        self.store = store
        self.config = config
        self.teacher = config.teacher
        self.answer_type = answer_type
        self.examples = {example.example_id: example for example in examples}
        self.api = api
        self.claims = open_claims(store.root)
        self.summary = BatchSummary()

    def _record(self, latest: BatchRow, event: str, **changes) -> BatchRow:
        row = dataclasses.replace(latest, event_id=uuid.uuid4().hex, event=event, keys=(), requests=(),
                                  created_at=utcnow(), **changes)
        self.store.append([row])
        return row

    # ---- collecting --------------------------------------------------------------------------

    def collect(self) -> None:
        """Poll every open batch; store the output of those that finished; resume unsubmitted ones."""
        def read(con):
            open_rows = queries.latest_batches(con, open_only=True)
            return open_rows, queries.planned_batches(con, [row.tag for row in open_rows])

        open_rows, planned = self.store.read(read)
        for latest in open_rows:
            if latest.batch_id is None:
                self._submit(planned[latest.tag], latest)
                continue
            batch = self.api.retrieve(latest.batch_id)
            counts = batch.request_counts
            progress = dict(status=batch.status, requests_total=counts.total if counts else latest.requests_total,
                            requests_completed=counts.completed if counts else 0,
                            requests_failed=counts.failed if counts else 0)
            if any(getattr(latest, name) != value for name, value in progress.items()):
                latest = self._record(latest, "polled", **progress)
            if batch.status in TERMINAL:
                self._collect(planned[latest.tag], latest, batch)
            else:
                self.summary.open[batch.status] = self.summary.open.get(batch.status, 0) + 1

    def _collect(self, planned: BatchRow, latest: BatchRow, batch) -> None:
        lines = {line.custom_id: line for line in map(Line.parse, planned.requests)}
        results = self.api.lines_of(batch.output_file_id) + self.api.lines_of(batch.error_file_id)
        ids = {item["custom_id"]: f"{batch.id}:{item['custom_id']}" for item in results}
        unrecorded = queries.missing_keys(self.store, "calls", list(ids.values()))
        todo = [item for item in results if ids[item["custom_id"]] in unrecorded and item["custom_id"] in lines]
        latency = max(0.0, (_finished_at(batch) or time.time()) - batch.created_at)
        requests = self._requests([lines[item["custom_id"]] for item in todo])
        for start in range(0, len(todo), _COLLECT_CHUNK):
            rows, calls = [], []
            for item in todo[start : start + _COLLECT_CHUNK]:
                line, call_id = lines[item["custom_id"]], ids[item["custom_id"]]
                response = item.get("response") or {}
                if response.get("status_code") == 200:
                    new_rows, call = self._answered(requests[line.custom_id], call_id, response["body"], latency)
                    rows += new_rows
                    calls.append(call)
                elif response:
                    calls.append(self._failed(line, call_id, response))
            # Rows first, then the call records: a crash between the two keeps the paid answers,
            # and the rerun writes only the call records (the rows' keys are stored already).
            for table_rows in self._unstored(rows):
                self.store.append(table_rows)
            self.store.append(calls)
        returned = {item["custom_id"] for item in results if item.get("response")}
        self.summary.lines_missing += sum(1 for custom_id in lines if custom_id not in returned)
        if batch.errors and batch.errors.data:
            self.summary.errors.append(f"batch {batch.id}: {batch.errors.data[0].message}")
        self._record(latest, "collected", status=batch.status)
        self.summary.collected += 1

    def _unstored(self, rows: list) -> tuple[list, list]:
        """The CoT rows and the evaluation rows whose keys are not stored yet."""
        cots = [row for row in rows if isinstance(row, CotRow)]
        evals = [row for row in rows if not isinstance(row, CotRow)]
        missing = self.store.read(lambda con: queries.missing_keys(con, "cots", [row.key for row in cots])
                                  | queries.missing_keys(con, "evaluations", [row.key for row in evals]))
        return [row for row in cots if row.key in missing], [row for row in evals if row.key in missing]

    def _requests(self, lines: Sequence[Line]) -> dict[str, Request]:
        """Each line's request (prompt rebuilt from the store), by custom_id; one query for the judged CoTs."""
        judged = queries.cots_by_keys(self.store, {line.cot_key for line in lines if line.cot_key})
        cots = {cot.key: cot for cot in judged}
        return {line.custom_id: self._request(line, cots.get(line.cot_key)) for line in lines}

    def _request(self, line: Line, cot: CotRow | None) -> Request:
        example = self.examples.get(line.example_id)
        if example is None:
            raise FatalError(f"{line.example_id}: a batch asked about an example this config no longer loads; "
                             "restore the dataset (or generate.splits) it was submitted with")
        if line.kind == "evaluation":
            messages = eval_messages(self.answer_type, example.input, cot.rationale or cot.text)
        else:
            messages = cot_messages(self.answer_type, example.input)
        return Request(line.kind, line.example_id, example.input, messages, line.indices, line.keys, cot)

    def _answered(self, request: Request, call_id: str, body: dict, latency_s: float) -> tuple[list, CallRow]:
        # The whole wait, creation to finish, is queue time: a batch reports no per-line time on the
        # wire, so server_s stays unknown (null) and does not skew the online server-time median.
        reply = dataclasses.replace(
            reply_from(body, request.messages, model=self.teacher.model, latency_s=latency_s,
                       where="a batch output line", example_id=request.example_id),
            server_s=0.0,
        )
        cost = price_usd(self.teacher, reply.prompt_tokens, reply.completion_tokens) * batch_factor(self.teacher)
        rows = reply_rows(self.teacher, self.answer_type, request, reply, call_id)
        summary = self.summary
        summary.cots += sum(isinstance(row, CotRow) for row in rows)
        summary.evaluations += sum(not isinstance(row, CotRow) for row in rows)
        summary.unparseable += sum(row.parse_error is not None for row in rows)
        summary.cost_usd += cost
        call = call_record(self.teacher, request, call_id, request.keys[: len(rows)], reply, cost)
        return rows, dataclasses.replace(call, server_s=None)

    def _failed(self, line: Line, call_id: str, response: dict) -> CallRow:
        error = (response.get("body") or {}).get("error") or {}
        message = f"{line.example_id}: HTTP {response.get('status_code')} in a batch: {error.get('message', '')}"
        self.summary.lines_failed += 1
        if len(self.summary.errors) < 5:
            self.summary.errors.append(message)
        return failure_record(self.teacher, line, call_id, f"BatchLineError: {message}", attempts=1)

    # ---- submitting --------------------------------------------------------------------------

    def submit(self, plan: Plan) -> None:
        """Plan batches for every missing request not in an open batch, within the budget, and submit them."""
        taken, committed = self.store.read(lambda con: (
            queries.open_batch_keys(con), queries.spent_usd(con) + queries.committed_usd(con)))
        lines = self._lines(plan, taken)
        limit = self.teacher.max_cost_usd
        max_bytes = self.teacher.batch.max_mb * 1_000_000
        chunk: list[tuple[Line, float, bytes]] = []
        size = 0
        for line, estimate, body in lines:
            if limit is not None and committed + estimate > limit:
                self.summary.stopped = (
                    f"budget cap reached: ${committed:.4f} spent or committed to open batches of "
                    f"teacher.max_cost_usd=${limit:.4f}; raise the cap and rerun to submit the rest"
                )
                break
            if chunk and (len(chunk) >= self.teacher.batch.max_requests or size + len(body) > max_bytes):
                self._plan_batch(chunk)
                chunk, size = [], 0
            chunk.append((line, estimate, body))
            size += len(body)
            committed += estimate
        if chunk:
            self._plan_batch(chunk)

    def _lines(self, plan: Plan, taken: set[str]) -> Iterator[tuple[Line, float, bytes]]:
        """The plan's requests as batch lines, without the samples open batches already ask for."""
        for work in plan.work:
            for request in ([work.cot_request] if work.cot_request else []) + list(work.eval_requests):
                pairs = [(index, key) for index, key in zip(request.indices, request.keys) if key not in taken]
                if not pairs:
                    continue
                # Servers without `n` get one line per sample.
                groups = [pairs] if self.teacher.use_n else [[pair] for pair in pairs]
                for group in groups:
                    indices, keys = zip(*group)
                    line = Line(keys[0], request.kind, request.example_id, tuple(indices), tuple(keys),
                                request.cot.key if request.cot is not None else None)
                    narrowed = dataclasses.replace(request, indices=line.indices, keys=line.keys)
                    yield line, self._estimate(narrowed), self._jsonl_line(line, narrowed)

    def _estimate(self, request: Request) -> float:
        sampling = sampling_of(self.teacher, request.kind)
        cost = price_usd(self.teacher, estimate_tokens(request.messages, 0, 0), len(request.keys) * sampling.max_tokens)
        return cost * batch_factor(self.teacher)

    def _jsonl_line(self, line: Line, request: Request) -> bytes:
        return request_line(line.custom_id, self.teacher.model, request.messages, len(line.keys),
                            sampling_of(self.teacher, request.kind))

    def _plan_batch(self, chunk: list[tuple[Line, float, bytes]]) -> None:
        keys = tuple(key for line, _, _ in chunk for key in line.keys)
        keyset = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:32]
        attempt = queries.closed_attempts(self.store, keyset)
        tag = hashlib.sha256(f"{keyset}:{attempt}".encode()).hexdigest()[:32]
        planned = BatchRow(
            event_id=uuid.uuid4().hex, tag=tag, keyset=keyset, event="planned", keys=keys,
            requests=tuple(line.manifest() for line, _, _ in chunk), batch_id=None, input_file_id=None,
            status=None, requests_total=len(chunk), requests_completed=0, requests_failed=0,
            estimated_cost_usd=sum(estimate for _, estimate, _ in chunk),
        )
        self.store.append([planned])
        self._submit(planned, planned, fresh=True)

    def _submit(self, planned: BatchRow, latest: BatchRow, fresh: bool = False) -> None:
        """Upload and create a planned batch, adopting a file or batch an earlier, killed run made
        (none can exist for a batch this process has just recorded: fresh skips the search)."""
        claim = [f"batch:{planned.tag}"]
        if not self.claims.claim(claim):
            return  # another run is submitting this very batch
        since = planned.created_at.timestamp()
        try:
            batch = None if fresh else self.api.find_batch(planned.tag, since)
            if batch is None:
                file_id = latest.input_file_id or self._upload(planned, fresh)
                if latest.input_file_id is None:
                    latest = self._record(latest, "uploaded", input_file_id=file_id)
                batch = self.api.create(file_id, planned.tag)
            self._record(latest, "submitted", batch_id=batch.id, input_file_id=batch.input_file_id,
                         status=batch.status)
        finally:
            self.claims.release(claim)
        self.summary.submitted += 1
        self.summary.submitted_requests += planned.requests_total
        self.summary.submitted_cost_usd += planned.estimated_cost_usd
        self.summary.open[batch.status] = self.summary.open.get(batch.status, 0) + 1

    def _upload(self, planned: BatchRow, fresh: bool) -> str:
        filename = f"mindsmirror-{planned.tag}.jsonl"
        found = None if fresh else self.api.find_file(filename, planned.created_at.timestamp())
        if found is not None:
            return found.id
        lines = [Line.parse(text) for text in planned.requests]
        requests = self._requests(lines)
        content = b"".join(self._jsonl_line(line, requests[line.custom_id]) for line in lines)
        uploaded = self.api.upload(filename, content)
        return uploaded.id


def _finished_at(batch) -> int | None:
    return batch.completed_at or batch.expired_at or batch.failed_at or batch.cancelled_at


def batch_status(store: Store) -> dict:
    """Batches by status and each open one's counts, for `mindsmirror status`."""
    rows = queries.latest_batches(store)
    by_status: dict[str, int] = {}
    for row in rows:
        state = row.status or "not submitted"
        by_status[state] = by_status.get(state, 0) + 1
    report: dict = {"by status": by_status, "open": {}}
    for row in rows:
        if row.event != "collected":
            report["open"][row.batch_id or row.tag] = (
                f"{row.status or 'planned'}: {row.requests_completed} of {row.requests_total} done, "
                f"{row.requests_failed} failed, at most ${row.estimated_cost_usd:.4f}"
            )
    return report


def run_batch_pass(store: Store, config: Config, answer_type: str, examples: Sequence[ExampleRow],
                   endpoint: Endpoint, only_failed: bool = False) -> BatchSummary:
    """Collect finished batches, then plan (after collecting, so new CoTs get their evaluations) and submit."""
    run = BatchRun(store, config, answer_type, examples, endpoint.batches())
    run.collect()
    run.submit(plan_generation(store, config, answer_type, examples, only_failed))
    return run.summary


def cancel_batches(store: Store, endpoint: Endpoint) -> list[str]:
    """Cancel every submitted batch still open; the next `generate` stores what they returned."""
    api, cancelled = endpoint.batches(), []
    for latest in queries.latest_batches(store, open_only=True):
        if latest.batch_id is None or latest.status in TERMINAL:
            continue
        batch = api.cancel(latest.batch_id)
        store.append([dataclasses.replace(latest, event_id=uuid.uuid4().hex, event="polled", keys=(), requests=(),
                                          status=batch.status, created_at=utcnow())])
        cancelled.append(batch.id)
    return cancelled
