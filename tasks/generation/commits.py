"""Group commit: answers that arrive while the store is being written share the next write.

An answer counts as done only once its rows, then its call record, are in the store. Written one by
one on the event loop, every answer cost one Parquet part per table (encode, write, rename) and held
up every other reply meanwhile. Here one writer thread does the writes, and whatever arrives during
a write waits for the next one, where the rows of one table go into one part: under load the groups
grow by themselves, and an answer arriving alone is written at once (no timer, no added latency).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from storage import CallRow


def merged(groups: list[list]) -> list[list]:
    """One group per record type, in first-seen order, call records last: rows are in the store
    before the record that says they were paid for, as when each answer was written alone."""
    by_type: dict[type, list] = {}
    for rows in groups:
        by_type.setdefault(type(rows[0]), []).extend(rows)
    return sorted(by_type.values(), key=lambda rows: isinstance(rows[0], CallRow))


class CommitFailed(Exception):
    """A group commit's write raised `error`; `unstored` are the caller's groups not in the store."""

    def __init__(self, error: Exception, unstored: list[list]):
        super().__init__(str(error))
        self.error, self.unstored = error, unstored


class GroupCommit:
    """commit(*groups) returns once they are in the store (each merged group written by `write`, in
    a thread), or raises CommitFailed naming which of them are not."""

    def __init__(self, write: Callable[[list], None]):
        self._write = write
        self._waiting: list[tuple[list[list], asyncio.Future]] = []
        self._writer: asyncio.Task | None = None
        self.writes = self.groups = 0  # how many commits, for how many callers' groups

    async def commit(self, *groups: list) -> None:
        groups = [rows for rows in groups if rows]
        if not groups:
            return
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((groups, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._drain())
        # A cancelled caller stops waiting; its rows are written all the same.
        await asyncio.shield(done)

    async def _drain(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            written: set[type] = set()
            error = None
            try:
                await asyncio.to_thread(self._write_all, [rows for groups, _ in batch for rows in groups], written)
            except Exception as failed:  # noqa: BLE001 - each waiter gets it (a full disk is an OSError)
                error = failed
            self.writes += 1
            self.groups += len(batch)
            for groups, done in batch:
                if done.done():
                    continue
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(CommitFailed(error, [rows for rows in groups if type(rows[0]) not in written]))

    def _write_all(self, groups: list[list], written: set[type]) -> None:
        for rows in merged(groups):
            self._write(rows)
            written.add(type(rows[0]))
