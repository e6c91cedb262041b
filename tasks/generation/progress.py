"""The progress bar of a generation run: requests done of total, calls/s, tokens, cost, failures.

It counts logical requests, one per prompt, however many HTTP requests each takes (n=1 servers)
and whether or not it succeeded; evaluation requests the plan expected for CoTs that never came or
came back unparseable are taken off the total (`forgo`), so a finished run ends at total/total.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class GenerationProgress:
    """`pacing(elapsed_s)` names the client-side limit the run mostly waited on, if any (shown)."""

    def __init__(self, total: int, enabled: bool = True, pacing: Callable[[float], str | None] | None = None):
        self.pacing = pacing
        self.started = time.perf_counter()
        self.done = self.failed = self.skipped = self.unparseable = self.tokens = 0
        self.cost = 0.0
        self.total = total
        self._bar = Progress(
            TextColumn("[bold]teacher[/]"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.1f}/s"),
            TextColumn("{task.fields[tokens]:,} tok"),
            TextColumn("${task.fields[cost]:.4f}"),
            TextColumn("[red]{task.fields[failed]} failed[/]"),
            TimeElapsedColumn(),
            TextColumn("[yellow]{task.fields[note]}[/]"),
            console=Console(file=sys.stderr),
            disable=not enabled,
            transient=False,
        )
        self._task = self._bar.add_task("teacher", total=total, rate=0.0, tokens=0, cost=0.0, failed=0,
                                        note="")

    def __enter__(self) -> GenerationProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self._refresh(0)
        self._bar.stop()

    @property
    def completed(self) -> int:
        return int(self._bar.tasks[0].completed)

    def advance(self, done: int = 0, failed: int = 0, skipped: int = 0, tokens: int = 0, cost: float = 0.0,
                unparseable: int = 0, step: bool = True) -> None:
        """step=False: counts without moving the bar (the request was counted already)."""
        self.done += done
        self.failed += failed
        self.skipped += skipped
        self.unparseable += unparseable
        self.tokens += tokens
        self.cost += cost
        self._refresh(done + failed + skipped if step else 0)

    def forgo(self, requests: int) -> None:
        """Take requests the plan expected, and that will not be sent, off the total."""
        if requests:
            self.total -= requests
            self._bar.update(self._task, total=self.total)

    def _refresh(self, steps: int) -> None:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self._bar.update(
            self._task,
            advance=steps,
            rate=(self.done + self.failed) / elapsed,
            tokens=self.tokens,
            cost=self.cost,
            failed=self.failed,
            note=self._note(elapsed),
        )

    def _note(self, elapsed: float) -> str:
        limit = self.pacing(elapsed) if self.pacing is not None else None
        if limit is None:
            return ""
        return f"waiting on teacher.{limit} (client-side limit, not the server)"
