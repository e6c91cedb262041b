"""The simulated teacher's rate limits: token buckets for requests and tokens per minute."""

from __future__ import annotations


class Bucket:
    """A token bucket that admits while its level is positive and may go into debt, so one large
    request is never refused forever; a client pacing at the bucket's rate never finds it empty."""

    def __init__(self, rate_per_s: float, capacity: float, need: float):
        self.rate, self.capacity, self.need = rate_per_s, capacity, need
        self.level, self.updated = capacity, None

    def _refill(self, now: float) -> None:
        if self.updated is not None:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_s(self, now: float) -> float:
        self._refill(now)
        return 0.0 if self.level >= self.need else (self.need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount
