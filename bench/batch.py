"""Benchmark: requests and dollars per 1,000 examples, online against the Batch API (teacher.mode: batch).

Both runs buy the same samples (n_cots chains of thought per example, n_evals self-evaluations per
chain) from the SIMULATED teacher (a local simulation, not a language model) with the same plain
functions the `generate` flow runs. Prints, per 1,000 examples: HTTP requests sent to the endpoint,
teacher requests paid for (chat completions online, batch lines in batch mode) and dollars at
gpt-3.5-turbo prices (batch: teacher.prices' batch_discount of 50%), plus the passes batch mode took.

Run: python bench/batch.py [--examples 1000] [--n-cots 3] [--n-evals 2]   (about 4 minutes on 2 busy cores)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time

from simulator.batches import configure_batches
from simulator.server import start_simulator
from storage import Store, queries
from tasks.config import parse_config
from tasks.data.datasets import load_dataset
from tasks.generation import open_session, plan_generation, sync_examples
from tasks.generation.batch import run_batch_pass
from tasks.teacher.endpoint import open_endpoint


def _config(url: str, store: str, args, mode: str):
    return parse_config({
        # train + 10% for the validation carve, so that `examples` train examples are asked about
        "dataset": {"name": "arithmetic", "arithmetic": {"train": round(args.examples / 0.9), "test": 10,
                                                         "max_number": 30}},
        "teacher": {"model": "gpt-3.5-turbo", "base_url": url, "n_cots": args.n_cots, "n_evals": args.n_evals,
                    "max_rpm": 1_000_000, "max_tpm": 1_000_000_000, "max_concurrency": 32, "mode": mode},
        "generate": {"batch_size": 50},
        "store": {"path": store},
    })


async def _online(config) -> None:
    store = Store(config.store.path)
    examples, kind = sync_examples(store, config)
    plan = plan_generation(store, config, kind, examples)
    with open_endpoint(config.teacher) as endpoint:
        async with open_session(store, config, kind, endpoint, plan.progress_total, show_progress=False) as session:
            await asyncio.gather(*(session.run_example(work) for work in plan.work))


def _batch(config) -> int:
    store = Store(config.store.path)
    passes = 0
    while True:
        examples, kind = sync_examples(store, config)
        with open_endpoint(config.teacher) as endpoint:
            summary = run_batch_pass(store, config, kind, examples, endpoint)
        passes += 1
        if not summary.open and not summary.submitted:
            return passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--n-cots", type=int, default=3)
    parser.add_argument("--n-evals", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "simulated")  # the simulated teacher takes any key
    rows = load_dataset(_config("", "", args, "online").dataset)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for mode in ("online", "batch"):
            with start_simulator(examples={row.input: row.label for row in rows}, answer_type="equation") as sim:
                config = _config(sim.url, f"{folder}/{mode}", args, mode)
                started = time.perf_counter()
                passes = _batch(config) if mode == "batch" else asyncio.run(_online(config)) or 1
                wall = time.perf_counter() - started
                store = Store(config.store.path)
                report = queries.status(store)
                asked = report.examples_by_split.get("train", 0)
                service = configure_batches(sim.teacher).counts
                # Batch lines go through the simulator's chat logic too: only its API calls are HTTP requests.
                http = service["api_requests"] if mode == "batch" else sim.stats()["requests"]
                results[mode] = dict(asked=asked, http=http, paid=report.calls_ok, usd=report.cost_usd,
                                     cots=report.rows["cots"], evaluations=report.rows["evaluations"],
                                     passes=passes, wall=wall)
    print(f"{'mode':7} {'examples':>8} {'HTTP requests/1k':>17} {'paid requests/1k':>17} {'$/1k':>8} "
          f"{'cots':>6} {'evals':>6} {'passes':>6} {'wall s':>7}")
    for mode, r in results.items():
        per_k = 1000 / r["asked"]
        print(f"{mode:7} {r['asked']:>8} {r['http'] * per_k:>17.1f} {r['paid'] * per_k:>17.1f} "
              f"{r['usd'] * per_k:>8.4f} {r['cots']:>6} {r['evaluations']:>6} {r['passes']:>6} {r['wall']:>7.1f}")
    print(f"batch / online dollars: {results['batch']['usd'] / results['online']['usd']:.3f}")


if __name__ == "__main__":
    main()
