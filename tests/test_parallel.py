"""Arm runs side by side on a machine without a GPU: one process per core, one at a time on an accelerator."""

from __future__ import annotations

import os
import threading

import pytest

from tasks.student.parallel import in_own_process, parallel_runs


def test_on_the_cpu_runs_go_side_by_side_one_per_core():
    assert parallel_runs("cpu", runs=2, cores=2) == 2
    assert parallel_runs("cpu", runs=6, cores=2) == 2  # never more processes than cores
    assert parallel_runs("cpu", runs=3, cores=16) == 3


def test_one_run_one_core_or_an_accelerator_keeps_them_one_after_another():
    assert parallel_runs("cpu", runs=1, cores=16) == 1
    assert parallel_runs("cpu", runs=4, cores=1) == 1
    assert parallel_runs("cuda", runs=4, cores=16) == 1  # the runs would share the device
    assert parallel_runs("mps", runs=4, cores=16) == 1


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
