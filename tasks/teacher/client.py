"""The one teacher client: an OpenAI-compatible chat endpoint, asked through a rate limiter.

Retries live here and only here: the openai SDK's own retries are off (max_retries=0), and the
Prefect tasks that call this client do not retry either. A transient failure is retried with
jittered exponential backoff (tenacity); a 429's Retry-After / retry-after-ms, of any length, pauses
dispatch for every caller through the shared RateLimiter (the SDK would ignore a long one).

A 429 without Retry-After pauses every caller for an exponential backoff (RateLimiter.backoff);
every 429, with or without the header, lowers the pace (RateLimiter.slow_down, AIMD). Every HTTP attempt, retries included, passes the shared gate (a
Prefect global rate limit across runs, when configured) as well as the local limiter.

A reply truncated by max_tokens or stopped by a content filter is returned as it is, with its
finish reason, to be recorded; paying again would usually buy the same truncation. A content-filter
400 (RefusedError) becomes such a reply too: empty texts with finish reason "content_filter".
A server that ignores `n` returns fewer texts than asked for; the caller sees that in the reply.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

import httpx2
import openai
from tenacity import RetryCallState

from tasks.teacher.errors import (
    FatalError,
    OutputError,
    RefusedError,
    TeacherError,
    TransientError,
    translate,
)
from tasks.teacher.ratelimit import RateLimiter
from tasks.teacher.retries import async_retrying
from tasks.teacher.tokens import estimate_completion_tokens, estimate_tokens
from tasks.teacher.window import Window

log = logging.getLogger(__name__)

# Waits until `requests` more requests may go out under a limit shared with other processes
# (the flows pass one backed by a Prefect global rate limit when teacher.shared_rate_limit is set).
Gate = Callable[[int], Awaitable[None]]

# Until the endpoint has answered once, requests go one at a time (a wrong key or model reaches it
# once), and an endpoint that refuses connections is given up on after this long: retries wait
# 1, 2, 4, 8 s at most (jittered), so the run stops within about twice this.
UNREACHABLE_GIVE_UP_S = 8.0


@dataclass(frozen=True)
class TeacherReply:
    texts: tuple[str, ...]  # one per sample; fewer than n if the server ignored n
    finish_reasons: tuple[str | None, ...]
    prompt_tokens: int
    completion_tokens: int
    model: str
    latency_s: float  # wall time of the whole call, retries included
    attempts: int  # HTTP requests sent for this reply
    server_s: float = 0.0  # time on the wire (of the longest of parallel one-sample requests)
    usage_estimated: bool = False  # the server sent no `usage`: token counts are our estimate
    refusal: str | None = None  # why the endpoint refused the prompt (content filter), if it did
    abandoned: int = 0  # attempts sent and given up on after timeout_s: the server may bill them

    @property
    def queue_s(self) -> float:
        """The part of latency_s not spent on the wire: connection slots, rate limits, backoff."""
        return max(0.0, self.latency_s - self.server_s)


def reply_from(body, messages: Sequence[dict], *, model: str, latency_s: float, where: str,
               example_id: str) -> TeacherReply:
    """The reply a chat completion body (parsed JSON: online, or a batch output line) carries.

    A body that is not a chat completion is a TransientError (a server that garbled it may not
    again); one with no choices is an OutputError. Without `usage` the tokens are estimated."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not all(
        isinstance(choice, dict) and isinstance(choice.get("message"), dict)
        and isinstance(choice["message"].get("content"), (str, type(None)))
        for choice in choices
    ):
        raise TransientError(f"{example_id}: malformed response body from {where}", example_id=example_id)
    if not choices:
        raise OutputError(f"{example_id}: the teacher replied with no choices", example_id=example_id)
    choices = sorted(choices, key=lambda choice: choice.get("index") or 0)
    texts = tuple(choice["message"].get("content") or "" for choice in choices)
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
    estimated = not isinstance(prompt_tokens, int) or not isinstance(completion_tokens, int)
    if estimated:  # some servers report no usage; estimate it so cost caps still count something
        prompt_tokens, completion_tokens = estimate_tokens(messages, 0, 0), estimate_completion_tokens(texts)
    return TeacherReply(
        texts=texts,
        finish_reasons=tuple(choice.get("finish_reason") for choice in choices),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        model=body.get("model") or model,
        latency_s=latency_s,
        attempts=1,
        server_s=latency_s,
        usage_estimated=estimated,
    )


class _Secret:
    """Holds the API key for redaction without ever showing it."""

    def __init__(self, value: str):
        self.value = value

    def __repr__(self) -> str:
        return "'***'"


class TeacherClient:
    """Asks an OpenAI-compatible chat endpoint for `n` samples of one prompt."""

    def __init__(
        self,
        model: str,
        base_url: str | None,
        api_key: str,
        timeout_s: float = 60.0,
        max_attempts: int = 6,
        max_concurrency: int = 32,
        limiter: RateLimiter | None = None,
        use_n: bool = True,
        *,
        on_retry: Callable[[TeacherError], None] | None = None,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        gate: Gate | None = None,
    ):
        if not api_key:
            raise FatalError("no API key: export it in the variable named by teacher.api_key_env")
        self.model = model
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.max_concurrency = max_concurrency
        self.limiter = limiter or RateLimiter(None, None)
        self.use_n = use_n
        self.on_retry = on_retry
        self.gate = gate
        self._backoff_initial_s, self._backoff_max_s = backoff_initial_s, backoff_max_s
        self._warned_n = False
        self._secret = _Secret(api_key)
        self.window = Window(max_concurrency)
        self.answered = False  # whether the endpoint has answered a request of this client yet
        self._first: asyncio.Lock | None = None
        self._first_loop: asyncio.AbstractEventLoop | None = None
        self._client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0)

    def __repr__(self) -> str:
        return f"TeacherClient(model={self.model!r}, base_url={self.base_url!r}, use_n={self.use_n})"

    async def complete(
        self,
        messages: list[dict],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: int,
        example_id: str,
        admit: Callable[[], Awaitable[bool]] | None = None,
        keep: Callable[[TeacherReply], Awaitable[None]] | None = None,
    ) -> TeacherReply | None:
        """n samples for one prompt; raises FatalError, OutputError or TransientError (retries spent).

        The request waits for its slots in the concurrency window first; then `admit` (when given)
        decides whether it is still to be sent (the caller claims its keys and reserves its cost
        there): None when it says no. `keep` (when given) stores the reply before its slots free up,
        so the window also bounds the answers paid for and not yet stored (what kill -9 loses)."""
        started = time.perf_counter()
        held = await self.window.acquire(1 if self.use_n else n)
        alone = await self._alone_until_answered()
        try:
            if admit is not None and not await admit():
                return None
            reply = await self._complete(messages, n, temperature, top_p, max_tokens, example_id, started,
                                         held if self.answered else 1)
            if keep is not None:
                await keep(reply)
            return reply
        except TransientError as error:
            if error.unreachable and not self.answered:
                raise FatalError(f"cannot connect to the teacher at {self._where()} ({getattr(error, 'attempts', 1)} attempts in "
                                 f"{time.perf_counter() - started:.0f} s): start its server or fix teacher.base_url",
                                 example_id=example_id) from None
            raise
        finally:
            if alone:
                self._first.release()
            self.window.release(held)

    async def _alone_until_answered(self) -> bool:
        """Until the endpoint has answered once, one request at a time: returns whether this one
        holds the turn (and must release it)."""
        if self.answered:
            return False
        loop = asyncio.get_running_loop()
        if self._first is None or self._first_loop is not loop:
            self._first, self._first_loop = asyncio.Lock(), loop
        await self._first.acquire()
        if self.answered:
            self._first.release()
            return False
        return True

    async def _complete(self, messages: list[dict], n: int, temperature: float, top_p: float, max_tokens: int,
                        example_id: str, started: float, held: int) -> TeacherReply:
        params = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
        if self.use_n or n == 1:
            parts, failed_attempts = [await self._with_retries(messages, n, params, example_id)], 0
            self._check_n(parts[0], n)
        else:
            parts, failed_attempts = await self._one_by_one(messages, n, params, example_id, held)
        return TeacherReply(
            texts=tuple(text for part in parts for text in part.texts),
            finish_reasons=tuple(reason for part in parts for reason in part.finish_reasons),
            prompt_tokens=sum(part.prompt_tokens for part in parts),
            completion_tokens=sum(part.completion_tokens for part in parts),
            model=parts[0].model,
            latency_s=time.perf_counter() - started,
            attempts=sum(part.attempts for part in parts) + failed_attempts,
            server_s=max(part.server_s for part in parts),
            usage_estimated=any(part.usage_estimated for part in parts),
            refusal=next((part.refusal for part in parts if part.refusal), None),
            abandoned=sum(part.abandoned for part in parts),
        )

    def _check_n(self, reply: TeacherReply, n: int) -> None:
        """A server that returns fewer samples than asked for ignores `n`: from now on this client
        sends one-sample requests (the caller asks again for the rest)."""
        if len(reply.texts) >= n or reply.refusal or not self.use_n:
            return
        self.use_n = False
        if not self._warned_n:
            self._warned_n = True
            log.warning(
                "teacher: %s returned %d of the %d samples asked for with n=%d: the server ignores `n`. "
                "This run now sends one-sample requests; set teacher.use_n: false in the config to do so "
                "from the start", self._where(), len(reply.texts), n, n
            )

    async def _one_by_one(self, messages: list[dict], n: int, params: dict, example_id: str, held: int
                          ) -> tuple[list[TeacherReply], int]:
        """For servers without `n`: n one-sample requests, `held` (the window slots this request
        holds) at a time. The samples that came back are kept even if some requests failed (they are
        paid for); the reply is then shorter than n and the missing samples stay missing for a rerun.
        Nothing back at all, or a fatal error, raises."""
        slots = asyncio.Semaphore(held)

        async def one() -> TeacherReply:
            async with slots:
                return await self._with_retries(messages, 1, params, example_id)

        outcomes = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
        parts = [outcome for outcome in outcomes if isinstance(outcome, TeacherReply)]
        errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        fatal = [error for error in errors if not isinstance(error, TeacherError) or isinstance(error, FatalError)]
        if fatal or not parts:
            first = (fatal or errors)[0]
            if isinstance(first, TeacherError):
                first.abandoned = sum(getattr(error, "abandoned", 0) for error in errors)
            raise first
        if errors:
            log.warning("teacher: %s: %d of %d one-sample requests failed: %s", example_id, len(errors), n, errors[0])
        abandoned = sum(error.abandoned for error in errors)
        return [replace(parts[0], abandoned=parts[0].abandoned + abandoned), *parts[1:]], sum(
            getattr(error, "attempts", 0) for error in errors)

    async def _with_retries(self, messages: list[dict], n: int, params: dict, example_id: str) -> TeacherReply:
        attempts = 0
        wire = [0.0]  # seconds on the wire over all attempts
        abandoned = [0]  # attempts that timed out (before the last)

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception()
            abandoned[0] += getattr(error, "timed_out", False)
            log.info("teacher: retrying %s after attempt %d: %s", example_id, state.attempt_number, error)
            if self.on_retry is not None:
                self.on_retry(error)

        def give_up(state: RetryCallState) -> bool:  # an endpoint that never answered refuses connections
            error = state.outcome.exception()
            return (not self.answered and isinstance(error, TransientError) and error.unreachable
                    and state.seconds_since_start >= UNREACHABLE_GIVE_UP_S)

        retrying = async_retrying(self.max_attempts, initial_s=self._backoff_initial_s,
                                  max_s=self._backoff_max_s, before_sleep=before_sleep, give_up=give_up)
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    reply = await self._send(messages, n, params, example_id, wire)
        except RefusedError as refused:
            self.answered = True
            log.warning("teacher: %s", refused)
            return TeacherReply(("",) * n, ("content_filter",) * n, 0, 0, self.model, wire[0], attempts,
                                server_s=wire[0], refusal=refused.reason, abandoned=abandoned[0])
        except TeacherError as error:
            error.attempts = attempts
            error.abandoned = abandoned[0] + getattr(error, "timed_out", False)
            raise
        return replace(reply, attempts=attempts, server_s=wire[0], abandoned=abandoned[0])

    async def _send(self, messages: list[dict], n: int, params: dict, example_id: str, wire: list[float]
                    ) -> TeacherReply:
        """One HTTP request; adds its time on the wire to wire[0]. Its window slot was taken (in
        complete) before the limiter's grant, so that the request goes out at the granted moment:
        granting first and queueing for a slot after would release requests granted while all slots
        were busy in a burst."""
        estimated = estimate_tokens(messages, n, params["max_tokens"])
        if self.gate is not None:
            await self.gate(1)
        sent_at = await self.limiter.acquire(estimated)
        started = time.perf_counter()
        try:
            # The SDK's generic POST (documented for endpoints it has no method for): the same
            # request, auth, timeout and errors as chat.completions.create without its per-request
            # type transform of every message, which was a third of this client's CPU per request.
            raw = await self._client.post("/chat/completions", cast_to=httpx2.Response,
                                          body={"model": self.model, "messages": messages, "n": n, **params})
            body = json.loads(raw.text)
        except Exception as exc:  # translated into our error tree (or re-raised) just below
            error = self._translate(exc, example_id)
        else:
            error = None
        wire[0] += time.perf_counter() - started
        if error is not None:
            if isinstance(error, TransientError) and error.retry_after:
                level = logging.WARNING if error.retry_after >= 1 else logging.INFO
                log.log(level, "teacher: %s asked to wait %.3g s; pausing all requests", self._where(),
                        error.retry_after)
                self.limiter.pause(error.retry_after)
                if error.status == 429 and self.limiter.slow_down(sent_at):
                    log.info("teacher: %s answered 429; lowering the pace to %.0f requests/min", self._where(),
                             self.limiter.adaptive_rpm or 0)
            elif isinstance(error, TransientError) and error.status == 429:
                paused = self.limiter.backoff(sent_at)
                log.warning("teacher: %s answered 429 without Retry-After; pausing all requests %.3g s and "
                            "lowering the pace to %.0f requests/min", self._where(), paused,
                            self.limiter.adaptive_rpm or 0)
            raise error
        reply = reply_from(body, messages, model=self.model, latency_s=time.perf_counter() - started,
                           where=self._where(), example_id=example_id)
        self.answered = True
        self.limiter.settle(estimated, reply.prompt_tokens + reply.completion_tokens)
        self.limiter.recover()
        return reply

    def _where(self) -> str:
        return self.base_url or "the endpoint"

    def _translate(self, exc: BaseException, example_id: str) -> TeacherError:
        if not isinstance(exc, (openai.OpenAIError, ValueError)):
            raise exc
        return translate(exc, example_id, model=self.model, base_url=self.base_url,
                         secrets=(self._secret.value,))

    async def aclose(self) -> None:
        await self._client.close()
