"""Several arm runs at once on a machine without an accelerator, one process each.

The student's training loop and scoring run on one torch thread on the CPU
(tasks.student.devices.limit_cpu_threads), so on a machine with N >= 2 cores and no GPU up to N
arm runs go side by side, each in a process of its own: threads would share one interpreter lock,
and a small student's step is mostly Python. On a GPU (or MPS) the runs stay one after another,
as they would share the device.

Each run is a fresh interpreter (`python -m tasks.student.parallel JOB`), not a fork: forking a
process that holds Prefect's threads and torch's thread pool can deadlock, and the forkserver and
spawn methods re-run the caller's main script in every child (a script without an
`if __name__ == "__main__":` guard then starts its flow again). The price is importing torch and
transformers once per run, about 8 CPU seconds. Each run gets an equal share of the cores' torch
threads and, on Linux, dies with its parent: a run killed with SIGKILL leaves no training behind
to write into the checkpoints a rerun resumes from.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tasks.student.devices import resolve_device

T = TypeVar("T")

_slots: dict[int, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


def usable_cores() -> int:
    """The cores this process may run on (a container's cpuset, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


# Runs of fewer optimizer steps (both stages) go one after another: a fresh interpreter's imports
# (about 8 CPU seconds) are as long as a small student's hundred steps, so they would not pay.
MIN_STEPS = 100


def parallel_runs(device: str, runs: int, steps: int, cores: int | None = None) -> int:
    """How many of `runs` arm runs of `steps` optimizer steps each go at once on `device` (a
    train.device value): one per core on the CPU, one at a time on an accelerator, for a single
    run or for short ones."""
    cores = cores if cores is not None else usable_cores()
    if runs < 2 or cores < 2 or steps < MIN_STEPS or resolve_device(device).type != "cpu":
        return 1
    return min(runs, cores)


def in_own_process(slots: int, call: Callable[..., T], *args, **kwargs) -> T:
    """`call(*args, **kwargs)` in a process of its own, at most `slots` such calls at a time in this
    process (callers are the threads of Prefect's task runner); its result or its exception comes back.
    `call` and its arguments must pickle (a module-level function, plain values)."""
    with _slots_lock:
        gate = _slots.setdefault(slots, threading.BoundedSemaphore(slots))
    threads = max(1, (usable_cores() - 1) // slots)  # one core left to the flow, as limit_cpu_threads does
    with gate, tempfile.TemporaryDirectory(prefix="mindsmirror-run-") as folder:
        job, outcome = Path(folder) / "job.pickle", Path(folder) / "outcome.pickle"
        job.write_bytes(pickle.dumps((call, args, kwargs, threads, os.getpid())))
        finished = subprocess.run([sys.executable, "-m", __name__, str(job), str(outcome)], check=False)
        if not outcome.exists():
            raise RuntimeError(f"the run's process ended with exit status {finished.returncode} and no result")
        succeeded, value = pickle.loads(outcome.read_bytes())
    if succeeded:
        return value
    raise value


def _run(job: Path, outcome: Path) -> None:
    """In the run's process: die with the parent, use its share of threads, run, hand back the outcome."""
    call, args, kwargs, threads, parent = pickle.loads(job.read_bytes())
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        pass
    if os.getppid() != parent:  # the parent died before the line above
        sys.exit(1)
    import torch

    torch.set_num_threads(threads)
    try:
        result = (True, call(*args, **kwargs))
    except Exception as error:  # handed back to the caller, which raises it
        result = (False, error)
    try:
        data = pickle.dumps(result)
    except Exception:  # an exception that does not pickle: its text still comes back
        data = pickle.dumps((False, RuntimeError(f"{type(result[1]).__name__}: {result[1]}")))
    outcome.write_bytes(data)


if __name__ == "__main__":
    _run(Path(sys.argv[1]), Path(sys.argv[2]))
