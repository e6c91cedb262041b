"""Benchmark: teacher generation against the SIMULATED teacher (a local simulation, not a language model).

The simulated teacher answers after 200 ms and refuses requests past its RPM limit with 429s. Prints:
  * achieved requests/s as a fraction of the RPM limit (goal >= 0.95), measured at the server;
  * 429s as a fraction of all requests (goal < 1%);
  * wall time of the `generate` Prefect flow over the same work done by the same plain functions
    without Prefect, in this process (goal <= 1.10); once under the RPM limit and once with no limit,
    where Prefect's fixed costs weigh most.

Run: python bench/generation.py [--examples 150] [--rpm 1200]   (about 2 minutes on 2 cores)
Without PREFECT_API_URL, Prefect starts a temporary server; one warm-up flow runs before timing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time

from prefect import flow

from flows.generate import generate
from simulator.server import start_simulator
from storage import Store
from tasks.config import parse_config
from tasks.generation import open_session, plan_generation, sync_examples
from tasks.teacher.endpoint import open_endpoint


def _config(url: str, store: str, examples: int, rpm: int) -> dict:
    return {
        "dataset": {"name": "arithmetic", "arithmetic": {"train": examples, "test": 10}},
        "teacher": {"model": "gpt-3.5-turbo", "base_url": url, "n_cots": 2, "n_evals": 2, "max_rpm": rpm,
                    "max_tpm": 100_000_000, "max_concurrency": 32, "timeout_s": 30},
        "generate": {"batch_size": 25},
        "store": {"path": store},
    }


async def _without_prefect(config) -> None:
    """The generate flow's work, step for step, as plain function calls."""
    store = Store(config.store.path)
    examples, answer_type = sync_examples(store, config)
    plan = plan_generation(store, config, answer_type, examples)
    with open_endpoint(config.teacher) as endpoint:
        async with open_session(store, config, answer_type, endpoint, plan.progress_total, False) as session:
            await session.dispatch(plan.batches(config.generate.batch_size), lambda batch: asyncio.gather(
                *(session.run_example(work) for work in batch)))
    store.compact()


@flow
def _warm_up() -> None:
    return None


def _server_numbers(stats: dict, rpm: int) -> tuple[float, float, int]:
    accepted = sorted(stats["accepted_timestamps"])
    rate = (len(accepted) - 1) / (accepted[-1] - accepted[0]) if len(accepted) > 1 else 0.0
    return rate / (rpm / 60), stats["rate_limited"] / max(1, stats["requests"]), stats["requests"]


def _measure(server, examples: int, rpm: int, limit_at_server: int | None, folder: str) -> dict:
    results = {}
    for mode in ("plain", "prefect"):
        server.reset()
        config = parse_config(_config(server.url, f"{folder}/{mode}-{rpm}", examples, rpm))
        started = time.perf_counter()
        if mode == "plain":
            asyncio.run(_without_prefect(config))
        else:
            state = asyncio.run(generate(config, show_progress=False, return_state=True))
            assert state.is_completed(), state.message
        seconds = time.perf_counter() - started
        fraction, rejected, requests = _server_numbers(server.stats(), limit_at_server or rpm)
        results[mode] = {"seconds": seconds, "fraction": fraction, "rejected": rejected, "requests": requests}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=150)
    parser.add_argument("--rpm", type=int, default=1200)
    args = parser.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "simulated")  # the simulated teacher checks no key
    _warm_up()
    with tempfile.TemporaryDirectory() as folder:
        limited = start_simulator(None, "equation", latency_ms=200, rpm=args.rpm)
        try:
            under_limit = _measure(limited, args.examples, args.rpm, args.rpm, folder)
        finally:
            limited.close()
        free = start_simulator(None, "equation", latency_ms=200)
        try:
            unlimited = _measure(free, args.examples, 1_000_000, None, folder)
        finally:
            free.close()

    plain, prefect = under_limit["plain"], under_limit["prefect"]
    print(f"simulated teacher: 200 ms latency, RPM limit {args.rpm}; {plain['requests']} requests per run")
    print(f"achieved rate / RPM limit: {prefect['fraction']:.3f} with Prefect, {plain['fraction']:.3f} without "
          "(goal >= 0.95)")
    print(f"429s / requests: {prefect['rejected']:.2%} with Prefect, {plain['rejected']:.2%} without (goal < 1%)")
    print(f"Prefect flow / plain functions, under the RPM limit: {prefect['seconds']:.1f} s / "
          f"{plain['seconds']:.1f} s = {prefect['seconds'] / plain['seconds']:.3f} (goal <= 1.10)")
    plain, prefect = unlimited["plain"], unlimited["prefect"]
    print(f"Prefect flow / plain functions, no RPM limit: {prefect['seconds']:.1f} s / "
          f"{plain['seconds']:.1f} s = {prefect['seconds'] / plain['seconds']:.3f}")


if __name__ == "__main__":
    main()
