"""The `mindsmirror` command line: one subcommand per job, each a thin call into flows or tasks.

Prefect is imported only by the subcommands that run flows, so `status` and `sql` answer at once.
Expected failures (bad config or data, a fatal teacher error, a stopped run) print one line and
exit non-zero; there is no traceback unless --verbose is given.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading


class CommandError(Exception):
    """An expected failure whose message is the whole story."""


class Stopped(BaseException):
    """The command was stopped by SIGTERM; its flow run is recorded as Crashed."""


def _run_flow(call):
    """Run an async flow call; SIGTERM (`kill`, `docker stop`) or Ctrl-C cancels it, so Prefect
    records the run as Crashed and the command ends instead of running on.

    The flow runs on its own thread: Prefect's own SIGTERM handler, which it installs only on the
    main thread, would raise in whatever coroutine step is running (in an async flow, one of its
    tasks, which then fails while the run goes on). Here the main thread cancels the flow's task,
    once, and the flow engine marks the run Crashed."""
    import asyncio  # here: status, sql and dry runs never start an event loop

    running: dict = {}
    started = threading.Event()

    async def main():
        running["loop"], running["flow"] = asyncio.get_running_loop(), asyncio.current_task()
        started.set()
        return await call

    outcome: dict = {}

    def run() -> None:
        try:
            outcome["state"] = asyncio.run(main())
        except BaseException as error:  # handed to the main thread
            outcome["error"] = error

    def cancel(*_) -> None:
        if started.is_set():
            running["loop"].call_soon_threadsafe(running["flow"].cancel)

    thread = threading.Thread(target=run, name="mindsmirror-flow")
    previous = signal.signal(signal.SIGTERM, cancel)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.2)
    except BaseException:  # Ctrl-C: stop the flow the same way, then say so
        cancel()
        thread.join()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if isinstance(outcome.get("error"), asyncio.CancelledError):
        raise Stopped()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["state"]


def _quiet_prefect(verbose: bool) -> None:
    # Run logs still reach the Prefect server; the terminal shows this command's own output, and a
    # failed run's message once, from here (Prefect would print it a second time, as a log line).
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
        os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Heartbeats every 30 s (Prefect's default: 180): the automation `mindsmirror deploy` ships marks a
    # run Crashed once they stop, so a run killed with SIGKILL does not show Running forever.
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")


def _announce_local_server() -> None:
    """Say why a flow takes a while to start when no Prefect server is configured."""
    from prefect.settings import get_current_settings

    if get_current_settings().api.url is None:
        print("mindsmirror: no Prefect server configured (PREFECT_API_URL), so this run starts a temporary "
              "local one (about 20 s)", file=sys.stderr)


def _config(path: str):
    from tasks.config import load_config

    return load_config(path)


def _store(config):
    from storage import Store

    return Store(config.store.path)


def _finish(state) -> object:
    """The result of a flow run state, or a CommandError with the state's message."""
    message = state.message or state.name
    if not state.is_completed():
        raise CommandError(message)
    return state


def cmd_generate(args) -> None:
    config = _config(args.config)
    if args.dry_run:  # writes nothing, so it needs no flow run (nor Prefect's import)
        from tasks.generation.plan import dry_run_plan

        print(dry_run_plan(config)[0])
        return
    from flows.generate import generate

    _announce_local_server()
    state = _run_flow(generate(config, show_progress=not args.no_progress, return_state=True))
    print(_finish(state).message)


def cmd_resume(args) -> None:
    from flows.resume import resume

    config = _config(args.config)
    _announce_local_server()
    state = _run_flow(resume(config, show_progress=not args.no_progress, return_state=True))
    print(_finish(state).message)


def cmd_status(args) -> None:
    from tasks.ops.status import describe_status, run_status

    config = _config(args.config)
    report = run_status(config)
    print(json.dumps(report, indent=2, default=str) if args.json else describe_status(report))


def cmd_batch_cancel(args) -> None:
    from simulator import simulated_teacher
    from tasks.data.datasets import answer_type, load_dataset
    from tasks.generation.batch import cancel_batches
    from tasks.teacher.endpoint import open_endpoint

    config = _config(args.config)
    store = _store(config)
    simulated = simulated_teacher(config.teacher, load_dataset(config.dataset), answer_type(config.dataset),
                                  store.machine_state("simulator"))
    with open_endpoint(config.teacher, simulated) as endpoint:
        cancelled = cancel_batches(store, endpoint)
    print(f"asked to cancel {len(cancelled)} batches; `mindsmirror generate` stores what they returned and "
          "submits the rest" if cancelled else "no open batch to cancel")


def cmd_sql(args) -> None:
    from storage import queries
    from tasks.data.datasets import answer_type
    from tasks.ops.calibration import sql_truth
    from tasks.ops.tables import render_rows

    config = _config(args.config)
    store = _store(config)
    truth = sql_truth(store, answer_type(config.dataset), args.query)  # for the calibration views
    columns, rows = queries.run_sql(store, args.query, truth)
    print(render_rows(columns, rows, args.format))


def cmd_compact(args) -> None:
    config = _config(args.config)
    _store(config).compact()
    print(f"compacted {config.store.path}")


def cmd_repair(args) -> None:
    from tasks.ops.repair import repair_store

    config = _config(args.config)
    print(repair_store(_store(config)).describe())


def cmd_teacher_serve(args) -> None:
    from simulator.server import serve_forever

    examples, kind = None, "equation"  # None: the built-in arithmetic problems
    if args.config:
        from tasks.data.datasets import answer_type, load_dataset

        config = _config(args.config)
        examples = {row.input: row.label for row in load_dataset(config.dataset)}
        kind = answer_type(config.dataset)
    serve_forever(
        examples, kind, host=args.host, port=args.port, seed=args.seed, wrong_rate=args.wrong_rate,
        latency_ms=args.latency_ms, rpm=args.rpm, tpm=args.tpm, error_500=args.error_500, drop=args.drop,
        stall=args.stall, malformed=args.malformed,
    )


def cmd_import(args) -> None:
    from tasks.data.importers import import_dss, import_tot

    config = _config(args.config)
    store = _store(config)
    if args.format == "dss":
        summary = import_dss(store, config.dataset)
    else:
        summary = import_tot(store, config.dataset, args.files)
    print(summary.describe() if hasattr(summary, "describe") else summary)


def cmd_train(args) -> None:
    from flows.train import train

    config = _config(args.config)
    _announce_local_server()
    state = train(config, arms=args.arm or None, resume=args.resume, force=args.force, return_state=True)
    print(_finish(state).message)


def cmd_evaluate(args) -> None:
    from flows.evaluate import evaluate

    config = _config(args.config)
    _announce_local_server()
    state = evaluate(config, arms=args.arm or None, force=args.force, return_state=True)
    print(_finish(state).message)


def cmd_export(args) -> None:
    from tasks.student.export import export_arm

    out = export_arm(_config(args.config), args.arm, args.out)
    print(f"{args.arm}: its selected checkpoint, adapters merged, written to {out} (loads with transformers alone)")


def cmd_report(args) -> None:
    from tasks.ops.report import write_report

    config = _config(args.config)
    print(write_report(config).markdown)


def cmd_predict(args) -> None:
    from tasks.student import answer_question

    answer = answer_question(args.model_dir, args.question, decode=args.decode, samples=args.samples,
                             temperature=args.temperature, seed=args.seed, answer_type=args.answer_type)
    for i, candidate in enumerate(answer.candidates):
        verdict = "" if candidate.verdict is None else f"  verdict {candidate.verdict} (p correct {candidate.score:.3f})"
        mark = "*" if i == answer.chosen else " "
        print(f"{mark} candidate {i + 1}: answer {candidate.answer}{verdict}\n    rationale: {candidate.rationale}")
    print(f"answer: {answer.label}\nrationale: {answer.rationale}")


def cmd_run(args) -> None:
    from flows.distill import distill

    config = _config(args.config)
    _announce_local_server()
    state = _run_flow(distill(config, show_progress=not args.no_progress, force=args.force, return_state=True))
    print(_finish(state).message)


def cmd_worker(args) -> None:
    # A process started with `&` from a script inherits SIGINT ignored, and a Prefect worker stops on
    # SIGTERM by sending itself SIGINT: it then ran on for 30 s. Restored here, one SIGTERM stops it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", args.pool, *args.options]
    os.execv(sys.executable, command)


def cmd_deploy(args) -> None:
    from tasks.ops.deployment import deploy

    deploy(args)


_FORCE = "redo arms whose inputs are unchanged since they were last trained or evaluated (skipped otherwise)"


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least 1")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mindsmirror",
        description="Distil an LLM teacher's chains of thought and self-evaluations into a small student.",
    )
    parser.add_argument("--verbose", action="store_true", help="show Prefect's logs and full tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, handler, help_text, config=True):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if config:
            sub.add_argument("config", help="the run's YAML config")
        sub.set_defaults(handler=handler)
        return sub

    sub = command("run", cmd_run, "the whole job: generate, train every arm, evaluate, report")
    sub.add_argument("--no-progress", action="store_true")
    sub.add_argument("--force", action="store_true", help=_FORCE)
    sub = command("generate", cmd_generate, "ask the teacher for every CoT and self-evaluation the store lacks")
    sub.add_argument("--dry-run", action="store_true", help="print planned calls, tokens and cost; call nothing")
    sub.add_argument("--no-progress", action="store_true")
    sub = command("resume", cmd_resume, "retry just the teacher requests recorded as failed")
    sub.add_argument("--no-progress", action="store_true")
    sub = command("status", cmd_status, "counts, done/missing per stage, tokens, cost, failures")
    sub.add_argument("--json", action="store_true")
    batch = commands.add_parser("batch", help="Batch API batches (teacher.mode: batch)")
    batch_commands = batch.add_subparsers(dest="batch_command", required=True, metavar="COMMAND")
    cancel = batch_commands.add_parser("cancel", help="cancel the config's open batches")
    cancel.add_argument("config", help="the run's YAML config")
    cancel.set_defaults(handler=cmd_batch_cancel)
    sub = command("sql", cmd_sql, "run one read-only SQL query over the store's views")
    sub.add_argument("query")
    sub.add_argument("--format", choices=["markdown", "csv", "json"], default="markdown",
                     help="markdown table (default), CSV with a header row, or JSON (one object per row)")
    command("compact", cmd_compact, "merge each table's small Parquet files into parts of at most 10,000 rows")
    command("repair", cmd_repair,
            "move unreadable Parquet parts to <store>/_quarantine/ and list the requests a rerun buys again")

    sub = command("import", cmd_import, "import teacher outputs that already exist", config=False)
    sub.add_argument("format", choices=["dss", "tot"], help="dss: Distilling-Step-by-Step layout; tot: Mind's Mirror ToT JSON")
    sub.add_argument("config")
    sub.add_argument("files", nargs="*", help="the ToT JSON files (tot only)")

    sub = command("train", cmd_train, "train the student arms listed in the config")
    sub.add_argument("--arm", action="append", help="train only this arm (repeatable)")
    sub.add_argument("--resume", action="store_true", help="continue killed runs from their last checkpoint")
    sub.add_argument("--force", action="store_true", help=_FORCE)
    sub = command("evaluate", cmd_evaluate, "score each trained arm on the test split")
    sub.add_argument("--arm", action="append")
    sub.add_argument("--force", action="store_true", help=_FORCE)
    sub = command("export", cmd_export, "write a trained arm's selected checkpoint as a standalone model folder")
    sub.add_argument("arm")
    sub.add_argument("out", help="a new folder")
    command("report", cmd_report, "print the results table; write it as CSV and a PNG chart beside the store")
    sub = command("predict", cmd_predict, "answer one question with a trained student", config=False)
    sub.add_argument("model_dir", metavar="STUDENT",
                     help="a trained arm's folder (<store>/students/<arm>, a folder or a URL such as "
                     "s3://bucket/runs/svamp/students/<arm>: its selected checkpoint answers) or a checkpoint folder")
    sub.add_argument("question")
    sub.add_argument("--decode", choices=["greedy", "self_consistency", "self_verify"], default="greedy",
                     help="greedy; or sample --samples candidates and vote (self_consistency) or let the "
                     "student judge them (self_verify), showing candidates and verdicts")
    sub.add_argument("--samples", type=_positive, default=5, help="candidates for the sampling modes")
    sub.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the candidates")
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--answer-type", default="text",
                     choices=["equation", "choice", "nli", "number", "text"],
                     help="how candidate answers are read and compared (the dataset's answer type)")

    teacher = commands.add_parser("teacher", help="the simulated teacher")
    teacher_commands = teacher.add_subparsers(dest="teacher_command", required=True, metavar="COMMAND")
    serve = teacher_commands.add_parser(
        "serve", help="run the SIMULATED OpenAI-compatible teacher (a simulation, not a language model)"
    )
    serve.set_defaults(handler=cmd_teacher_serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--config", help="answer for this config's dataset (default: the built-in problems)")
    serve.add_argument("--latency-ms", type=float, default=0.0)
    serve.add_argument("--rpm", type=int, default=None, help="requests per minute before 429s")
    serve.add_argument("--tpm", type=int, default=None, help="tokens per minute before 429s")
    serve.add_argument("--wrong-rate", type=float, default=0.25)
    serve.add_argument("--error-500", type=float, default=0.0, help="share of requests answered 500")
    serve.add_argument("--drop", type=float, default=0.0, help="share of connections dropped")
    serve.add_argument("--stall", type=float, default=0.0, help="share of requests that stall")
    serve.add_argument("--malformed", type=float, default=0.0, help="share of replies with a broken body")
    serve.add_argument("--seed", type=int, default=0)

    sub = command("worker", cmd_worker, "`prefect worker start --pool POOL [OPTIONS]` that stops at once on SIGTERM, "
                  "also when started with & from a script", config=False)
    sub.add_argument("pool", help="the work pool to poll (cpu or gpu)")
    sub.add_argument("options", nargs=argparse.REMAINDER, help="more `prefect worker start` options, e.g. --limit 1")
    sub = command("deploy", cmd_deploy, "create work pools, the shared rate limit and the deployments", config=False)
    sub.add_argument("--prefect-file", default="deploy/prefect.yaml")
    sub.add_argument("--rpm", type=int, default=None, help="shared teacher requests per minute for all workers")
    sub.add_argument("--limit-name", default="teacher-rpm",
                     help="the global rate limit that configs name in teacher.shared_rate_limit")
    sub.add_argument("--burst", type=int, default=None,
                     help="requests the limit lets out at once (default: one second's worth of --rpm)")
    sub.add_argument("--gpus", type=_positive, default=1,
                     help="runs the gpu pool may run at once (one per GPU across its workers)")
    sub.add_argument("--crash-after", type=_positive, default=600,
                     help="seconds without a heartbeat after which a run is marked Crashed (a killed process); "
                     "runs started by mindsmirror or the pools send one every 30 s, others every 180 s")
    sub.add_argument("--api-key-env", default="OPENAI_API_KEY",
                     help="when this variable is set, store it as the Secret block openai-api-key, which every "
                     "cpu run then gets as this variable")
    return parser


# Expected failures, by module: an error can only be raised once its module is imported, so the
# check imports nothing (`status` and `sql` never pay for torch or Prefect).
_EXPECTED = (
    ("tasks.config", "ConfigError"),
    ("tasks.data.datasets", "DatasetError"),
    ("tasks.teacher.errors", "TeacherError"),
    ("storage.queries", "QueryError"),
    ("storage.store", "CorruptFileError"),
    ("tasks.student.arms", "NothingToTrain"),
    ("tasks.student.folders", "MissingCheckpoint"),
)


def _expected(error: BaseException) -> bool:
    kinds = [getattr(sys.modules[module], name) for module, name in _EXPECTED if module in sys.modules]
    return isinstance(error, (CommandError, *kinds))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_prefect(args.verbose)
    try:
        args.handler(args)
    except KeyboardInterrupt:
        print("mindsmirror: interrupted; rerun the same command to continue where it stopped", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mindsmirror report CONFIG | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except Exception as error:
        if args.verbose or not _expected(error):
            raise
        print(f"mindsmirror: {error}", file=sys.stderr)
        return 1
    except BaseException as error:
        # SIGTERM: Stopped from an async flow, Prefect's TerminationSignal from a sync one.
        if not isinstance(error, Stopped) and type(error).__name__ != "TerminationSignal":
            raise
        print("mindsmirror: stopped by SIGTERM (its Prefect run is marked Crashed); rerun the same command to "
              "continue where it stopped", file=sys.stderr)
        return 128 + signal.SIGTERM
    return 0


if __name__ == "__main__":
    sys.exit(main())
