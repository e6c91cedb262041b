"""Benchmark: the ceiling of one `generate` process against a fast teacher, beside a bare client.

A minimal OpenAI-compatible server (fixed latency, `n` choices, `usage`; none of the simulator's
behaviour) runs pinned to one core; the client runs pinned to the other. Rounds alternate between

  * `mindsmirror generate` on a fresh store (the CLI, as users run it), and
  * a bare loop: `AsyncOpenAI` + a semaphore, each reply appended to one JSONL file,

both sending the same requests (the quickstart's shape: per problem one chain-of-thought request
with n=3 and three self-evaluation requests with n=2) with the same number in flight and no rate
limit. Printed per client: requests/s (at the server, first to last request), CPU ms per request
(the client process's user+system CPU; for `generate` minus the CPU of a rerun that plans nothing,
i.e. Prefect's and the CLI's fixed costs), and files created per 1,000 answers (counted with strace
in one separate, untimed round), with the ratio generate / bare.

Run: python bench/generation_ceiling.py [--problems 1000] [--rounds 3] [--in-flight 128] [--latency-ms 300]
[--baseline CHECKOUT] (about 3 minutes on 2 idle cores; needs taskset and, for the files column,
strace). --baseline adds a third client to every round: `generate` of another checkout of this
repository (an older commit, e.g. from `git worktree add`), for a before/after ratio. --store-url
s3://bucket/prefix has generate write to an object store instead of a local folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# ---- the fast server ----------------------------------------------------------------------------

_COT = "Add the two numbers: 3 + 4 = 7. The answer is (3 + 4)."
_EVAL = "The steps add the right numbers. Evaluation result: the given answer is correct"


def _reply(body: dict, served: int) -> bytes:
    judged = "Evaluation result" in json.dumps(body["messages"])
    text = _EVAL if judged else _COT
    n = int(body.get("n") or 1)
    return json.dumps({
        "id": f"chatcmpl-{served}", "object": "chat.completion", "created": int(time.time()),
        "model": body.get("model", "fast"),
        "choices": [{"index": i, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                    for i in range(n)],
        "usage": {"prompt_tokens": 120, "completion_tokens": 20 * n, "total_tokens": 120 + 20 * n},
    }).encode()


async def _serve(port: int, latency_s: float, log_path: Path) -> None:
    """HTTP/1.1 with keep-alive; writes one line per request (its arrival time) when stopped."""
    arrivals: list[float] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
                body = json.loads(await reader.readexactly(length)) if length else {}
                arrivals.append(time.time())
                await asyncio.sleep(latency_s)
                payload = _reply(body, len(arrivals))
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(payload), payload))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()
    log_path.write_text("\n".join(f"{t:.6f}" for t in arrivals))


# ---- the two clients ----------------------------------------------------------------------------

_BARE = r'''
import asyncio, json, sys
from openai import AsyncOpenAI
url, out, requests, in_flight = sys.argv[1], sys.argv[2], [json.loads(l) for l in open(sys.argv[3])], int(sys.argv[4])
async def main():
    client = AsyncOpenAI(base_url=url, api_key="bench", max_retries=0)
    slots = asyncio.Semaphore(in_flight)
    with open(out, "a") as sink:
        async def one(request):
            async with slots:
                reply = await client.chat.completions.create(**request)
            sink.write(json.dumps({"texts": [c.message.content for c in reply.choices],
                                   "usage": reply.usage.model_dump()}) + "\n")
        await asyncio.gather(*(one(r) for r in requests))
asyncio.run(main())
'''


def _config(url: str, store: Path, problems: int, in_flight: int) -> str:
    return json.dumps({
        "dataset": {"name": "arithmetic", "arithmetic": {"train": problems, "test": 10, "max_number": 30},
                    "validation_fraction": 0.0},
        "teacher": {"model": "gpt-3.5-turbo", "base_url": url, "n_cots": 3, "n_evals": 2, "max_rpm": 10_000_000,
                    "max_tpm": 1_000_000_000, "max_concurrency": in_flight, "timeout_s": 60},
        "generate": {"batch_size": 250},
        "store": {"path": str(store)},
    })  # JSON is YAML


def _bare_requests(problems: int) -> list[dict]:
    """The same requests `generate` sends for `problems` problems: its prompts (few-shot chat
    messages), per problem one chain-of-thought request with n=3 and three judging ones with n=2."""
    sys.path.insert(0, str(REPO))
    from tasks.config import DatasetConfig
    from tasks.data import load_dataset
    from tasks.teacher.prompts import cot_messages, eval_messages

    rows = load_dataset(DatasetConfig(name="arithmetic", arithmetic={"train": problems, "test": 10, "max_number": 30}))
    questions = [row.input for row in rows if row.split == "train"][:problems]
    sampling = {"model": "gpt-3.5-turbo", "temperature": 0.7, "top_p": 1.0, "max_tokens": 256}
    requests = []
    for question in questions:
        requests.append({**sampling, "n": 3, "messages": cot_messages("equation", question)})
        requests += [{**sampling, "n": 2, "messages": eval_messages("equation", question, _COT)}] * 3
    return requests


def _run(command: list[str], env: dict) -> tuple[float, float]:
    """Runs a client pinned to core 1; returns (wall s, user+system CPU s of it and its children)."""
    start = time.monotonic()
    with tempfile.TemporaryFile() as errors:  # a pipe would fill with progress output and block the client
        process = subprocess.Popen(["taskset", "-c", "1", *command], env=env, stdout=subprocess.DEVNULL,
                                   stderr=errors)
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            errors.seek(0)
            raise SystemExit(f"{command[:3]} failed: {errors.read().decode()[-2000:]}")
    return time.monotonic() - start, usage.ru_utime + usage.ru_stime


class Server:
    def __init__(self, latency_s: float, folder: Path):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.log = folder / f"arrivals-{self.port}.txt"
        self.process = subprocess.Popen(
            ["taskset", "-c", "0", sys.executable, __file__, "--serve", str(self.port), "--latency-ms",
             str(latency_s * 1000), "--log", str(self.log)])
        self.url = f"http://127.0.0.1:{self.port}/v1"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("the fast server did not start")

    def stop(self) -> list[float]:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        return [float(line) for line in self.log.read_text().split()]


def _rate(arrivals: list[float], latency_s: float) -> float:
    """Requests per second at the server, first arrival to last reply."""
    return len(arrivals) / (max(arrivals) - min(arrivals) + latency_s)


def _generate_round(args, folder: Path, env: dict, tag: str) -> dict:
    """One `generate` run on a fresh store (the code on env's PYTHONPATH)."""
    server = Server(args.latency_ms / 1000, folder)
    store = f"{args.store_url.rstrip('/')}/store-{tag}-{os.getpid()}" if args.store_url else folder / f"store-{tag}"
    config = folder / f"config-{tag}.yaml"
    config.write_text(_config(server.url, store, args.problems, args.in_flight))
    command = [sys.executable, "-m", "flows.cli", "generate", str(config)]
    wall, cpu = _run(command, env)
    arrivals = server.stop()
    _, fixed_cpu = _run(command, env)  # the same command with nothing missing: the fixed costs
    if not args.store_url:
        shutil.rmtree(store)
    return {"requests": len(arrivals), "rate": _rate(arrivals, args.latency_ms / 1000),
            "cpu_ms": 1000 * (cpu - fixed_cpu) / len(arrivals), "wall": wall, "fixed_cpu": fixed_cpu}


def _bare_round(args, folder: Path, env: dict, tag: str) -> dict:
    server = Server(args.latency_ms / 1000, folder)
    requests = folder / "requests.jsonl"
    requests.write_text("\n".join(json.dumps(r) for r in _bare_requests(args.problems)))
    out = folder / f"bare-{tag}.jsonl"
    wall, cpu = _run([sys.executable, "-c", _BARE, server.url, str(out), str(requests), str(args.in_flight)], env)
    arrivals = server.stop()
    _, import_cpu = _run([sys.executable, "-c", "import openai"], env)  # its fixed cost
    out.unlink()
    return {"requests": len(arrivals), "rate": _rate(arrivals, args.latency_ms / 1000),
            "cpu_ms": 1000 * (cpu - import_cpu) / len(arrivals), "wall": wall}


def _files_created(args, folder: Path, env: dict) -> tuple[float, float]:
    """Files created per 1,000 answers (samples) by each client, counted with strace (untimed)."""
    if not shutil.which("strace") or args.store_url:  # files in an object store are not openat() calls
        return float("nan"), float("nan")
    problems = max(50, args.problems // 10)
    answers = problems * (3 + 3 * 2)
    counts = []
    for client in ("generate", "bare"):
        server = Server(args.latency_ms / 1000, folder)
        trace = folder / f"strace-{client}.txt"
        if client == "generate":
            config = folder / "config-files.yaml"
            store = folder / "store-files"
            config.write_text(_config(server.url, store, problems, args.in_flight))
            command = [sys.executable, "-m", "flows.cli", "generate", str(config)]
            where = str(store)
        else:
            requests = folder / "requests-files.jsonl"
            requests.write_text("\n".join(json.dumps(r) for r in _bare_requests(problems)))
            where = str(folder / "bare-files.jsonl")
            command = [sys.executable, "-c", _BARE, server.url, where, str(requests), str(args.in_flight)]
        # Traced, the temporary Prefect server starts slower than Prefect waits for by default.
        slow_start = {**env, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}
        traced = subprocess.run(["strace", "-f", "-qq", "-e", "trace=openat,creat", "-o", str(trace), *command],
                                env=slow_start, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        server.stop()
        if traced.returncode != 0:
            sys.exit(f"{client} under strace exited {traced.returncode}:\n{traced.stderr[-2000:]}")
        created = {m.group(1) for line in trace.read_text().splitlines()
                   if "O_CREAT" in line and (m := re.search(r'"([^"]+)"', line)) and m.group(1).startswith(where)}
        counts.append(1000 * len(created) / answers)
    return counts[0], counts[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=1000, help="4 requests each (default 4,000 requests)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=128)
    parser.add_argument("--latency-ms", type=float, default=300)
    parser.add_argument("--baseline", type=Path, help="another checkout whose generate runs in each round too")
    parser.add_argument("--store-url", help="generate into stores under this URL (e.g. s3://bucket/bench; "
                        "credentials and AWS_ENDPOINT_URL from the environment) instead of local folders")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve, args.latency_ms / 1000, args.log))
        return
    with tempfile.TemporaryDirectory(prefix="mindsmirror-ceiling-") as tmp:
        folder = Path(tmp)
        env = {**os.environ, "OPENAI_API_KEY": "bench", "PYTHONPATH": str(REPO)}
        env.pop("PREFECT_API_URL", None)  # each run starts Prefect's temporary server, as a bare CLI does
        results: dict[str, list[dict]] = {"generate": [], "bare": []}
        if args.baseline:
            results["baseline"] = []
        for round_ in range(args.rounds):
            results["generate"].append(_generate_round(args, folder, env, str(round_)))
            if args.baseline:
                old = {**env, "PYTHONPATH": str(args.baseline.resolve())}
                results["baseline"].append(_generate_round(args, folder, old, f"baseline-{round_}"))
            results["bare"].append(_bare_round(args, folder, env, str(round_)))
            print(f"round {round_ + 1}: " + "; ".join(
                f"{name} {rows[-1]['rate']:.0f} req/s, {rows[-1]['cpu_ms']:.2f} CPU ms/req"
                for name, rows in results.items()), flush=True)
        files = _files_created(args, folder, env)
    gen, bare = results["generate"], results["bare"]

    def span(rows: list[dict], key: str, fmt: str) -> str:
        values = [row[key] for row in rows]
        return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"

    print(f"\n{gen[0]['requests']:,} requests per round, {args.in_flight} in flight, {args.latency_ms:.0f} ms "
          f"latency, {args.rounds} rounds; median (min-max)\n")
    print("| client | requests/s | CPU ms per request | files created per 1,000 answers |")
    print("|---|---|---|---|")
    print(f"| `mindsmirror generate` | {span(gen, 'rate', '.0f')} | {span(gen, 'cpu_ms', '.2f')} | {files[0]:.1f} |")
    print(f"| bare `AsyncOpenAI` + semaphore, one JSONL | {span(bare, 'rate', '.0f')} | "
          f"{span(bare, 'cpu_ms', '.2f')} | {files[1]:.1f} |")
    rate = statistics.median(r["rate"] for r in gen) / statistics.median(r["rate"] for r in bare)
    cpu = statistics.median(r["cpu_ms"] for r in gen) / statistics.median(r["cpu_ms"] for r in bare)
    print(f"| ratio generate / bare | {rate:.2f} | {cpu:.2f} | |")
    if args.baseline:
        old = results["baseline"]
        print(f"| `generate` of {args.baseline.name} (baseline) | {span(old, 'rate', '.0f')} | "
              f"{span(old, 'cpu_ms', '.2f')} | |")
        rate = statistics.median(r["rate"] for r in gen) / statistics.median(r["rate"] for r in old)
        cpu = statistics.median(r["cpu_ms"] for r in gen) / statistics.median(r["cpu_ms"] for r in old)
        print(f"| ratio generate / baseline | {rate:.2f} | {cpu:.2f} | |")
    print(f"\ngenerate's fixed CPU (a rerun that plans nothing, subtracted above): "
          f"{statistics.median(r['fixed_cpu'] for r in gen):.1f} s")


if __name__ == "__main__":
    main()
