"""What a teacher reply becomes in the store: one row per sample it returned, then its call record.

Online generation (session.py) and Batch API collection (batch.py) both build them here, so a
sample is parsed and recorded the same way whichever path bought it.
"""

from __future__ import annotations

import uuid

from storage import CallRow, CotRow, EvaluationRow
from tasks.config import TeacherConfig
from tasks.generation.plan import Request, sampling_of
from tasks.teacher.client import TeacherReply
from tasks.teacher.parsing import parse_cot, parse_evaluation
from tasks.teacher.prompts import prompt_version


def reply_rows(teacher: TeacherConfig, answer_type: str, request: Request, reply: TeacherReply,
               call_id: str) -> list[CotRow | EvaluationRow]:
    """A row per sample of the reply, parsed (a reply may hold fewer samples than the request's keys)."""
    sampling = sampling_of(teacher, request.kind)
    version = prompt_version(answer_type, request.kind)
    rows = []
    for index, key, text, finish in zip(request.indices, request.keys, reply.texts, reply.finish_reasons):
        common = dict(
            key=key, example_id=request.example_id, text=text, finish_reason=finish,
            teacher_model=reply.model or teacher.model, prompt_version=version,
            temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_tokens,
            source="teacher", call_id=call_id,
        )
        refused = reply.refusal if finish == "content_filter" and not text else None
        if request.kind == "cot":
            parsed = parse_cot(text, answer_type, finish, question=request.question)
            rows.append(CotRow(cot_index=index, answer=parsed.answer, rationale=parsed.rationale,
                               parse_error=refused or parsed.error, **common))
        else:
            parsed = parse_evaluation(text, finish)
            rows.append(EvaluationRow(cot_index=request.cot.cot_index, cot_key=request.cot.key,
                                      eval_index=index, verdict=parsed.verdict, rationale=parsed.rationale,
                                      parse_error=refused or parsed.error, **common))
    return rows


def call_record(teacher: TeacherConfig, request: Request, call_id: str, keys: tuple[str, ...],
                reply: TeacherReply, cost: float, waited_s: float = 0.0) -> CallRow:
    """The `ok` record of a paid call for `keys` (the samples that came back); `waited_s` is time the
    request queued before the client got it, counted into its latency and queue time."""
    return CallRow(
        call_id=call_id, kind=request.kind, example_id=request.example_id, keys=keys, status="ok",
        attempts=reply.attempts, prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
        cost_usd=cost, latency_s=waited_s + reply.latency_s, error=reply.refusal,
        teacher_model=reply.model or teacher.model, queue_s=waited_s + reply.queue_s,
        server_s=reply.server_s, usage_estimated=reply.usage_estimated,
    )


def failure_record(teacher: TeacherConfig, request, call_id: str, error: str, attempts: int) -> CallRow:
    """The `failed` record of a request (anything with kind, example_id and keys) that bought nothing."""
    return CallRow(
        call_id=call_id, kind=request.kind, example_id=request.example_id, keys=request.keys,
        status="failed", attempts=attempts, prompt_tokens=0, completion_tokens=0, cost_usd=0.0,
        latency_s=0.0, error=error, teacher_model=teacher.model,
    )


def abandoned_record(teacher: TeacherConfig, request: Request, attempts: int, cost: float) -> CallRow:
    """The `abandoned` record of a request's attempts that were sent and timed out: the server may
    have answered (and billed) them anyway, so their estimated cost counts as spent. It holds no
    keys: it says nothing about which samples are stored or failed."""
    return CallRow(
        call_id=uuid.uuid4().hex, kind=request.kind, example_id=request.example_id, keys=(), status="abandoned",
        attempts=attempts, prompt_tokens=0, completion_tokens=0, cost_usd=cost, latency_s=0.0,
        error=f"{attempts} attempts timed out after they were sent: possibly billed (estimated cost)",
        teacher_model=teacher.model,
    )
