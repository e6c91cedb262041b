"""The teacher client: the real openai client against the simulated teacher on 127.0.0.1."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from datetime import datetime, timedelta, timezone

import httpx2
import openai
import pytest
from conftest import FakeTime

from simulator.server import Deviations, start_simulator
from tasks.data.arithmetic import generate_problems
from tasks.teacher.client import TeacherClient, estimate_tokens
from tasks.teacher.errors import FatalError, OutputError, TransientError, retry_after_seconds, translate
from tasks.teacher.prompts import cot_messages
from tasks.teacher.ratelimit import RateLimiter
from tasks.teacher.window import Window

API_KEY = "sk-test-do-not-log-0123456789abcdef"
PROBLEMS = generate_problems(10, 0, "train")
EXAMPLES = {problem.question: problem.equation for problem in PROBLEMS}
MESSAGES = cot_messages("equation", PROBLEMS[0].question)
SAMPLING = {"temperature": 0.7, "top_p": 1.0, "max_tokens": 256}


def _client(sim, **options) -> TeacherClient:
    defaults = {"timeout_s": 5.0, "max_attempts": 4, "max_concurrency": 8, "backoff_initial_s": 0.01,
                "backoff_max_s": 0.05}
    return TeacherClient("simulated-teacher", sim.url, options.pop("api_key", API_KEY), **{**defaults, **options})


def _complete(sim, n=1, messages=MESSAGES, sampling=None, **options):
    async def run():
        client = _client(sim, **options)
        try:
            return await client.complete(messages, n=n, example_id="svamp-train-00001", **(sampling or SAMPLING))
        finally:
            await client.aclose()

    return asyncio.run(run())


@pytest.fixture
def sim():
    with start_simulator(EXAMPLES, "equation", seed=3) as running:
        yield running


def test_n_samples_come_from_one_request(sim):
    reply = _complete(sim, n=5)
    stats = sim.stats()
    assert len(reply.texts) == 5 and reply.finish_reasons == ("stop",) * 5
    assert stats["requests"] == 1 and reply.attempts == 1
    assert (reply.prompt_tokens, reply.completion_tokens) == (stats["prompt_tokens"], stats["completion_tokens"])
    assert reply.model == "simulated" and reply.latency_s > 0


def test_without_n_support_sends_n_one_sample_requests_and_merges_them(sim):
    together = _complete(sim, n=4)
    sim.reset()
    separate = _complete(sim, n=4, use_n=False)
    assert sim.stats()["requests"] == 4 and separate.attempts == 4
    assert sorted(separate.texts) == sorted(together.texts)  # the same draws, in whatever order they came
    assert separate.prompt_tokens == 4 * together.prompt_tokens


def test_failed_one_sample_requests_keep_the_samples_that_came_back(sim):
    sim.set_faults(next_faults=("error_500",))
    reply = _complete(sim, n=3, use_n=False, max_attempts=1)
    assert len(reply.texts) == 2 and reply.attempts == 3


def test_a_429_with_retry_after_over_60_s_pauses_dispatch_for_that_long(sim):
    sim.set_faults(next_faults=("rate_limit",), retry_after_s=90)
    fake = FakeTime()
    limiter = RateLimiter(None, None, clock=fake.clock, sleep=fake.sleep)
    reply = _complete(sim, n=2, limiter=limiter)
    assert len(reply.texts) == 2 and reply.attempts == 2
    assert limiter.paused_until == pytest.approx(90.0) and limiter.pauses == 1
    assert sum(fake.sleeps) == pytest.approx(90.0)  # waited the whole 90 s (on the fake clock)
    assert sim.stats()["by_status"] == {"429": 1, "200": 1}


def test_retry_after_ms_is_preferred_and_any_length_is_kept():
    assert retry_after_seconds(httpx2.Headers({"retry-after-ms": "1500", "retry-after": "2"})) == 1.5
    assert retry_after_seconds(httpx2.Headers({"retry-after": "3600"})) == 3600.0
    assert retry_after_seconds(httpx2.Headers({"retry-after": "soon"})) is None
    in_two_minutes = email.utils.format_datetime(datetime.now(timezone.utc) + timedelta(seconds=120), usegmt=True)
    assert retry_after_seconds(httpx2.Headers({"retry-after": in_two_minutes})) == pytest.approx(120, abs=2)
    assert retry_after_seconds(httpx2.Headers({})) is None


@pytest.mark.parametrize("fault", ["error_500", "drop", "malformed"])
def test_transient_faults_are_retried(sim, fault):
    sim.set_faults(next_faults=(fault, fault))
    retried = []
    reply = _complete(sim, n=2, on_retry=retried.append)
    assert len(reply.texts) == 2 and reply.attempts == 3
    assert all(isinstance(error, TransientError) for error in retried) and len(retried) == 2


def test_a_stalled_request_times_out_and_is_retried(sim):
    sim.set_faults(next_faults=("stall",), stall_s=2.0)
    started = time.perf_counter()
    reply = _complete(sim, timeout_s=0.3)
    assert reply.attempts == 2 and time.perf_counter() - started < 1.5


def test_transient_errors_give_up_after_max_attempts(sim):
    sim.set_faults(fail_all=True)
    with pytest.raises(TransientError) as caught:
        _complete(sim, max_attempts=3)
    assert caught.value.attempts == 3 and caught.value.example_id == "svamp-train-00001"
    assert caught.value.status == 500 and sim.stats()["requests"] == 3


def test_a_bad_key_is_fatal_at_once_in_one_line_that_never_shows_the_key(caplog):
    caplog.set_level(logging.DEBUG)
    with start_simulator(EXAMPLES, api_key="sk-the-right-one") as sim:
        with pytest.raises(FatalError) as caught:
            _complete(sim)
        assert sim.stats()["requests"] == 1  # not retried
    error = caught.value
    message = str(error)
    assert "\n" not in message and "401" in message and "api_key_env" in message
    for shown in (message, repr(error), caplog.text, str(error.__cause__), str(error.__context__)):
        assert API_KEY not in shown


def test_the_key_is_never_in_the_client_repr(sim):
    client = _client(sim)
    assert API_KEY not in repr(client) and API_KEY not in repr(vars(client).get("_secret"))
    asyncio.run(client.aclose())


def test_unknown_model_and_too_long_prompts_are_fatal():
    with (
        start_simulator(EXAMPLES, models=("another-model",)) as sim,
        pytest.raises(FatalError, match="404: model 'simulated-teacher' not found"),
    ):
        _complete(sim)
    with start_simulator(EXAMPLES, context_window=500) as sim:
        with pytest.raises(FatalError, match="context window") as caught:
            _complete(sim)
        assert "\n" not in str(caught.value) and sim.stats()["requests"] == 1


def test_a_truncated_reply_is_returned_as_it_is_not_requested_again(sim):
    reply = _complete(sim, n=2, sampling={**SAMPLING, "max_tokens": 8})
    assert reply.finish_reasons == ("length", "length") and all(len(text) == 32 for text in reply.texts)
    assert sim.stats()["requests"] == 1


def test_concurrency_is_capped_while_requests_are_on_the_wire():
    with start_simulator(EXAMPLES, latency_ms=50) as sim:
        async def run():
            client = _client(sim, max_concurrency=3)
            try:
                await asyncio.gather(*(client.complete(MESSAGES, n=1, example_id=f"e{i}", **SAMPLING)
                                       for i in range(12)))
            finally:
                await client.aclose()

        asyncio.run(run())
        assert sim.stats()["max_in_flight"] == 3


def test_one_sample_requests_share_the_one_window_with_every_other_request():
    """A server without `n`: a 5-sample request sends 5 requests, never more than the window at once,
    and nothing is admitted before its slots are free."""
    with start_simulator(EXAMPLES, latency_ms=50) as sim:
        admitted = []

        async def admit(i: int) -> bool:
            admitted.append(i)
            return i != 1

        async def run():
            client = _client(sim, max_concurrency=2, use_n=False)
            try:
                return await asyncio.gather(*(client.complete(
                    MESSAGES, n=5, example_id=f"e{i}", admit=lambda i=i: admit(i), **SAMPLING)
                    for i in range(3)))
            finally:
                await client.aclose()

        replies = asyncio.run(run())
        assert sim.stats()["max_in_flight"] == 2 and sim.stats()["requests"] == 10
    assert sorted(admitted) == [0, 1, 2] and replies[1] is None  # admit said no: nothing sent for it
    assert [len(reply.texts) for reply in (replies[0], replies[2])] == [5, 5]


def test_pacing_at_the_server_limit_meets_it_without_429s():
    rpm = 1200  # one request every 50 ms
    with start_simulator(EXAMPLES, latency_ms=30, rpm=rpm, tpm=2_000_000) as sim:
        async def run():
            client = _client(sim, limiter=RateLimiter(rpm, 2_000_000), max_concurrency=16)
            try:
                await asyncio.gather(*(client.complete(MESSAGES, n=1, example_id=f"e{i}", **SAMPLING)
                                       for i in range(24)))
            finally:
                await client.aclose()

        asyncio.run(run())
        stats = sim.stats()
        assert stats["rate_limited"] == 0 and stats["requests"] == 24
        stamps = stats["accepted_timestamps"]
        achieved = (len(stamps) - 1) / (stamps[-1] - stamps[0]) * 60
        # measured from server-side arrival times over 23 gaps: a busy machine jitters each a little
        assert 0.85 * rpm <= achieved <= 1.15 * rpm


def test_token_pacing_at_the_server_tpm_limit_gets_no_429s():
    tpm = 240_000  # 4000 tokens/s; each request is ~650 tokens estimated, ~450 used
    with start_simulator(EXAMPLES, latency_ms=20, tpm=tpm) as sim:
        async def run():
            client = _client(sim, limiter=RateLimiter(None, tpm), max_concurrency=16)
            try:
                await asyncio.gather(*(client.complete(MESSAGES, n=1, example_id=f"e{i}", **SAMPLING)
                                       for i in range(10)))
            finally:
                await client.aclose()

        asyncio.run(run())
        stats = sim.stats()
        assert stats["rate_limited"] == 0 and stats["by_status"] == {"200": 10}


def test_estimate_tokens_bounds_what_the_server_counts(sim):
    reply = _complete(sim, n=3)
    assert estimate_tokens(MESSAGES, 0, 0) >= reply.prompt_tokens
    assert estimate_tokens(MESSAGES, 3, 256) >= reply.prompt_tokens + reply.completion_tokens


def _status_error(cls, status: int, body: dict, headers: dict | None = None):
    request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx2.Response(status, headers=headers or {}, request=request)
    return cls(f"Error code: {status}", response=response, body=body)


@pytest.mark.parametrize(
    "exc, kind, fragment",
    [
        (_status_error(openai.RateLimitError, 429, {"error": {"code": "insufficient_quota", "message": "q"}}),
         FatalError, "insufficient quota"),
        (_status_error(openai.RateLimitError, 429, {}, {"retry-after": "120"}), TransientError, "HTTP 429"),
        (_status_error(openai.InternalServerError, 503, {"error": {"message": "overloaded"}}), TransientError,
         "server said: overloaded"),
        (_status_error(openai.PermissionDeniedError, 403, {"error": {"message": f"key {API_KEY} denied"}}),
         FatalError, "HTTP 403"),
        (_status_error(openai.BadRequestError, 400, {"error": {"message": f"bad n for Bearer {API_KEY}"}}),
         FatalError, "refused the request as invalid"),
        (openai.APITimeoutError(request=httpx2.Request("POST", "http://x")), TransientError, "timed out"),
        (openai.APIConnectionError(request=httpx2.Request("POST", "http://x")), TransientError, "connection"),
        (ValueError("Expecting value: line 1 column 1"), FatalError, "unexpected ValueError"),
    ],
)
def test_translate_sorts_vendor_errors_into_the_tree(exc, kind, fragment):
    error = translate(exc, "cqa-test-00007", model="m", base_url="http://127.0.0.1/v1", secrets=(API_KEY,))
    assert type(error) is kind and fragment in str(error)
    assert str(error).startswith("cqa-test-00007: ") and "\n" not in str(error) and API_KEY not in str(error)
    if isinstance(error, TransientError) and exc.__class__ is openai.RateLimitError:
        assert error.retry_after == 120.0


def test_output_error_is_a_teacher_error_that_is_not_retried():
    assert not issubclass(OutputError, TransientError)


def test_a_content_filter_400_is_an_output_with_its_reason_not_an_error():
    with start_simulator(EXAMPLES, deviations=Deviations(content_filter=(PROBLEMS[0].question,))) as sim:
        reply = _complete(sim, n=3)
        assert reply.texts == ("", "", "") and reply.finish_reasons == ("content_filter",) * 3
        assert "content management policy" in reply.refusal and reply.attempts == 1
        assert sim.stats()["requests"] == 1  # not retried: asking again buys the same refusal
        other = cot_messages("equation", PROBLEMS[1].question)
        assert _complete(sim, messages=other).refusal is None


def test_a_reply_without_usage_is_marked_estimated():
    with start_simulator(EXAMPLES, deviations=Deviations(no_usage=True)) as sim:
        reply = _complete(sim, n=2)
    assert reply.usage_estimated
    assert reply.prompt_tokens == estimate_tokens(MESSAGES, 0, 0)
    assert reply.completion_tokens == sum(-(-len(text) // 4) for text in reply.texts)


def test_a_server_that_ignores_n_gives_a_shorter_reply():
    with start_simulator(EXAMPLES, deviations=Deviations(ignore_n=True)) as sim:
        reply = _complete(sim, n=3)
    assert len(reply.texts) == 1 and reply.attempts == 1


def test_a_429_without_retry_after_pauses_every_caller_and_lowers_the_pace():
    with start_simulator(EXAMPLES, deviations=Deviations(no_retry_after=True)) as sim:
        sim.set_faults(next_faults=("rate_limit",))
        fake = FakeTime()
        limiter = RateLimiter(600, None, clock=fake.clock, sleep=fake.sleep, backoff_initial_s=2.0)
        reply = _complete(sim, limiter=limiter)
        assert reply.attempts == 2 and sim.stats()["by_status"] == {"429": 1, "200": 1}
    assert limiter.pauses == 1 and limiter.paused_until == pytest.approx(2.0)
    assert sum(fake.sleeps) == pytest.approx(2.0)  # the retry waited out the backoff
    assert limiter.adaptive_rpm == pytest.approx(300 + 600 / 20)  # halved, then one success: +1/20 of 600


def test_every_http_attempt_retries_included_passes_the_shared_gate(sim):
    charged = []

    async def gate(requests: int) -> None:
        charged.append(requests)

    sim.set_faults(next_faults=("error_500", "error_500"))
    reply = _complete(sim, n=2, gate=gate)
    assert reply.attempts == 3 and charged == [1, 1, 1]
    _complete(sim, n=3, use_n=False, gate=gate)
    assert len(charged) == 3 + 3


def test_time_on_the_wire_and_time_queued_are_told_apart():
    with start_simulator(EXAMPLES, latency_ms=150) as sim:
        async def run():
            client = _client(sim, max_concurrency=1)
            try:
                return await asyncio.gather(*(client.complete(MESSAGES, n=1, example_id=f"e{i}", **SAMPLING)
                                              for i in range(3)))
            finally:
                await client.aclose()

        replies = sorted(asyncio.run(run()), key=lambda reply: reply.latency_s)
    assert all(0.14 <= reply.server_s < 0.6 for reply in replies)
    # one connection slot: the third waited for two others on the wire
    assert replies[0].queue_s < 0.1 and replies[2].queue_s >= 0.28
    assert all(reply.queue_s + reply.server_s == pytest.approx(reply.latency_s) for reply in replies)


# Without Retry-After (the slower case, ~20 s) the flow-level test in test_generation_integrity runs
# by default; this client-level one runs with -m slow.
@pytest.mark.parametrize("retry_after", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_every_429_lowers_the_pace_with_or_without_retry_after(retry_after):
    """A server whose limit (120/min) is far below max_rpm: honouring each pause alone would keep
    sending at the configured pace between pauses; lowering it keeps 429s a small share."""
    with start_simulator(EXAMPLES, rpm=120, burst=1, latency_ms=20,
                         deviations=Deviations(no_retry_after=not retry_after)) as sim:
        async def run():
            client = _client(sim, limiter=RateLimiter(6000, None), max_concurrency=4, max_attempts=30)
            try:
                await asyncio.gather(*(client.complete(MESSAGES, n=1, example_id=f"e{i}", **SAMPLING)
                                       for i in range(24)))
                return client.limiter.adaptive_rpm
            finally:
                await client.aclose()

        pace = asyncio.run(run())
        stats = sim.stats()
    assert pace is not None and pace < 6000
    assert stats["rate_limited"] / stats["requests"] < 0.4, stats


def test_a_request_cancelled_while_it_waits_for_the_window_leaves_the_window_whole():
    async def run():
        window = Window(2)
        await window.acquire(2)
        waiting = [asyncio.ensure_future(window.acquire(1)) for _ in range(3)]
        await asyncio.sleep(0)
        waiting[0].cancel()
        window.release(2)  # grants the two still waiting, passing the cancelled one
        await asyncio.sleep(0)
        results = await asyncio.gather(*waiting, return_exceptions=True)
        window.release(2)
        return results, await asyncio.wait_for(window.acquire(2), 1)

    results, taken = asyncio.run(run())
    assert isinstance(results[0], asyncio.CancelledError) and results[1:] == [1, 1] and taken == 2
