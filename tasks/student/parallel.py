"""Several arm runs at once on a machine without an accelerator, one process each.

The student's training loop and scoring run on one torch thread on the CPU
(tasks.student.devices.limit_cpu_threads), so on a machine with N >= 2 cores and no GPU up to N
arm runs go side by side, each in a process of its own: threads would share one interpreter lock,
and a small student's step is mostly Python. On a GPU (or MPS) the runs stay one after another,
as they would share the device.

The processes are forked from a forkserver that imported the student code once, so a run starts
in well under a second instead of importing torch and transformers again (about 8 CPU seconds).
Each gets an equal share of the cores' torch threads, and on Linux dies with its parent: a run
killed with SIGKILL leaves no training behind to write into the checkpoints a rerun resumes from.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tasks.student.devices import resolve_device

T = TypeVar("T")

# What each process runs: importing them in the forkserver once is what makes a start cheap.
PRELOAD = ["tasks.student.arm_training", "tasks.student.arm_scoring"]

_slots: dict[int, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


def usable_cores() -> int:
    """The cores this process may run on (a container's cpuset, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def parallel_runs(device: str, runs: int, cores: int | None = None) -> int:
    """How many of `runs` arm runs go at once on `device` (a train.device value): one per core on
    the CPU, one at a time on an accelerator or for a single run."""
    cores = cores if cores is not None else usable_cores()
    if runs < 2 or cores < 2 or resolve_device(device).type != "cpu":
        return 1
    return min(runs, cores)


def in_own_process(slots: int, call: Callable[..., T], *args, **kwargs) -> T:
    """`call(*args, **kwargs)` in a process of its own, at most `slots` such calls at a time in this
    process (callers are the threads of Prefect's task runner); its result or its exception comes back.
    `call` and its arguments must pickle (a module-level function, plain values)."""
    with _slots_lock:
        gate = _slots.setdefault(slots, threading.BoundedSemaphore(slots))
    threads = max(1, (usable_cores() - 1) // slots)  # one core left to the flow, as limit_cpu_threads does
    with gate:
        context = _context()
        with ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=_start,
                                 initargs=(threads,)) as pool:
            return pool.submit(call, *args, **kwargs).result()


def _start(threads: int) -> None:
    """In the new process: die with the parent (Linux), and use `threads` torch threads."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the process ends once its parent's pipe closes
        pass
    if os.getppid() == 1:  # the parent died before the line above
        os._exit(1)
    import torch

    torch.set_num_threads(threads)


def _context():
    """The forkserver, where the platform has one (Linux, macOS); else spawn (each process imports anew)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context
