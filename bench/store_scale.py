"""Benchmark: the store at scale. What a scheduled rerun pays when (almost) nothing is missing.

Builds a synthetic store with the project's own key and row functions and the store's own writers,
in large batches (by default 20,010 examples, 200,000 CoTs, 1,000,000 self-evaluations, 220,000
calls, compacted; about 160 MB with the kept keys), then times each operation below as its own process (wall seconds
and peak RSS):

  generate     mindsmirror generate with nothing missing (a scheduled rerun; it settles the plan)
  status       mindsmirror status --json
  dry-run      mindsmirror generate --dry-run (plans 0 requests)
  sql          mindsmirror sql "SELECT verdict, count(*) ... GROUP BY verdict"
  train-set    one arm's training sets and the snapshot ids that name them (a first `train`)
  train again  the same when the store's parts are as they were (a `train` rerun: the ids remembered)
  scored       the rows every arm is scored on and their snapshot ids (an `evaluate`); then the same again
  spend        one arm's teacher spend, the report's US$ column; then the same again
  generate+10  mindsmirror generate after adding 10 examples (simulated teacher)
  floor        a Prefect flow of six no-op tasks (the task runs of generate +10): what generate pays before its own work

Run: python bench/store_scale.py [--scale 0.05] [--code DIR ...]
--scale shrinks every count (0.05: 1,010 examples, ~5 MB). --code runs the operations with the
code of each folder (a checkout of another commit) on its own copy of one store, round after round,
so old and new code are measured back to back. A Prefect server is started for the generate runs.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from storage import CallRow, CotRow, EvaluationRow, Store  # noqa: E402
from tasks.config import parse_config  # noqa: E402
from tasks.generation.plan import plan_generation, request_for, sync_examples  # noqa: E402
from tasks.teacher.prompts import prompt_version  # noqa: E402

N_COTS, N_EVALS, TEST = 10, 5, 10
SQL = "SELECT verdict, count(*) AS n FROM evaluations GROUP BY verdict ORDER BY verdict"
BATCH = 100_000  # rows per append while building

TRAIN_SET = """
import sys
from storage import Store
from tasks.config import load_config
from tasks.data.datasets import answer_type
from tasks.data.trainsets import arm_self_eval_set, arm_training_set, label_set, provenances, self_eval_set
try:
    from tasks.data.trainsets import data_snapshot
except ImportError:  # older code keeps it beside the training loop
    from tasks.student.training import data_snapshot
try:
    from tasks.data.trainsets import rows_state
except ImportError:  # older code reads the rows on every run
    rows_state = None
try:
    from tasks.data.trainsets import data_snapshots, read_arm_rows
except ImportError:  # older code reads each set on its own connection, one snapshot after another
    read_arm_rows = None
config = load_config(sys.argv[1])
arm = config.train.arms[0]
store = Store(config.store.path)
state = rows_state(config, store, arm) if rows_state else None
snapshots = state.recall(store) if state else None  # as tasks.student.train_one decides
names = ("train_rows", "validation_rows", "self_eval_rows", "judged_rows")
remembered = bool(snapshots)
if not snapshots and read_arm_rows:  # as tasks.student.arms.arm_rows and freshness.row_snapshots do
    rows = read_arm_rows(config, store, arm)
    snapshots = data_snapshots(dict(zip(names, (rows.training.rows, rows.validation, rows.self_eval_rows, rows.judged))))
elif not snapshots:
    sources = provenances(config, store)
    training = arm_training_set(store, arm, sources, answer_type(config.dataset))
    validation = label_set(store, "validation").rows
    self_eval = arm_self_eval_set(store, arm, sources)
    judged = self_eval_set(store, "validation", arm.n_cots, sources).rows
    snapshots = dict(zip(names, [data_snapshot(rows) for rows in (training.rows, validation, self_eval.rows, judged)]))
if state and not remembered:
    state.remember(store, snapshots)
print([snapshots[name] for name in names])
"""

SCORED = """
import sys
from storage import Store
from tasks.config import load_config
from tasks.data.trainsets import data_snapshot, label_set, provenances, self_eval_set
try:
    from tasks.data.trainsets import rows_state
except ImportError:  # older code reads the rows on every run
    rows_state = None
try:
    from tasks.data.trainsets import data_snapshots, read_scored_rows
except ImportError:  # older code reads each set on its own connection, one snapshot after another
    read_scored_rows = None
config = load_config(sys.argv[1])
store = Store(config.store.path)
state = rows_state(config, store, None) if rows_state else None
snapshots = state.recall(store) if state else None  # as tasks.student.evaluate_one decides
if not snapshots and read_scored_rows:
    snapshots = data_snapshots(read_scored_rows(config, store))
    if state:
        state.remember(store, snapshots)
elif not snapshots:
    rows = {"test": label_set(store, "test").rows, "validation": label_set(store, "validation").rows,
            "judged": self_eval_set(store, "validation", None, provenances(config, store)).rows}
    snapshots = {name: data_snapshot(scored) for name, scored in rows.items()}
    if state:
        state.remember(store, snapshots)
print(sorted(snapshots.items()))
"""

SPEND = """
import sys
from tasks.config import load_config
from tasks.ops.spend import arm_spends
print(arm_spends(load_config(sys.argv[1])))
"""


def config_dict(store: str, train: int) -> dict:
    return {
        "dataset": {"name": "arithmetic", "arithmetic": {"train": train, "test": TEST, "seed": 0}},
        "teacher": {"model": "simulated-teacher", "simulate": True, "n_cots": N_COTS, "n_evals": N_EVALS,
                    "max_rpm": 1_000_000, "max_tpm": 1_000_000_000},
        "generate": {"splits": ["train", "validation"], "batch_size": 100},
        "store": {"path": store},
        "train": {"arms": [{"name": "cot-selfeval", "mode": "cot", "n_cots": N_COTS, "self_eval": True}]},
    }


class Writer:
    """Rows of one type appended in large batches, the way a store grows over many runs."""

    def __init__(self, store: Store):
        self.store, self.pending = store, {}

    def add(self, row) -> None:
        rows = self.pending.setdefault(type(row), [])
        rows.append(row)
        if len(rows) >= BATCH:
            self.flush()

    def flush(self) -> None:
        for rows in self.pending.values():
            self.store.append(rows)
        self.pending = {}


def build(root: Path, train: int) -> None:
    """Every CoT and self-evaluation of `train` examples, as generation would have stored them."""
    config = parse_config(config_dict(str(root), train))
    store = Store(str(root))
    examples, kind = sync_examples(store, config)
    rng = random.Random(0)
    writer = Writer(store)
    cot_version, eval_version = prompt_version(kind, "cot"), prompt_version(kind, "evaluation")
    for example in examples:
        request, _ = request_for(config.teacher, kind, "cot", example, None, N_COTS)
        call = f"call-{example.example_id}"
        writer.add(_call(call, "cot", example.example_id, request.keys))
        for index, key in zip(request.indices, request.keys):
            right = rng.random() < 0.75
            answer = example.label if right else f"{example.label} + 1.0"
            rationale = f"We compute {answer}. The answer is {answer}."
            cot = CotRow(key, example.example_id, index, rationale, answer, rationale, None, "stop",
                         "simulated-teacher", cot_version, 0.7, 1.0, 256, "teacher", call)
            writer.add(cot)
            judging, _ = request_for(config.teacher, kind, "evaluation", example, cot, N_EVALS)
            eval_call = f"call-{key}"
            writer.add(_call(eval_call, "evaluation", example.example_id, judging.keys))
            for eval_index, eval_key in zip(judging.indices, judging.keys):
                verdict = rng.choice(("correct", "correct", "wrong", "uncertain"))
                text = f"Checked. Evaluation result: the given answer is {verdict}"
                writer.add(EvaluationRow(eval_key, example.example_id, index, key, eval_index, text, verdict,
                                         "Checked.", None, "stop", "simulated-teacher", eval_version, 0.7,
                                         1.0, 64, "teacher", eval_call))
    writer.flush()
    store.compact()
    plan_generation(store, config, kind, examples)  # keeps the evaluation keys, as a generate run does


def _call(call_id: str, kind: str, example_id: str, keys) -> CallRow:
    return CallRow(call_id, kind, example_id, tuple(keys), "ok", 1, 120, 90, 0.0002, 0.3, None,
                   "simulated-teacher", queue_s=0.01, server_s=0.29)


def prefect_server(home: Path) -> tuple[subprocess.Popen, dict]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "false"}
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--port", str(port)],
                              env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"{env['PREFECT_API_URL']}/health", timeout=2):
                return server, env
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the Prefect server did not start")


def timed(command: list[str], env: dict, cwd: Path) -> tuple[float, float, float, str]:
    """Wall seconds, CPU seconds, peak RSS in MB and the last output line of one process. It runs
    outside any checkout: `python -m` and `-c` put the working directory first on sys.path."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{output[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, (output.strip().splitlines() or [""])[-1][:100]


# What any `generate` pays before its own work: Prefect's import, a flow run and its task runs on the
# server (generate +10 runs six: replay-journal, compact-store, load-examples, plan, ask-teacher,
# compact-store), and the flush of their events at exit.
PREFECT_FLOOR = """
import asyncio
from prefect import flow, task

@task
async def nothing():
    pass

@flow
async def six_tasks():
    for _ in range(6):
        await nothing()

asyncio.run(six_tasks())
"""


def operations(folder: Path, train: int) -> list[tuple[str, list[str]]]:
    cli = [sys.executable, "-m", "flows.cli"]
    now = folder / "config.yaml"
    grown = folder / "grown.yaml"
    now.write_text(yaml.safe_dump(config_dict(str(folder / "store"), train)))
    grown.write_text(yaml.safe_dump(config_dict(str(folder / "store"), train + 10)))
    return [
        ("generate, nothing missing", [*cli, "generate", str(now), "--no-progress"]),
        ("status --json", [*cli, "status", str(now), "--json"]),
        ("generate --dry-run", [*cli, "generate", str(now), "--dry-run", "--no-progress"]),
        ("sql GROUP BY verdict", [*cli, "sql", str(now), SQL]),
        ("one arm's training sets + snapshot ids", [sys.executable, "-c", TRAIN_SET, str(now)]),
        ("the same, parts unchanged (a train rerun)", [sys.executable, "-c", TRAIN_SET, str(now)]),
        ("the rows every arm is scored on + snapshot ids", [sys.executable, "-c", SCORED, str(now)]),
        ("the same, parts unchanged (an evaluate rerun)", [sys.executable, "-c", SCORED, str(now)]),
        ("one arm's teacher spend (report)", [sys.executable, "-c", SPEND, str(now)]),
        ("the same, parts unchanged (a report rerun)", [sys.executable, "-c", SPEND, str(now)]),
        ("generate after adding 10 examples", [*cli, "generate", str(grown), "--no-progress"]),
        ("a Prefect flow of six no-op tasks (generate's floor)", [sys.executable, "-c", PREFECT_FLOOR]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--code", action="append", help="a checkout whose code runs the operations (repeatable)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--build", help=argparse.SUPPRESS)  # build the store in this folder and stop
    args = parser.parse_args()
    train = round(20_000 * args.scale)
    if args.build:
        return build(Path(args.build), train)
    codes = [Path(c).resolve() for c in (args.code or [str(REPO)])]
    work = Path(tempfile.mkdtemp(prefix="store-scale-"))
    server = None
    try:
        start = time.perf_counter()
        # Built in a child process: a child forked from a large parent reports the parent's RSS as its peak.
        subprocess.run([sys.executable, __file__, "--build", str(work / "built"), "--scale", str(args.scale)],
                       check=True)
        size = sum(p.stat().st_size for p in (work / "built").rglob("*.parquet")) / 1e6
        print(f"built {train + TEST:,} examples, {train * N_COTS:,} CoTs, {train * N_COTS * N_EVALS:,} "
              f"evaluations, {train * (1 + N_COTS):,} calls: {size:.0f} MB in {time.perf_counter() - start:.0f} s")
        server, prefect_env = prefect_server(work / "prefect")
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(args.rounds):
            runs = []  # each code on its own copy of the store; operation by operation, codes alternating
            for number, code in enumerate(codes):
                folder = work / f"run-{number}"
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                shutil.copytree(work / "built", folder / "store")
                env = {**os.environ, **prefect_env, "PYTHONPATH": str(code)}
                runs.append((code, operations(folder, train), env, folder))
            for step in range(len(runs[0][1])):
                for code, steps, env, folder in runs:
                    name, command = steps[step]
                    wall, cpu, rss, last = timed(command, env, folder)
                    results.setdefault((name, str(code)), []).append((wall, cpu, rss))
                    print(f"{code.name}: {name}: {wall:.2f} s, {cpu:.2f} s CPU, {rss:.0f} MB  [{last}]", flush=True)
        print(f"\nscale {args.scale}: best of {args.rounds} round(s): wall s, CPU s, peak RSS MB")
        names = list(dict.fromkeys(name for name, _ in results))
        print("| operation | " + " | ".join(c.name for c in codes) + (" | ratio |" if len(codes) == 2 else " |"))
        print("|---" * (len(codes) + 1 + (len(codes) == 2)) + "|")
        for name in names:
            best = [min(results[(name, str(c))]) for c in codes]
            cells = [f"{w:.2f} s, {c:.2f} s CPU, {r:.0f} MB" for w, c, r in best]
            ratio = [f"{best[0][0] / best[1][0]:.1f}x"] if len(codes) == 2 else []
            print("| " + " | ".join([name, *cells, *ratio]) + " |")
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
