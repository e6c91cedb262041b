"""The simulated teacher of one run (teacher.simulate): started for the run, closed after it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from simulator.batches import configure_batches
from simulator.server import start_simulator
from tasks.config import TeacherConfig


@contextmanager
def simulated_teacher(teacher: TeacherConfig, examples: Sequence, answer_type: str,
                      state_folder: Path) -> Iterator[str]:
    """Yields the base URL of a simulated teacher that knows `examples` (rows with .input and .label).

    In batch mode its files and batches live in `state_folder` (Store.machine_state("simulator")), so
    that the next pass on this machine finds them."""
    settings = teacher.simulator
    batch = teacher.mode == "batch"
    options = {} if batch else {"latency_ms": settings.latency_ms}
    with start_simulator(examples={example.input: example.label for example in examples}, answer_type=answer_type,
                         seed=settings.seed, wrong_rate=settings.wrong_rate, **options) as running:
        if batch:
            configure_batches(running.teacher, state_dir=state_folder, delay_s=settings.batch_delay_s)
        yield running.url
