"""The client-side rate limiter, on a fake clock: pacing, token budgets, pauses for Retry-After."""

from __future__ import annotations

import asyncio

import pytest
from conftest import FakeTime

from tasks.teacher.ratelimit import RateLimiter


def _limiter(rpm, tpm, time: FakeTime) -> RateLimiter:
    return RateLimiter(rpm, tpm, clock=time.clock, sleep=time.sleep)


async def _send_times(limiter: RateLimiter, time: FakeTime, count: int, tokens: int = 0) -> list[float]:
    times = []
    for _ in range(count):
        await limiter.acquire(tokens)
        times.append(time.now)
    return times


def test_requests_are_spaced_sixty_over_rpm():
    time = FakeTime()
    times = asyncio.run(_send_times(_limiter(120, None, time), time, 5))
    assert times == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])


def test_tokens_are_paid_for_at_tpm_over_sixty_per_second():
    time = FakeTime()
    # 6000 tokens per minute is 100 per second: a 250-token request holds the next one back 2.5 s.
    times = asyncio.run(_send_times(_limiter(10_000, 6000, time), time, 3, tokens=250))
    assert times == pytest.approx([0.0, 2.5, 5.0])


def test_settle_gives_back_tokens_the_reply_did_not_use():
    time = FakeTime()
    limiter = _limiter(10_000, 6000, time)

    async def run():
        await limiter.acquire(1000)  # estimated: prompt + n * max_tokens
        limiter.settle(1000, 100)  # the reply used 100
        await limiter.acquire(100)
        return time.now

    assert asyncio.run(run()) == pytest.approx(1.0)  # 100 tokens at 100/s, not 10 s


def test_concurrent_callers_share_one_schedule_in_arrival_order():
    time = FakeTime()
    limiter = _limiter(60, None, time)
    order = []

    async def caller(name: int):
        await limiter.acquire(0)
        order.append((name, time.now))

    async def run():
        await asyncio.gather(*(caller(name) for name in range(6)))

    asyncio.run(run())
    assert order == [(name, pytest.approx(float(name))) for name in range(6)]


def test_a_pause_of_any_length_holds_every_caller():
    time = FakeTime()
    limiter = _limiter(600, None, time)

    async def run():
        await limiter.acquire(0)
        limiter.pause(90.0)  # a 429 said Retry-After: 90 (the openai SDK would ignore anything over 60)
        started = []

        async def caller():
            await limiter.acquire(0)
            started.append(time.now)

        await asyncio.gather(caller(), caller(), caller())
        return started

    started = asyncio.run(run())
    assert limiter.paused_until == pytest.approx(90.0)
    assert started == pytest.approx([90.0, 90.1, 90.2])  # after the pause, paced again: no burst


def test_a_pause_arriving_while_a_caller_waits_is_honoured():
    time = FakeTime()
    limiter = _limiter(1, None, time)  # one request a minute

    async def sleep_then_429(seconds: float) -> None:
        await time.sleep(seconds)
        if len(time.sleeps) == 1:
            limiter.pause(120.0)  # arrives while the second caller sleeps towards its slot at 60 s

    limiter._sleep = sleep_then_429

    async def run():
        await limiter.acquire(0)
        await limiter.acquire(0)
        return time.now

    assert asyncio.run(run()) == pytest.approx(180.0)


def test_an_idle_limiter_starts_afresh():
    time = FakeTime()
    limiter = _limiter(60, None, time)

    async def run():
        await limiter.acquire(0)
        time.now = 1000.0  # a long idle spell
        return await _send_times(limiter, time, 3)

    assert asyncio.run(run()) == pytest.approx([1000.0, 1001.0, 1002.0])


def test_a_caller_woken_late_keeps_the_schedule_but_never_bursts():
    time = FakeTime()
    limiter = _limiter(60, None, time)

    async def late_sleep(seconds: float) -> None:
        lateness = {0: 0.2, 1: 5.0}.get(len(time.sleeps), 0.0)  # woken 0.2 s late, then 5 s late
        await time.sleep(seconds + lateness)

    limiter._sleep = late_sleep

    async def run():
        return await _send_times(limiter, time, 4)

    times = asyncio.run(run())
    assert times[1] == pytest.approx(1.2)  # due at 1.0, woke at 1.2
    assert times[2] == pytest.approx(7.0)  # due at 2.0 (schedule kept), woke 5 s late at 7.0
    assert times[3] == pytest.approx(7.5)  # lateness beyond half an interval is not made up


def test_no_limits_means_no_waiting():
    time = FakeTime()
    limiter = _limiter(None, None, time)
    asyncio.run(_send_times(limiter, time, 50, tokens=10**6))
    assert time.sleeps == [] and time.now == 0.0


def test_real_clock_pacing_holds_the_rate():
    limiter = RateLimiter(1200, None)  # one request every 50 ms

    async def run():
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.gather(*(limiter.acquire(0) for _ in range(7)))
        return loop.time() - start

    assert 0.29 <= asyncio.run(run()) < 0.6


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(0, 1000)


def test_a_429_without_retry_after_backs_off_for_everyone_halves_the_pace_and_climbs_back():
    time = FakeTime()
    limiter = RateLimiter(600, None, clock=time.clock, sleep=time.sleep, backoff_initial_s=0.5, backoff_max_s=4)

    async def run():
        for _ in range(5):
            await limiter.acquire(0)  # at the full pace: 0.1 s apart
        assert limiter.backoff() == 0.5  # the first 429 in a row: the initial backoff
        assert limiter.backoff() == 1.0  # doubling while 429s keep coming
        paused_until = limiter.paused_until
        await limiter.acquire(0)
        first = time.now
        await limiter.acquire(0)
        return paused_until, first, time.now

    paused_until, first, second = asyncio.run(run())
    assert first == pytest.approx(paused_until)  # nobody went out during the backoff
    # 600 rpm halved twice: 150 rpm, requests 0.4 s apart
    assert limiter.adaptive_rpm == pytest.approx(150) and second - first == pytest.approx(0.4)
    for _ in range(5):
        limiter.recover()  # additive increase: a twentieth of the pace before the last cut (300/20)
    assert limiter.adaptive_rpm == pytest.approx(225)
    for _ in range(30):
        limiter.recover()
    assert limiter.adaptive_rpm is None  # back at max_rpm
    assert limiter.backoff() == 0.5  # a success ended the streak


def test_without_a_configured_rpm_a_429_lowers_the_measured_pace():
    time = FakeTime()
    limiter = RateLimiter(None, None, clock=time.clock, sleep=time.sleep)

    async def run():
        for _ in range(11):
            await limiter.acquire(0)
            await time.sleep(0.05)  # 20 requests per second: 1200 rpm

    asyncio.run(run())
    limiter.backoff()
    assert limiter.adaptive_rpm == pytest.approx(600, rel=0.01)


def test_429s_for_requests_sent_before_the_backoff_count_once():
    time = FakeTime()
    limiter = RateLimiter(None, None, clock=time.clock, sleep=time.sleep, backoff_initial_s=1.0)

    async def run():
        return [await limiter.acquire(0) for _ in range(8)]  # eight requests in flight together

    sent = asyncio.run(run())
    assert limiter.backoff(sent[0]) == 1.0
    assert all(limiter.backoff(at) == 1.0 for at in sent[1:])  # the same pause, not 2, 4, 8... s
    assert limiter.pauses == 1
