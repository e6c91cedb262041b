"""A client-side rate limiter that paces every request of one process before it is sent.

Limits are respected before a call is made, not discovered by 429s. Requests are spaced
60/max_rpm seconds apart and each request's tokens are paid for at max_tpm/60 tokens per second
(a request of T tokens delays the next one by T / (max_tpm/60) s), so a server enforcing the same
limits with a token bucket or a sliding window sees a smooth stream, never a burst.

A 429's Retry-After, of any length, becomes `pause(seconds)`: nothing is dispatched, by any
caller, until it has passed. All callers share one FIFO lock, so waiting callers go out in
arrival order. asyncio only: one limiter serves the coroutines of one event loop at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class RateLimiter:
    """Smooth pacing for `max_rpm` requests and `max_tpm` tokens per minute (None: unlimited)."""

    def __init__(
        self,
        max_rpm: float | None,
        max_tpm: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
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
        self.pauses = 0  # pauses requested by 429s

    @property
    def paused_until(self) -> float:
        return self._paused_until

    def _loop_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until one request of about `tokens` tokens may be sent, then count it as sent."""
        async with self._loop_lock():
            scheduled = None
            while True:
                now = self._clock()
                ready_at = max(self._request_at, self._tokens_at, self._paused_until)
                if ready_at <= now:
                    break
                scheduled = ready_at
                # Loop rather than trust one sleep: a pause may arrive while we wait.
                await self._sleep(ready_at - now)
                self.waited_s += max(0.0, self._clock() - now)
            # A caller that waited counts from the moment it was due, not from when the event loop
            # woke it, so lateness does not erode the rate; but by at most half an interval, so a
            # loop that was blocked for long does not release a burst afterwards.
            sent_at = now if scheduled is None else max(scheduled, now - self._interval / 2)
            self._request_at = sent_at + self._interval
            if self._token_rate:
                self._tokens_at = max(self._tokens_at, sent_at) + tokens / self._token_rate

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the tokens charged for a request once its reply reports the real count."""
        if self._token_rate:
            self._tokens_at += (actual - estimated) / self._token_rate

    def pause(self, seconds: float) -> None:
        """Hold back every caller's next dispatch for `seconds` (a 429's Retry-After, of any length)."""
        if seconds > 0:
            self.pauses += 1
            self._paused_until = max(self._paused_until, self._clock() + seconds)
