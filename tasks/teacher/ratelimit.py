"""A client-side rate limiter that paces every request of one process before it is sent.

Limits are respected before a call is made, not discovered by 429s. Requests are spaced
60/max_rpm seconds apart and each request's tokens are paid for at max_tpm/60 tokens per second
(a request of T tokens delays the next one by T / (max_tpm/60) s), so a server enforcing the same
limits with a token bucket or a sliding window sees a smooth stream, never a burst.

A 429's Retry-After, of any length, becomes `pause(seconds)`: nothing is dispatched, by any
caller, until it has passed. A 429 without one (`backoff()`) pauses every caller for an exponential
backoff that doubles with each such 429 in a row. Every 429, with or without Retry-After, halves
the pace (`slow_down()`, multiplicative decrease);
each success then raises it by a twentieth of the pace before the cut (additive increase), back up
to max_rpm, so a server whose limit is unknown is met near its limit instead of by a storm of 429s.
All callers share one FIFO lock, so waiting callers go out in arrival order. asyncio only: one
limiter serves the coroutines of one event loop at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

# Requests per minute never drop below this, however many 429s come back.
_MIN_RPM = 1.0
_AIMD_STEPS = 20  # successes to climb back from a halving


class RateLimiter:
    """Smooth pacing for `max_rpm` requests and `max_tpm` tokens per minute (None: unlimited)."""

    def __init__(
        self,
        max_rpm: float | None,
        max_tpm: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        *,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
    ):
        if max_rpm is not None and max_rpm <= 0 or max_tpm is not None and max_tpm <= 0:
            raise ValueError("max_rpm and max_tpm must be positive (or None for no limit)")
        self.max_rpm = max_rpm
        self.max_tpm = max_tpm
        self._interval = 60.0 / max_rpm if max_rpm else 0.0
        self._token_rate = max_tpm / 60.0 if max_tpm else None
        self._clock = clock
        self._sleep = sleep
        # The earliest moment the next request may go, for each limit ("theoretical arrival times").
        self._request_at = float("-inf")
        self._tokens_at = float("-inf")
        self._paused_until = float("-inf")
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self.waited_s = 0.0  # total time callers spent waiting here
        # ... of it, waiting for which limit: the client's own max_rpm / max_tpm, or the server's pauses
        self.waited_for = {"max_rpm": 0.0, "max_tpm": 0.0, "server": 0.0}
        self.pauses = 0  # pauses requested by 429s
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self._streak = 0  # 429s without Retry-After since the last success
        self.adaptive_rpm: float | None = None  # the lowered pace while AIMD is below max_rpm
        self._step = 0.0
        self._sent: deque[float] = deque(maxlen=20)  # recent dispatch times, to measure the pace
        self._backed_off_at = float("-inf")

    @property
    def paused_until(self) -> float:
        return self._paused_until

    def _loop_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def acquire(self, tokens: int = 0) -> float:
        """Wait until one request of about `tokens` tokens may be sent, then count it as sent;
        returns the moment it was sent, on this limiter's clock."""
        async with self._loop_lock():
            scheduled = None
            while True:
                now = self._clock()
                ready_at = max(self._request_at, self._tokens_at, self._paused_until)
                if ready_at <= now:
                    break
                scheduled = ready_at
                holding = self._holding(ready_at)  # before the sleep: replies settle token counts meanwhile
                # Loop rather than trust one sleep: a pause may arrive while we wait.
                await self._sleep(ready_at - now)
                waited = max(0.0, self._clock() - now)
                self.waited_s += waited
                self.waited_for[holding] += waited
            # A caller that waited counts from the moment it was due, not from when the event loop
            # woke it, so lateness does not erode the rate; but by at most half an interval, so a
            # loop that was blocked for long does not release a burst afterwards.
            sent_at = now if scheduled is None else max(scheduled, now - self._interval / 2)
            self._request_at = sent_at + self._interval
            self._sent.append(sent_at)
            if self._token_rate:
                self._tokens_at = max(self._tokens_at, sent_at) + tokens / self._token_rate
            return sent_at

    def _holding(self, ready_at: float) -> str:
        if ready_at == self._paused_until or self.adaptive_rpm is not None and ready_at == self._request_at:
            return "server"  # a 429's pause, or a pace lowered after 429s
        return "max_tpm" if ready_at == self._tokens_at else "max_rpm"

    def client_limit(self, elapsed_s: float) -> str | None:
        """The client-side limit ("max_rpm" or "max_tpm") that held requests back for most of the
        last `elapsed_s` seconds, if one did: then the run waits on this config, not on the server."""
        name = max(("max_rpm", "max_tpm"), key=lambda limit: self.waited_for[limit])
        return name if elapsed_s > 0 and self.waited_for[name] > elapsed_s / 2 else None

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the tokens charged for a request once its reply reports the real count."""
        if self._token_rate:
            self._tokens_at += (actual - estimated) / self._token_rate

    def pause(self, seconds: float) -> None:
        """Hold back every caller's next dispatch for `seconds` (a 429's Retry-After, of any length)."""
        if seconds > 0:
            self.pauses += 1
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def backoff(self, sent_at: float | None = None) -> float:
        """A 429 without Retry-After for a request sent at `sent_at`: pause every caller for an
        exponential backoff and halve the pace (slow_down); returns the pause."""
        if not self.slow_down(sent_at):
            return max(0.0, self._paused_until - self._clock())
        self._streak += 1
        seconds = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (self._streak - 1))
        self.pause(seconds)
        return seconds

    def slow_down(self, sent_at: float | None = None) -> bool:
        """A 429 (with or without Retry-After) for a request sent at `sent_at`: halve the pace
        (multiplicative decrease). A 429 for a request sent before the last decrease was already
        answered by it: the requests in flight together all come back 429, and count as one.
        Returns whether the pace was lowered now."""
        if sent_at is not None and sent_at <= self._backed_off_at:
            return False
        self._backed_off_at = self._clock()
        pace = self.adaptive_rpm or self._measured_rpm() or self.max_rpm
        if pace is not None:
            self._step = pace / _AIMD_STEPS
            self._set_pace(max(_MIN_RPM, pace / 2))
        return True

    def recover(self) -> None:
        """A request succeeded: end the backoff streak and raise a lowered pace a step."""
        self._streak = 0
        if self.adaptive_rpm is not None:
            raised = self.adaptive_rpm + self._step
            self._set_pace(None if self.max_rpm is not None and raised >= self.max_rpm else raised)

    def _set_pace(self, rpm: float | None) -> None:
        self.adaptive_rpm = rpm
        limit = rpm or self.max_rpm
        self._interval = 60.0 / limit if limit else 0.0

    def _measured_rpm(self) -> float | None:
        """The pace of the last dispatches, capped at max_rpm; None before there are two of them."""
        if len(self._sent) < 2 or self._sent[-1] <= self._sent[0]:
            return None
        measured = 60.0 * (len(self._sent) - 1) / (self._sent[-1] - self._sent[0])
        return min(measured, self.max_rpm) if self.max_rpm else measured
