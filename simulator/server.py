"""A SIMULATED teacher served over HTTP: a local OpenAI-compatible server that is not a language model.

It exists for tests, benchmarks and the offline quickstart; what it answers is SimulatedTeacher's
business (simulator.teacher). Everything it returns says it is a simulation: the model is
"simulated", and so is the system fingerprint.

Built on the standard library (ThreadingHTTPServer), one thread per connection, so latency is a
sleep and 64+ concurrent connections are fine. Paths are served from ROUTES; another endpoint
plugs in with `@route("POST", "/v1/some/path")` on a function (teacher, body, headers) -> Outcome;
a path ending in /* serves that path and every path below it, and its handler also gets the request
target (path and query) as the keyword `target` (the Files and Batches endpoints: simulator.batches).
Paths starting with /_ control the simulation and do not count as requests in flight.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from simulator.outcomes import Deviations, Faults, Outcome, error
from simulator.teacher import LABEL, SimulatedTeacher
from tasks.teacher.keys import SIMULATED_MODEL

__all__ = ["ROUTES", "Deviations", "Faults", "RunningSimulator", "SimulatedTeacher", "route", "serve_forever",
           "start_simulator"]

log = logging.getLogger(__name__)

Handler = Callable[[SimulatedTeacher, bytes, Mapping[str, str]], Outcome]
ROUTES: dict[tuple[str, str], Handler] = {}


def route(method: str, *paths: str) -> Callable[[Handler], Handler]:
    """Serve `paths` (with or without their /v1 prefix, any trailing slash) with the decorated handler."""

    def register(handler: Handler) -> Handler:
        for path in paths:
            ROUTES[method, path.rstrip("/")] = handler
            if path.startswith("/v1/"):
                ROUTES[method, path.removeprefix("/v1").rstrip("/")] = handler
        return handler

    return register


def _subtree(method: str, path: str, target: str) -> Handler | None:
    """The handler of the nearest /* route at or above `path`, told the request target."""
    while path:
        handler = ROUTES.get((method, f"{path}/*"))
        if handler is not None:
            return functools.partial(handler, target=target)
        path = path.rpartition("/")[0]
    return None


@route("POST", "/v1/chat/completions")
def _chat(teacher: SimulatedTeacher, body: bytes, headers: Mapping[str, str]) -> Outcome:
    return teacher.chat(body, headers.get("Authorization"))


@route("GET", "/v1/models")
def _models(teacher: SimulatedTeacher, body: bytes, headers: Mapping[str, str]) -> Outcome:
    models = teacher.models or (SIMULATED_MODEL,)
    return Outcome(200, {"object": "list", "data": [
        {"id": model, "object": "model", "created": 0, "owned_by": LABEL} for model in models
    ]})


@route("GET", "/_stats")
def _stats(teacher: SimulatedTeacher, body: bytes, headers: Mapping[str, str]) -> Outcome:
    return Outcome(200, teacher.stats())


@route("POST", "/_reset")
def _reset(teacher: SimulatedTeacher, body: bytes, headers: Mapping[str, str]) -> Outcome:
    teacher.reset()
    return Outcome(200, {"reset": True})


@route("POST", "/_faults")
def _faults(teacher: SimulatedTeacher, body: bytes, headers: Mapping[str, str]) -> Outcome:
    try:
        faults = teacher.set_faults(**json.loads(body or b"{}"))
    except (TypeError, ValueError) as problem:
        return error(400, f"bad fault settings: {problem}", "invalid_request_error")
    return Outcome(200, dataclasses.asdict(faults))


@route("POST", "/_deviations")
def _deviations(teacher: SimulatedTeacher, body: bytes, headers: Mapping[str, str]) -> Outcome:
    try:
        deviations = teacher.set_deviations(**json.loads(body or b"{}"))
    except (TypeError, ValueError) as problem:
        return error(400, f"bad deviation settings: {problem}", "invalid_request_error")
    return Outcome(200, dataclasses.asdict(deviations))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SimulatedTeacher/1 (simulation; not a language model)"
    timeout = 120  # idle keep-alive connections are closed after this long

    @property
    def teacher(self) -> SimulatedTeacher:
        return self.server.teacher

    def log_message(self, format: str, *args) -> None:
        log.debug("simulated teacher: " + format, *args)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        path = self.path.split("?")[0].rstrip("/")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
        handler = ROUTES.get((method, path)) or _subtree(method, path, self.path)
        if handler is None:
            self._send(error(404, f"no such path on the simulated teacher: {path}", "invalid_request_error"))
            return
        api = not path.startswith("/_")  # the control paths (/_stats, /_faults...) are not API traffic
        if api:
            self.teacher.enter()  # in flight until the response is sent, latency included
        try:
            self._send(handler(self.teacher, body, self.headers))
        finally:
            if api:
                self.teacher.leave()

    def _send(self, outcome: Outcome) -> None:
        if outcome.delay_s:
            self.teacher.closing.wait(outcome.delay_s)
        self.teacher.count(outcome.label or str(outcome.status))
        if outcome.drop:
            self.close_connection = True
            return
        body = outcome.raw if outcome.raw is not None else json.dumps(outcome.payload).encode()
        try:
            self.send_response(outcome.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in outcome.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # the listen backlog; the default of 5 refuses bursts of new connections

    def __init__(self, address, teacher: SimulatedTeacher):
        super().__init__(address, _Handler)
        self.teacher = teacher


@dataclass
class RunningSimulator:
    """A simulated teacher serving in a background thread of this process."""

    url: str  # ends in /v1: pass it as the client's base_url
    port: int
    teacher: SimulatedTeacher
    _server: _Server
    _thread: threading.Thread

    def stats(self) -> dict:
        return self.teacher.stats()

    def set_faults(self, **changes) -> Faults:
        return self.teacher.set_faults(**changes)

    def set_deviations(self, **changes) -> Deviations:
        return self.teacher.set_deviations(**changes)

    def reset(self) -> None:
        self.teacher.reset()

    def close(self) -> None:
        self.teacher.closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_simulator(
    examples: Mapping[str, str] | None = None,
    answer_type: str = "equation",
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    **options,
) -> RunningSimulator:
    """Start a simulated teacher in a background thread (port 0: any free port).

    `examples` maps question text to gold label (None: the built-in arithmetic problems); `options`
    are SimulatedTeacher's keyword arguments (seed, wrong_rate, latency_ms, rpm, tpm, deviations,
    fault rates...).
    """
    teacher = SimulatedTeacher(examples, answer_type, **options)
    server = _Server((host, port), teacher)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              name="simulated-teacher", daemon=True)
    thread.start()
    bound = server.server_address[1]
    log.info("%s listening on http://%s:%d/v1", LABEL, host, bound)
    return RunningSimulator(f"http://{host}:{bound}/v1", bound, teacher, server, thread)


def serve_forever(
    examples: Mapping[str, str] | None = None,
    answer_type: str = "equation",
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    **options,
) -> None:
    """Run a simulated teacher in the foreground until interrupted (`mindsmirror teacher serve`)."""
    running = start_simulator(examples, answer_type, host=host, port=port, **options)
    print(f"SIMULATED teacher (not a language model) serving {len(running.teacher.examples)} questions at "
          f"{running.url} -- Ctrl-C to stop", flush=True)
    try:
        running._thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        running.close()
