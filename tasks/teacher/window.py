"""The one concurrency bound: at most teacher.max_concurrency HTTP requests on the wire.

A teacher request takes its slots before it is admitted and keeps them until its reply (retries
included): one slot, or n for a server without `n` (n one-sample requests at once). Slots are
granted in arrival order, so a wide request is never starved by narrow ones.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Window:
    def __init__(self, size: int):
        self.size = size
        self._free = size
        self._waiting: deque[tuple[int, asyncio.Future]] = deque()

    async def acquire(self, slots: int) -> int:
        """Wait for `slots` free slots (at most the window); returns how many were taken."""
        slots = min(slots, self.size)
        if not self._waiting and self._free >= slots:
            self._free -= slots
            return slots
        granted = asyncio.get_running_loop().create_future()
        entry = (slots, granted)
        self._waiting.append(entry)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release(slots)  # granted just as the waiter was cancelled
            else:
                if entry in self._waiting:  # (_grant drops cancelled waiters it meets)
                    self._waiting.remove(entry)
                self._grant()
            raise
        return slots

    def release(self, slots: int) -> None:
        self._free += slots
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self._waiting[0][0] <= self._free:
            slots, granted = self._waiting.popleft()
            if granted.cancelled():
                continue
            self._free -= slots
            granted.set_result(None)
