"""The progress bar of a generation run: requests done of total, calls/s, tokens, cost, failures."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class GenerationProgress:
    def __init__(self, total: int, enabled: bool = True):
        self.started = time.perf_counter()
        self.done = self.failed = self.skipped = self.unparseable = self.tokens = 0
        self.cost = 0.0
        self._bar = Progress(
            TextColumn("[bold]teacher[/]"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.1f}/s"),
            TextColumn("{task.fields[tokens]:,} tok"),
            TextColumn("${task.fields[cost]:.4f}"),
            TextColumn("[red]{task.fields[failed]} failed[/]"),
            TimeElapsedColumn(),
            console=Console(file=sys.stderr),
            disable=not enabled,
            transient=False,
        )
        self._task = self._bar.add_task("teacher", total=total, rate=0.0, tokens=0, cost=0.0, failed=0)

    def __enter__(self) -> GenerationProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self._refresh(0)
        self._bar.stop()

    def advance(self, done: int = 0, failed: int = 0, skipped: int = 0, tokens: int = 0, cost: float = 0.0,
                unparseable: int = 0) -> None:
        self.done += done
        self.failed += failed
        self.skipped += skipped
        self.unparseable += unparseable
        self.tokens += tokens
        self.cost += cost
        self._refresh(done + failed + skipped)

    def _refresh(self, steps: int) -> None:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self._bar.update(
            self._task,
            advance=steps,
            rate=(self.done + self.failed) / elapsed,
            tokens=self.tokens,
            cost=self.cost,
            failed=self.failed,
        )
