"""Arm runs side by side on a machine without a GPU: one process per core, one at a time on an accelerator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tasks.student.parallel import MIN_STEPS, in_own_process, parallel_runs, usable_cores


def test_on_the_cpu_runs_go_side_by_side_one_per_core():
    assert parallel_runs("cpu", runs=2, steps=760, cores=2) == 2
    assert parallel_runs("cpu", runs=6, steps=760, cores=2) == 2  # never more processes than cores
    assert parallel_runs("cpu", runs=3, steps=760, cores=16) == 3


def test_one_run_one_core_or_an_accelerator_keeps_them_one_after_another():
    assert parallel_runs("cpu", runs=1, steps=760, cores=16) == 1
    assert parallel_runs("cpu", runs=4, steps=760, cores=1) == 1
    assert parallel_runs("cuda", runs=4, steps=760, cores=16) == 1  # the runs would share the device
    assert parallel_runs("mps", runs=4, steps=760, cores=16) == 1


def test_short_runs_go_one_after_another_a_fresh_interpreter_would_cost_more_than_it_saves():
    assert parallel_runs("cpu", runs=2, steps=MIN_STEPS - 1, cores=2) == 1
    assert parallel_runs("cpu", runs=2, steps=MIN_STEPS, cores=2) == 2


def test_a_call_runs_in_its_own_process_and_its_result_or_error_comes_back():
    assert in_own_process(2, os.getpid) != os.getpid()
    with pytest.raises(ValueError, match="invalid literal"):
        in_own_process(2, int, "not a number")


def test_calls_from_several_threads_each_get_a_process_of_their_own():
    pids: list[int] = []
    threads = [threading.Thread(target=lambda: pids.append(in_own_process(2, os.getpid))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(pids)) == 3 and os.getpid() not in pids


def test_a_run_gets_its_share_of_the_cores_threads():
    threads = in_own_process(2, torch.get_num_threads)
    assert threads == max(1, (usable_cores() - 1) // 2)


_ORPHAN = """
import os, sys, time
from tasks.student.parallel import in_own_process
in_own_process(2, os.getpid)  # a first run has come and gone
sys.stdout.write("started\\n"); sys.stdout.flush()
in_own_process(2, time.sleep, 120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_run_killed_with_sigkill_leaves_no_process_behind():
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    assert parent.stdout.readline().strip() == "started"
    deadline = time.time() + 30
    while time.time() < deadline and not any("sleep" in _stack(pid) for pid in _descendants(parent.pid)):
        time.sleep(0.1)  # until the run's own process is in its call
    children = _descendants(parent.pid)
    assert any("sleep" in _stack(pid) for pid in children), "the run's process never started"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 60
    while time.time() < deadline and any(_running(pid) for pid in children):
        time.sleep(0.2)
    assert not [pid for pid in children if _running(pid)]


def _stack(pid: int) -> str:
    """What a process is waiting in (its kernel wait channel): `hrtimer_nanosleep` while it sleeps."""
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return ""


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            text = Path(f"/proc/{current}/task/{current}/children").read_text()
        except OSError:
            continue
        kids = [int(child) for child in text.split()]
        found += kids
        todo += kids
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_script_without_a_main_guard_is_not_run_again_by_its_runs(tmp_path):
    script = tmp_path / "script.py"
    script.write_text("import os\nfrom tasks.student.parallel import in_own_process\n"
                      "print('ran', in_own_process(2, os.getpid) != os.getpid())\n")
    finished = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                              cwd=Path(__file__).resolve().parents[1])
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stdout.splitlines() == ["ran True"]
